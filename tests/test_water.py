"""Water by USGS DSWE's five tests, on real hand-labelled scenes with small, partial and turbid water."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from tests.conftest import DATA
from tscope.errors import InputError
from tscope.geo.scene import ReadOptions, open_scene
from tscope.reason.query import parse_query
from tscope.reason.rules import default_rules, load_rules, names_in
from tscope.reason.spectral import SpectralBackend

BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]


def _scene_and_label(name: str):
    scene = open_scene(DATA / f"{name}.tif", ReadOptions(gsd=30))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(DATA / f"{name}_label.tif") as src:
            label = src.read(1)  # 0 cloud shadow, 1 water, 3 clear land, 4 cloud
    bands, _ = scene.read(BANDS, Window(0, 0, scene.grid.width, scene.grid.height))
    return scene, label, bands


@pytest.mark.parametrize(("name", "min_iou", "old_iou"),
                         [("ukis_s2_cloudy", 0.55, 0.48), ("ukis_l7_cloudy", 0.58, 0.49)])
def test_dswe_finds_the_labelled_water_better_than_one_threshold(name, min_iou, old_iou):
    scene, label, bands = _scene_and_label(name)
    # The water rule alone, on the label's clear pixels (land and water): no cloud masking involved.
    masks, _ = SpectralBackend(mask_clouds=False).masks_for(scene, ["water"])
    water = masks["water"]
    assert water.source.startswith("USGS DSWE")
    clear = (label == 1) | (label == 3)
    truth = label == 1
    iou = np.count_nonzero(water.data & truth & clear) / np.count_nonzero((water.data | truth) & clear)
    assert iou > min_iou
    # The rule it replaces (MNDWI > 0 and NIR < 0.1) on the same pixels.
    g, s, n = bands["green"], bands["swir16"], bands["nir"]
    old = ((g - s) / (g + s) > 0) & (n < 0.1)
    old_score = np.count_nonzero(old & truth & clear) / np.count_nonzero((old | truth) & clear)
    assert old_score == pytest.approx(old_iou, abs=0.02)
    assert iou > old_score + 0.05


def test_dswe_keeps_turbid_water_whose_nir_is_above_0_1():
    scene, label, bands = _scene_and_label("ukis_l7_cloudy")
    masks, _ = SpectralBackend(mask_clouds=False).masks_for(scene, ["water"])
    turbid = (label == 1) & (bands["nir"] > 0.1)
    assert np.count_nonzero(turbid) > 1000  # half of this scene's labelled water
    # NIR < 0.1 rejects every one of them, NDWI > 0 keeps 14%, DSWE a quarter (25.5%).
    kept = np.count_nonzero(masks["water"].data & turbid) / np.count_nonzero(turbid)
    assert kept == pytest.approx(0.255, abs=0.03)
    ndwi = (bands["green"] - bands["nir"]) / (bands["green"] + bands["nir"]) > 0
    assert np.count_nonzero(ndwi & turbid) / np.count_nonzero(turbid) == pytest.approx(0.143, abs=0.03)


def test_no_water_on_the_clear_mountain_scenes(slovenia, slovenia_t2):
    for path in (slovenia, slovenia_t2):
        trace = SpectralBackend().reason([open_scene(path)], parse_query("What percentage is water?"))
        assert trace.numbers["coverage_percent"].value < 0.1


def test_indices_may_build_on_earlier_indices_only(tmp_path):
    assert {"mndwi", "ndvi", "mbsrn", "awesh"} <= names_in(default_rules().indices["dswe_tests"])
    bad = tmp_path / "rules.toml"
    bad.write_text('[indices]\na = "b2 + red"\nb2 = "red"\n')
    with pytest.raises(InputError, match="nor an index defined above it"):
        load_rules(bad)
