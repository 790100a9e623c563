"""Plain images (PNG, JPEG, a TIFF without georeferencing): answers in pixels, or ground units with --gsd."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from PIL import Image

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def joplin_png(tmp_path_factory, joplin_pair):
    """The real Joplin pre-event RGB tile as a PNG and a JPEG: what TerraScope-Bench images look like."""
    with rasterio.open(joplin_pair[0]) as src:
        rgb = src.read().transpose(1, 2, 0)
    folder = tmp_path_factory.mktemp("plain")
    Image.fromarray(rgb).save(folder / "joplin.png")
    Image.fromarray(rgb).save(folder / "joplin.jpg", quality=95)
    return folder / "joplin.png", folder / "joplin.jpg"


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the test's own read of the mask
def test_png_is_answered_in_pixels_and_percent(tmp_path, joplin_png):
    out = tmp_path / "o"
    result = run_cli("ask", joplin_png[0], "What percentage is vegetation?", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    # No NotGeoreferencedWarning or any other library line on stderr (--json prints none of tscope's own).
    assert result.stderr == ""
    answer = json.loads(result.stdout)
    numbers = answer["numbers"]
    assert numbers["area_px"]["unit"] == "px" and "area_m2" not in numbers
    assert numbers["valid_area_px"]["value"] == 1024 * 512
    assert answer["answer"].endswith(f"({numbers['area_px']['value']:,.0f} px of 524,288 px).")
    assert answer["scenes"][0]["crs"] is None
    with rasterio.open(out / "masks/01_vegetation.tif") as mask:
        assert mask.crs is None and mask.shape == (512, 1024)
        assert int(np.count_nonzero(mask.read(1) == 1)) == numbers["area_px"]["value"]
    assert not (out / "masks.geojson").exists()  # GeoJSON is lon/lat by definition
    assert any("no masks.geojson" in note for note in answer["notes"])


def test_gsd_turns_pixels_into_ground_units(tmp_path, joplin_png):
    pixels = json.loads(run_cli("ask", joplin_png[0], "What percentage is vegetation?", "--out", tmp_path / "a",
                                "--json").stdout)["numbers"]
    metres = json.loads(run_cli("ask", joplin_png[0], "What percentage is vegetation?", "--gsd", "0.6", "--out",
                                tmp_path / "b", "--json").stdout)["numbers"]
    assert metres["area_m2"]["value"] == pytest.approx(pixels["area_px"]["value"] * 0.36, rel=1e-9)
    assert metres["coverage_percent"] == pixels["coverage_percent"]


def test_jpeg_distances_and_positions_are_in_pixels(tmp_path, joplin_png):
    result = run_cli("ask", joplin_png[1], "Where is the vegetation?", "--out", tmp_path / "o", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["numbers"]["centroid"]["unit"] == "col,row"
    assert "centroid column" in answer["answer"]


@pytest.mark.parametrize(("extra", "message"), [
    (["What is the area of vegetation in hectares?"], "no ground scale"),
    (["What percentage is vegetation?", "--gsd", "-1"], "--gsd must be a positive"),
])
def test_plain_image_errors_are_one_line(tmp_path, joplin_png, extra, message):
    result = run_cli("ask", joplin_png[0], *extra, "--out", tmp_path / "o")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tscope: error:") and message in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


def test_gsd_is_refused_on_a_georeferenced_scene(tmp_path, slovenia):
    result = run_cli("ask", slovenia, "What percentage is forest?", "--gsd", "10", "--out", tmp_path / "o")
    assert result.returncode == 2 and "--gsd is for plain images" in result.stderr
