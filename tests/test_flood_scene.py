"""A real, co-registered Sentinel-1/Sentinel-2 flood chip with a hand label (Sen1Floods11, Spain, September 2019).

tscope reads it as published (13-band L1C with ids written B1 ... B12, B8A; int16 DN; EPSG:4326) and its
optical and SAR water agree with each other and with the label, as a user gets them from ``tscope ask``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from pyproj import Geod
from rasterio.windows import Window

from tests.conftest import DATA, run_cli
from tscope.errors import InputError
from tscope.geo.scene import open_scene
from tscope.reason.clouds import product_level

S2, S1, LABEL = (DATA / f"sen1floods11_spain_{n}.tif" for n in ("s2", "s1", "label"))
# Issue 14: optical and SAR water "agree on the same scene within a few points". Stated here as 4 percentage
# points (measured: 2.9). The rule before DSWE (MNDWI > 0 and NIR < 0.1) gives 18.8 % here, 7.8 points off.
AGREE_POINTS = 4.0
S2_ORDER = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09",
            "cirrus", "swir16", "swir22")


def _label_water_percent() -> float:
    with rasterio.open(LABEL) as src:
        label = src.read(1)  # -1 no data, 0 not water, 1 water
    return 100.0 * np.count_nonzero(label == 1) / np.count_nonzero(label >= 0)


def _water_percent(tmp_path, scene, name: str) -> dict:
    out = tmp_path / name
    result = run_cli("ask", scene, "What percentage is water?", "--out", out, "-q")
    assert result.returncode == 0, result.stderr
    return json.loads((out / "answer.json").read_text())


def test_sentinel2_ids_without_the_zero_map_every_band():
    scene = open_scene(S2)
    assert scene.band_map.source == "band descriptions"
    assert scene.band_map.indexes == {name: i for i, name in enumerate(S2_ORDER, start=1)}
    assert scene.kind == "optical" and product_level(scene) == "l1c"
    bands, valid = scene.read(["blue", "swir22"], Window(0, 0, 512, 512))
    with rasterio.open(S2) as src:
        dn = src.read(2)
    np.testing.assert_allclose(bands["blue"], dn / 10000, rtol=1e-6)
    assert valid.all()


def test_landsat_style_ids_are_not_taken_for_sentinel2(tmp_path):
    # Without B8A the unpadded ids could be Landsat's (its B2 is blue, but its B10 and B11 are thermal):
    # such a file is still refused with a pointer to --sensor/--bands, not guessed.
    path = tmp_path / "landsat_like.tif"
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 3, "dtype": "uint16", "crs": "EPSG:32633",
               "transform": rasterio.transform.from_origin(0, 40, 10, 10)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((3, 4, 4), 1000, np.uint16))
        dst.descriptions = ("B2", "B3", "B4")
    with pytest.raises(InputError, match="cannot tell which band"):
        open_scene(path)


def test_sar_chip_is_calibrated_db():
    scene = open_scene(S1)
    assert scene.kind == "sar" and scene.sar_format == "db"
    bands, _ = scene.read(["vv"], Window(0, 0, 512, 512))
    with rasterio.open(S1) as src:
        db = src.read(1)
    np.testing.assert_allclose(10 * np.log10(bands["vv"]), db, atol=1e-4)


def _chip_area_m2() -> float:
    """The ellipsoidal area of the chip's bounds (EPSG:4326 pixels: about 10 x 7.9 m at 38° N)."""
    with rasterio.open(S1) as src:
        b = src.bounds
    area, _ = Geod(ellps="WGS84").polygon_area_perimeter([b.left, b.right, b.right, b.left],
                                                         [b.bottom, b.bottom, b.top, b.top])
    return abs(area)


def test_optical_and_sar_water_agree_on_a_labelled_flood(tmp_path):
    optical = _water_percent(tmp_path, S2, "s2")
    sar = _water_percent(tmp_path, S1, "s1")
    optical_pct = optical["numbers"]["coverage_percent"]["value"]
    sar_pct = sar["numbers"]["coverage_percent"]["value"]
    assert "USGS DSWE" in optical["steps"][0]["text"]
    assert "VV backscatter" in sar["steps"][0]["text"]
    assert abs(optical_pct - sar_pct) <= AGREE_POINTS
    label = _label_water_percent()  # 26.7 %
    assert abs(optical_pct - label) <= AGREE_POINTS
    assert abs(sar_pct - label) <= 1.0  # issue 14: "Sentinel-1 water on the same scene is within a point"
    # The SAR chip has no nodata: its valid area is the whole chip (20.59 km²), measured on the ellipsoid.
    assert sar["numbers"]["valid_area_m2"]["value"] == pytest.approx(_chip_area_m2(), rel=1e-4)
