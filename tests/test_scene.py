"""Reading scenes: band identification, scaling to physical values, SAR formats, pairs on one grid."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from tscope.errors import InputError
from tscope.geo.scene import ReadOptions, open_scene, open_scenes


def test_band_descriptions_and_reflectance(slovenia):
    scene = open_scene(slovenia)
    assert scene.band_map.source == "band descriptions"
    assert {"blue", "green", "red", "nir", "swir16", "swir22"} <= set(scene.bands)
    bands, valid = scene.read(["red", "nir"], Window(0, 0, 100, 101))
    with rasterio.open(slovenia) as src:
        dn = src.read(4)
    np.testing.assert_allclose(bands["red"], dn / 10000, rtol=1e-6)
    assert valid.all()


def test_l2a_offset_subtracts_baseline(slovenia):
    plain = open_scene(slovenia).read(["red"], Window(0, 0, 5, 5))[0]["red"]
    shifted = open_scene(slovenia, ReadOptions(l2a_offset=True)).read(["red"], Window(0, 0, 5, 5))[0]["red"]
    np.testing.assert_allclose(plain - shifted, 0.1, atol=1e-6)


def test_sensor_preset_and_explicit_bands(slovenia, naip):
    by_preset = open_scene(slovenia, ReadOptions(sensor="s2-l1c"))
    assert by_preset.band_map.indexes["swir16"] == 12
    by_list = open_scene(naip, ReadOptions(bands="red,green,blue,nir"))
    assert by_list.band_map.indexes == {"red": 1, "green": 2, "blue": 3, "nir": 4}
    with pytest.raises(InputError, match="expects 12 bands"):
        open_scene(naip, ReadOptions(sensor="s2-l2a"))
    with pytest.raises(InputError, match="names 5 bands"):
        open_scene(naip, ReadOptions(bands="red,green,blue,nir,swir16"))


def test_uint8_scaled_to_unit_range(naip):
    scene = open_scene(naip)
    bands, _ = scene.read(["nir"], Window(0, 0, 50, 50))
    assert 0 <= bands["nir"].min() and bands["nir"].max() <= 1


def test_complex_sar_becomes_linear_power(sar):
    scene = open_scene(sar)
    assert scene.kind == "sar" and scene.sar_format == "complex"
    bands, valid = scene.read(["vv"], Window(0, 0, 200, 200))
    with rasterio.open(sar) as src:
        z = src.read(1)
    np.testing.assert_allclose(bands["vv"], np.abs(z) ** 2, rtol=1e-5)
    assert bands["vv"].dtype == np.float32


def test_sar_in_db_is_detected(tmp_path, sar):
    with rasterio.open(sar) as src:
        z = src.read(1)
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="float32",
                       crs=src.crs, transform=src.transform)
    # Calibrated backscatter (sigma0) is below 1: scale the uncalibrated power like a calibration would.
    power = np.abs(z) ** 2 / (np.abs(z) ** 2).max() + 1e-10
    db = (10 * np.log10(power)).astype(np.float32)
    path = tmp_path / "vv_db.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(db, 1)
        dst.set_band_description(1, "VV")
    scene = open_scene(path)
    assert scene.sar_format == "db"
    linear = scene.read(["vv"], Window(0, 0, 10, 10))[0]["vv"]
    np.testing.assert_allclose(linear, power[:10, :10], rtol=1e-3)


def test_joplin_pair_lands_on_one_grid(joplin_pair):
    pre, post = open_scenes(joplin_pair)
    assert pre.grid == post.grid
    assert pre.grid.crs.to_epsg() == 26915
    assert post.native.crs.to_epsg() == 4326
    # The overlap is about half of each tile.
    assert 0.3 < pre.grid.height / pre.native.height <= 1.0
    bands, valid = post.read(["red", "green", "blue"], Window(0, 0, pre.grid.width, pre.grid.height))
    assert bands["red"].shape == pre.grid.shape
    assert valid.mean() > 0.9


def test_pairs_that_do_not_overlap_are_refused(slovenia, naip):
    with pytest.raises(InputError, match="do not overlap"):
        open_scenes([slovenia, naip])


def test_optical_and_sar_files_are_not_taken_as_a_pair(slovenia, sar):
    with pytest.raises(InputError, match="tscope stack"):
        open_scenes([slovenia, sar])


def _write_grid(path, data, transform, descriptions):
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype, crs="EPSG:32633", transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    return path


def test_second_scene_with_another_y_pixel_size_is_resampled(tmp_path):
    from affine import Affine

    t1 = _write_grid(tmp_path / "t1.tif", np.full((1, 100, 10), 1000, np.uint16),
                     Affine(10, 0, 500000, 0, -10, 5001000), ("red",))
    rows = (np.arange(50, dtype=np.uint16)[:, None] + 1) * 10 * np.ones((1, 50, 10), np.uint16)
    t2 = _write_grid(tmp_path / "t2.tif", rows, Affine(10, 0, 500000, 0, -20, 5001000), ("red",))
    _, after = open_scenes([t1, t2], ReadOptions(bands="red"))
    values, valid = after.read(["red"], Window(0, 0, 10, 100))
    # Row r of the 10 m grid lies in row r // 2 of the 20 m file: DN 10 * (r // 2 + 1), up to the
    # bilinear blend with the next row (a copy without resampling would give 10 * (r + 1)).
    expected = (np.arange(100) // 2 + 1) * 10 / 10000
    np.testing.assert_allclose(values["red"][:, 5], expected, atol=6e-4)
    assert valid.all()


def test_scl_is_never_interpolated_when_warped(tmp_path):
    from affine import Affine

    scl = np.tile(np.array([4, 2], np.uint16), (40, 20))[None]  # alternating vegetation / dark columns
    base = np.full((1, 40, 40), 500, np.uint16)
    t1 = _write_grid(tmp_path / "t1.tif", np.concatenate([base, scl]), Affine(10, 0, 500000, 0, -10, 5000400),
                     ("red", "scl"))
    # Half a pixel off: bilinear resampling would invent class 3 (cloud shadow) between 4 and 2.
    t2 = _write_grid(tmp_path / "t2.tif", np.concatenate([base, scl]), Affine(10, 0, 500005, 0, -10, 5000400),
                     ("red", "scl"))
    _, after = open_scenes([t1, t2])
    values, _ = after.read(["scl"], Window(0, 0, after.grid.width, after.grid.height))
    assert set(np.unique(values["scl"])) <= {0.0, 2.0, 4.0}


@pytest.mark.parametrize(("tiled", "block", "expected"), [
    # 512-px tiles under 1012-px windows: every window cut three tiles a side, so a pass decompressed each
    # cut tile twice (2x the bare read of a 10980² file). Tiled files are cut on whole tiles...
    (True, 32, {"rows": 96, "cols": 96}),
    # ...striped files in bands of whole strips (a narrower window decompresses the whole strip anyway).
    (False, 8, {"rows": 40, "cols": 250}),
])
def test_windows_follow_the_files_internal_blocks(tmp_path, tiled, block, expected):
    path = tmp_path / "scene.tif"
    profile = dict(driver="GTiff", width=250, height=230, count=1, dtype="uint16", crs="EPSG:32633",
                   transform=rasterio.Affine(10, 0, 399960, 0, -10, 5100000), tiled=tiled, blockysize=block,
                   **({"blockxsize": block} if tiled else {}))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((1, 230, 250), np.uint16))
    scene = open_scene(path, ReadOptions(bands="red"))
    windows = list(scene.windows(100))
    assert all(w.row_off % block == 0 and w.col_off % (block if tiled else 250) == 0 for w in windows)
    assert max(w.height for w in windows) == expected["rows"] and max(w.width for w in windows) == expected["cols"]
    covered = np.zeros((230, 250), int)
    for w in windows:
        covered[w.toslices()] += 1
    assert (covered == 1).all()


def test_passes_over_a_scene_open_its_file_once_per_thread(monkeypatch, slovenia):
    # Scene.read opened the file for every window; a pass (the preview, the value checks) keeps one handle.
    from tscope.geo.checks import sample
    from tscope.geo.preview import scene_preview

    scene = open_scene(slovenia)
    opened: list[str] = []
    real_open = rasterio.open
    monkeypatch.setattr(rasterio, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    preview = scene_preview(scene, block=16)
    assert preview.valid.all() and len(opened) == 1
    assert len(list(scene.windows(16))) > 1
    opened.clear()
    sample(scene, ["red", "nir"])
    assert len(opened) == 1
    opened.clear()
    scene.read(["red"], Window(0, 0, 8, 8))  # outside a pass: opened and closed again
    scene.read(["red"], Window(8, 8, 8, 8))
    assert len(opened) == 2
