"""Values that cannot be what tscope reads them as are refused (or warned about), never answered silently."""

from __future__ import annotations

import json

import numpy as np
import rasterio

from tests.conftest import run_cli


def _one_error_line(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tscope: error:"), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in result.stderr


def test_uncalibrated_sar_is_refused_not_answered(tmp_path, sar):
    # The SpaceNet-6 sample is single-look complex, not calibrated: its VV median is ~58 "dB".
    # It used to be answered "There is no water"; it must be refused, and nothing written.
    result = run_cli("ask", sar, "Is there any water?", "--out", tmp_path / "o")
    _one_error_line(result, "VV backscatter has a median of", "not calibrated")
    assert not (tmp_path / "o").exists()


def test_uncalibrated_sar_given_as_db_is_refused(tmp_path, sar):
    with rasterio.open(sar) as src:
        db = (10 * np.log10(np.abs(src.read()) ** 2 + 1e-6)).astype(np.float32)
        profile = src.profile | {"dtype": "float32", "driver": "GTiff"}
    path = tmp_path / "dn_db.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(db)
        dst.descriptions = ("vv", "vh")
    result = run_cli("ask", path, "Is there any water?", "--sar-format", "db", "--out", tmp_path / "o")
    _one_error_line(result, "median of 5", "dB")


def test_digital_numbers_read_as_reflectance_are_refused(tmp_path, slovenia):
    # Float bands are taken as reflectance: a float file of DN (0..10000) is not.
    with rasterio.open(slovenia) as src:
        data, profile, descriptions = src.read().astype(np.float32), src.profile, src.descriptions
    path = tmp_path / "dn_float.tif"
    with rasterio.open(path, "w", **(profile | {"dtype": "float32", "driver": "GTiff"})) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    result = run_cli("ask", path, "What percentage is forest?", "--out", tmp_path / "o")
    _one_error_line(result, "reads as reflectance", "scaling is wrong")


def test_l2a_offset_on_a_file_without_it_is_refused(tmp_path, slovenia):
    result = run_cli("ask", slovenia, "What percentage is forest?", "--l2a-offset", "--out", tmp_path / "o")
    _one_error_line(result, "--l2a-offset", "negative reflectance", "drop --l2a-offset")


def test_a_likely_missing_l2a_offset_is_warned_and_reported(tmp_path, slovenia):
    # The real scene as a baseline-04.00 product would store it: DN + 1000.
    with rasterio.open(slovenia) as src:
        data, profile, descriptions = src.read(), src.profile, src.descriptions
    path = tmp_path / "offset.tif"
    with rasterio.open(path, "w", **(profile | {"driver": "GTiff"})) as dst:
        dst.write(data + np.uint16(1000))
        dst.descriptions = descriptions
    result = run_cli("ask", path, "What percentage is forest?", "--out", tmp_path / "o", "--json")
    assert result.returncode == 0, result.stderr
    assert "pass --l2a-offset" in result.stderr
    assert any("pass --l2a-offset" in note for note in json.loads(result.stdout)["notes"])
    fixed = run_cli("ask", path, "What percentage is forest?", "--l2a-offset", "--out", tmp_path / "p", "--json")
    assert fixed.returncode == 0 and "--l2a-offset" not in fixed.stderr
    assert not any("l2a-offset" in note for note in json.loads(fixed.stdout)["notes"])


def test_the_value_checks_read_inside_the_files_blocks(tmp_path):
    # The checks' nine 128-px windows sat at 0, 960 and 1920 px of a 2048² file of 512-px tiles: the middle
    # ones crossed a tile edge, and together they decompressed all sixteen tiles (most of a second read).
    from tscope.geo.checks import _windows
    from tscope.geo.scene import open_scene

    path = tmp_path / "tiled.tif"
    profile = dict(driver="GTiff", width=2048, height=2048, count=4, dtype="uint16", crs="EPSG:32633",
                   transform=rasterio.transform.from_origin(400000, 5100000, 10, 10), tiled=True,
                   blockxsize=512, blockysize=512)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((4, 2048, 2048), 800, np.uint16))
        dst.descriptions = ("blue", "green", "red", "nir")
    windows = _windows(open_scene(path))
    assert len(windows) == 9
    tiles = set()
    for w in windows:
        first = (int(w.row_off) // 512, int(w.col_off) // 512)
        last = ((int(w.row_off) + int(w.height) - 1) // 512, (int(w.col_off) + int(w.width) - 1) // 512)
        assert first == last, w
        tiles.add(first)
    assert len(tiles) == 9  # still spread: the corners, the edges' middles and the centre
