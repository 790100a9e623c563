"""`tscope stack`: the real Joplin pre/post pair (EPSG:26915 vs EPSG:4326) onto one grid, SAR resampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom

from tests.conftest import DATA, run_cli
from tscope.errors import InputError
from tscope.geo.scene import open_scenes
from tscope.geo.stack import StackOptions, stack_scenes


def footprints() -> list[dict]:
    return [f["geometry"] for f in json.loads((DATA / "joplin_footprints.geojson").read_text())["features"]]


def mean_in(path, geom) -> np.ndarray:
    """Mean of each band over the pixels whose centre is inside ``geom`` (lon/lat), on the file's own grid."""
    with rasterio.open(path) as src:
        inside = geometry_mask([transform_geom("EPSG:4326", src.crs, geom)], out_shape=src.shape,
                               transform=src.transform, invert=True)
        data = src.read().astype(np.float64)
        scale = 1.0 if src.dtypes[0].startswith("float") else 1 / 255
    assert inside.sum() >= 20
    return data[:, inside].mean(axis=1) * scale


@pytest.fixture(scope="module")
def joplin_stack(tmp_path_factory, joplin_pair):
    out = tmp_path_factory.mktemp("joplin")
    return stack_scenes(joplin_pair, out), joplin_pair


def test_pair_lands_on_one_grid(joplin_stack):
    result, _ = joplin_stack
    assert result.mode == "pair" and [f.name for f in result.files] == ["t1.tif", "t2.tif"]
    profiles = []
    for path in result.files:
        with rasterio.open(path) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert src.descriptions == ("red", "green", "blue") and np.isnan(src.nodata)
            profiles.append((src.crs, src.transform, src.shape))
    assert profiles[0] == profiles[1] and profiles[0][0].to_epsg() == 26915
    scenes = open_scenes(result.files)  # what `tscope ask t1.tif t2.tif` does: no warping left to do
    assert all(s.grid == s.native for s in scenes)
    record = json.loads(result.record.read_text())
    assert record["resampling"] == {"red": "bilinear", "green": "bilinear", "blue": "bilinear"}


def test_building_footprints_land_on_the_same_pixels(joplin_stack):
    """Each footprint's pixels in t1/t2 hold what the original pre/post files hold under that footprint."""
    result, (pre, post) = joplin_stack
    for geom in footprints():
        np.testing.assert_allclose(mean_in(result.files[0], geom), mean_in(pre, geom), atol=0.02)
        np.testing.assert_allclose(mean_in(result.files[1], geom), mean_in(post, geom), atol=0.03)


def test_pair_is_registered(joplin_stack):
    """The grey-level correlation of t1 and t2 peaks at zero shift: the two dates are co-registered."""
    result, _ = joplin_stack
    with rasterio.open(result.files[0]) as a, rasterio.open(result.files[1]) as b:
        ga, gb = a.read().mean(axis=0), b.read().mean(axis=0)
    ok = np.isfinite(ga) & np.isfinite(gb)
    rows, cols = np.nonzero(ok)
    ga, gb = ga[rows.min():rows.max() + 1, cols.min():cols.max() + 1], gb[rows.min():rows.max() + 1,
                                                                       cols.min():cols.max() + 1]
    m = 12
    core = ga[m:-m, m:-m]
    scores = {}
    for dy in range(-m, m + 1, 2):
        for dx in range(-m, m + 1, 2):
            other = gb[m + dy:gb.shape[0] - m + dy, m + dx:gb.shape[1] - m + dx]
            valid = np.isfinite(core) & np.isfinite(other)
            scores[(dy, dx)] = np.corrcoef(core[valid], other[valid])[0, 1]
    best = max(scores, key=scores.get)
    assert abs(best[0]) <= 2 and abs(best[1]) <= 2, (best, scores[best], scores[(0, 0)])


def test_sar_power_is_averaged_onto_a_coarser_grid(tmp_path, sar):
    """Complex SAR becomes |z|² first; 'average' onto 10 m keeps the mean power and removes speckle."""
    result = stack_scenes([sar, sar], tmp_path / "avg", StackOptions(resolution=10.0, mode="pair"))
    nearest = stack_scenes([sar, sar], tmp_path / "nn", StackOptions(resolution=10.0, mode="pair",
                                                                     sar_resampling="nearest"))
    with rasterio.open(sar) as src:
        power = np.abs(src.read(1).astype(np.complex128)) ** 2
        rows, cols = np.mgrid[0:src.height, 0:src.width]
        xs, ys = src.transform @ (cols + 0.5, rows + 0.5)
    minx, miny, maxx, maxy = result.grid.bounds
    inside = (xs > minx) & (xs < maxx) & (ys > miny) & (ys < maxy)
    with rasterio.open(result.files[0]) as out, rasterio.open(nearest.files[0]) as nn:
        assert out.descriptions == ("vv", "vh") and out.res == (10.0, 10.0) and out.dtypes[0] == "float32"
        vv, vv_nn = out.read(1), nn.read(1)
    ok = np.isfinite(vv)
    assert ok.mean() > 0.3
    assert vv[ok].mean() == pytest.approx(power[inside].mean(), rel=0.1)
    assert np.nanstd(vv) < 0.7 * np.nanstd(vv_nn)  # averaging 16 looks damps speckle


def test_errors_are_one_line(tmp_path, slovenia, sar, joplin_pair):
    with pytest.raises(InputError, match="do not overlap"):
        stack_scenes([slovenia, sar], tmp_path / "a")
    with pytest.raises(InputError, match="--mode pair"):
        stack_scenes(joplin_pair, tmp_path / "b", StackOptions(mode="stack"))
    result = run_cli("stack", *joplin_pair, "--out", tmp_path / "c", "--resampling", "sideways")
    assert result.returncode == 2 and result.stderr.startswith("tscope: error: Invalid value for '--resampling'")


def test_cli_stack_then_ask_reads_it(tmp_path, joplin_pair):
    out = tmp_path / "stack"
    result = run_cli("stack", *joplin_pair, "--out", out, "--crs", "EPSG:32615", "--resolution", "1.2", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["grid"]["crs"] == "EPSG:32615" and record["grid"]["transform"][0] == 1.2
    again = run_cli("stack", *joplin_pair, "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr
