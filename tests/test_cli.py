"""`tscope ask` as users run it: outputs, --json, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import shape

from tests.conftest import run_cli


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("tscope ")


def test_ask_writes_every_output(tmp_path, slovenia):
    out = tmp_path / "out"
    result = run_cli("ask", slovenia, "What percentage of the image is covered by forest?", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "Forest covers" in result.stdout
    for name in ("answer.md", "answer.json", "masks.geojson", "quicklook.png", "masks/01_forest.tif"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.partial"))
    report = (out / "answer.md").read_text()
    assert "[SEG]" in report and "quicklook.png" in report and "masks/01_forest.tif" in report
    answer = json.loads((out / "answer.json").read_text())
    assert answer["query"]["task"] == "coverage"
    assert answer["steps"][0]["mask"] == "01_forest"
    assert answer["reasoning"].startswith("<think>") and "<answer>" in answer["reasoning"]


def test_mask_is_a_valid_cog(tmp_path, slovenia):
    out = tmp_path / "out"
    assert run_cli("ask", slovenia, "How much area is forest?", "--out", out).returncode == 0
    with rasterio.open(out / "masks/01_forest.tif") as src, rasterio.open(slovenia) as scene:
        assert src.driver == "GTiff"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.crs == scene.crs
        assert src.transform.almost_equals(scene.transform)
        assert src.nodata == 255
        assert src.block_shapes[0] == (512, 512) or src.profile.get("tiled")
        data = src.read(1)
    assert set(np.unique(data)) <= {0, 1, 255}


def test_geojson_is_valid_wgs84_with_areas(tmp_path, slovenia):
    out = tmp_path / "out"
    assert run_cli("ask", slovenia, "How much area is forest?", "--out", out, "--json").returncode == 0
    collection = json.loads((out / "masks.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and "crs" not in collection  # RFC 7946: lon/lat WGS84
    answer = json.loads((out / "answer.json").read_text())
    total = 0.0
    for feature in collection["features"]:
        geom = shape(feature["geometry"])
        assert geom.is_valid
        minx, miny, maxx, maxy = geom.bounds
        assert 14.5 < minx < maxx < 14.6 and 45.8 < miny < maxy < 45.9  # Slovenia
        assert feature["properties"]["class"] == "forest"
        total += feature["properties"]["area_m2"]
    # Polygons' geodesic areas add up to the measured class area.
    assert total == pytest.approx(answer["numbers"]["area_m2"]["value"], rel=2e-3)


def test_json_goes_to_stdout_and_logs_to_stderr(tmp_path, slovenia):
    result = run_cli("ask", slovenia, "Is there any water?", "--out", tmp_path / "o", "--json")
    assert result.returncode == 0
    payload = json.loads(result.stdout)
    assert payload["answer"].startswith("No")
    assert payload["numbers"]["present"]["value"] is False
    assert "{" not in result.stderr


def test_existing_answer_needs_overwrite(tmp_path, slovenia):
    out = tmp_path / "o"
    assert run_cli("ask", slovenia, "Does the forest border the grassland?", "--out", out).returncode == 0
    again = run_cli("ask", slovenia, "Is there any water?", "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert run_cli("ask", slovenia, "Is there any water?", "--out", out, "--overwrite").returncode == 0
    # The earlier answer's masks are gone: the folder holds one answer.
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["01_water.tif"]


def test_pair_writes_a_quicklook_per_frame(tmp_path, joplin_pair):
    out = tmp_path / "o"
    result = run_cli("ask", *joplin_pair, "How much did the vegetation change between the two images?",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "quicklook_t1.png").is_file() and (out / "quicklook_t2.png").is_file()
    assert (out / "masks/02_vegetation_t2.tif").is_file()


# --- bad input: one line on stderr, exit code 2, nothing written --------------------------------------


def _write(path, data, crs="EPSG:32633", nodata=None, descriptions=None):
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype, transform=Affine(10, 0, 500000, 0, -10, 5000000), nodata=nodata)
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
    return path


@pytest.fixture
def bad_inputs(tmp_path, slovenia, naip):
    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster")
    rgbn = ("red", "green", "blue", "nir")
    no_crs = _write(tmp_path / "nocrs.tif", np.ones((4, 8, 8), np.uint16), crs=None, descriptions=rgbn)
    empty = _write(tmp_path / "empty.tif", np.zeros((4, 8, 8), np.uint16), nodata=0, descriptions=rgbn)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    q = "What percentage is vegetation?"
    return {
        "not a raster": (["ask", text, q], "not a raster"),
        "missing file": (["ask", tmp_path / "nope.tif", q], "no such file"),
        "no CRS": (["ask", no_crs, q], "no CRS"),
        "all nodata": (["ask", empty, q], "every pixel is nodata"),
        "no overlap": (["ask", slovenia, naip, "How much did the water change?"], "do not overlap"),
        "band mapping names a missing band": (["ask", naip, q, "--bands", "red,green,blue,nir,swir16"], "has only 4"),
        "question needs a missing band": (["ask", naip, "What percentage is forest?", "--bands", "red,green,blue,_"],
                                          "needs nir"),
        "unknown question": (["ask", slovenia, "What is the meaning of life?"], "cannot tell what"),
        "unknown class": (["ask", slovenia, "What percentage is covered by dragons?"], "no known land-cover class"),
        "unwritable out": (["ask", slovenia, q, "--out", a_file / "sub"], "cannot write to --out"),
        "unknown sensor": (["ask", slovenia, q, "--sensor", "modis"], "unknown --sensor"),
        "unknown backend": (["ask", slovenia, q, "--backend", "gpt"], "is not one of 'spectral', 'terrascope'"),
        "unknown option": (["ask", slovenia, q, "--frobnicate"], "No such option"),
        "bad sar format": (["ask", slovenia, q, "--sar-format", "bogus"], "'bogus' is not one of 'auto'"),
        "bad assumed CRS": (["ask", slovenia, q, "--assume-crs", "EPSG:99999"], "is not a CRS"),
    }


CASES = ["not a raster", "missing file", "no CRS", "all nodata", "no overlap", "band mapping names a missing band",
         "question needs a missing band", "unknown question", "unknown class", "unwritable out", "unknown sensor",
         "unknown backend", "unknown option", "bad sar format", "bad assumed CRS"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, bad_inputs, tmp_path):
    args, message = bad_inputs[case]
    out = tmp_path / "out_should_not_exist"
    if "--out" not in args:
        args = [*args, "--out", out]
    result = run_cli(*args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tscope: error:") and message in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists()


def test_assume_crs_rescues_a_file_without_one(tmp_path):
    data = np.stack([np.full((8, 8), v, np.uint16) for v in (500, 800, 400, 4000)])
    path = _write(tmp_path / "nocrs.tif", data, crs=None, descriptions=("red", "green", "blue", "nir"))
    result = run_cli("ask", path, "What percentage is vegetation?", "--assume-crs", "EPSG:32633",
                     "--out", tmp_path / "o", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["numbers"]["coverage_percent"]["value"] == pytest.approx(100.0)


def test_example_batch_script_runs(tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    work = tmp_path / "repo"
    (work / "examples").mkdir(parents=True)
    for name in ("batch.sh", "slovenia_s2.tif"):
        shutil.copy(root / "examples" / name, work / "examples" / name)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    launcher = bindir / "tscope"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -m tscope \"$@\"\n")
    launcher.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(work / "examples/batch.sh")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.strip().splitlines()
    assert rows[0] == "scene,question,answer" and len(rows) == 5
    assert "Forest covers" in rows[1]
    assert (work / "results/slovenia_s2/q0/answer.json").is_file()


def test_cli_start_imports_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys, tscope.cli.main; "
            "print(','.join(m for m in ('torch', 'transformers', 'dask', 'peft', 'bitsandbytes', 'rasterio',"
            " 'geopandas', 'odc.stac') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_compare_when_neither_class_is_present(tmp_path, slovenia):
    result = run_cli("ask", slovenia, "Which is larger, snow or water?", "--out", tmp_path / "o", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["answer"] == "Neither snow nor water is present."
    assert payload["numbers"]["larger"]["value"] == "tie"


def test_which_is_smaller_is_answered_as_asked(tmp_path, slovenia):
    result = run_cli("ask", slovenia, "Which is smaller, forest or grassland?", "--out", tmp_path / "o", "--json")
    assert json.loads(result.stdout)["answer"].startswith("Grassland is smaller")


def test_ask_quiet_and_verbose_as_the_readme_says(tmp_path, slovenia):
    q = "What percentage of the image is covered by forest?"
    quiet = run_cli("ask", slovenia, q, "--out", tmp_path / "a", "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and "Forest covers" in quiet.stdout
    loud = run_cli("ask", slovenia, q, "--out", tmp_path / "b", "-v")
    assert loud.returncode == 0 and "outputs:" in loud.stderr
    assert "INFO" in loud.stderr or "info" in loud.stderr.lower()


def test_default_output_folder_ends_on_a_whole_word(tmp_path, slovenia):
    result = run_cli("ask", slovenia, "What percentage of the image is covered by forest?", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (folder,) = [p.name for p in tmp_path.iterdir()]
    assert folder == "slovenia_s2_what-percentage-of-the-image-is-covered-by"
