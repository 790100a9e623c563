"""The spectral backend on real scenes, checked against the scenes' real labels."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from tscope.errors import InputError
from tscope.geo.scene import open_scene, open_scenes
from tscope.reason import measures
from tscope.reason.query import parse_query
from tscope.reason.rules import compile_expression, otsu
from tscope.reason.spectral import SpectralBackend


def _label_share(lulc_path, value: int) -> float:
    with rasterio.open(lulc_path) as src:
        lulc = src.read(1)
    return 100.0 * np.count_nonzero(lulc == value) / lulc.size


def test_forest_coverage_matches_the_lulc_label(slovenia, slovenia_lulc):
    trace = SpectralBackend().reason([open_scene(slovenia)], parse_query("What percentage is forest?"))
    label = _label_share(slovenia_lulc, 2)  # 2 = forest; 75% of this scene
    assert label == pytest.approx(75.3, abs=0.5)
    assert trace.numbers["coverage_percent"].value == pytest.approx(label, abs=5.0)
    # Not just the right share: the right pixels.
    with rasterio.open(slovenia_lulc) as src:
        truth = src.read(1) == 2
    mask = next(iter(trace.masks.values())).data
    iou = np.count_nonzero(mask & truth) / np.count_nonzero(mask | truth)
    assert iou > 0.75


def test_water_is_absent(slovenia):
    trace = SpectralBackend().reason([open_scene(slovenia)], parse_query("Is there any water?"))
    assert trace.numbers["present"].value is False
    assert trace.answer.startswith("No")


def test_hazy_scene_is_excluded_as_cloud(slovenia_hazy):
    # Scene 0 of the eo-learn sample is hazy (blue ~ red ~ 0.3): the cloud model (and s2cloudless)
    # call all of it cloud; the HOT rule almost all of it.
    with pytest.raises(InputError, match="every pixel is nodata or cloud"):
        SpectralBackend().masks_for(open_scene(slovenia_hazy), ["forest"])
    masks, stats = SpectralBackend(cloud_model=False).masks_for(open_scene(slovenia_hazy), ["forest"])
    assert stats["cloud_percent"] > 80
    assert not masks["forest"].data[~masks["forest"].valid].any()
    clear, clear_stats = SpectralBackend().masks_for(open_scene(slovenia_hazy.parent / "slovenia_s2_t2.tif"),
                                                     ["forest"])
    assert clear_stats["cloud_percent"] < 5


def test_missing_band_is_a_clear_error(naip, joplin_pair):
    with pytest.raises(InputError, match=r"forest needs swir16|needs nir"):
        SpectralBackend().masks_for(open_scene(joplin_pair[0]), ["forest"])
    with pytest.raises(InputError, match="no rule for shrubland"):
        SpectralBackend().masks_for(open_scene(naip), ["shrubland"])


def test_cropland_and_grassland_are_not_separable():
    with pytest.raises(InputError, match="cannot tell"):
        SpectralBackend()._select(_FakeScene(), ["cropland", "grassland"])


class _FakeScene:
    bands = ["red", "nir", "swir16", "green", "blue"]
    kind = "optical"


@pytest.fixture
def sar_calibrated(tmp_path, sar):
    """The real SpaceNet-6 SAR as linear power, scaled by one constant so its VV median is -12 dB.

    The sample is not radiometrically calibrated (median VV 58 "dB", which tscope refuses); one constant
    factor stands in for its unknown calibration constant and keeps every contrast of the scene.
    """
    with rasterio.open(sar) as src:
        power = (np.abs(src.read()) ** 2).astype(np.float32)
        profile = src.profile | {"dtype": "float32", "driver": "GTiff", "nodata": None}
    factor = 10 ** (-1.2) / np.median(power[0][power[0] > 0])
    path = tmp_path / "sar_sigma0.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(power * np.float32(factor))
        dst.descriptions = ("vv", "vh")
    return path


def test_sar_water_uses_a_per_scene_otsu_threshold(sar_calibrated):
    scene = open_scene(sar_calibrated)
    masks, stats = SpectralBackend().masks_for(scene, ["water"])
    threshold = stats["thresholds"]["vv_water"]
    assert -24.0 <= threshold <= -12.0
    window = rasterio.windows.Window(0, 0, scene.grid.width, scene.grid.height)
    vv = scene.read(["vv"], window)[0]["vv"]
    with np.errstate(divide="ignore"):
        expected = 10 * np.log10(vv) < threshold
    np.testing.assert_array_equal(masks["water"].data, expected)


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-20, 1, 5000), rng.normal(-8, 1, 5000)])
    assert -16 < otsu(values) < -12


def test_pair_change_on_real_joplin_tiles(joplin_pair):
    scenes = open_scenes(joplin_pair)
    trace = SpectralBackend().reason(scenes, parse_query("How much did vegetation change?", n_scenes=2))
    before, after = (m for m in trace.masks.values())
    assert (before.frame, after.frame) == ("t1", "t2")
    result = measures.change(before, after)
    # The 2011 tornado stripped the vegetation: most of it is lost.
    assert result.loss_m2 > 10 * result.gain_m2
    assert trace.numbers["net_m2"].value == pytest.approx(result.net_m2, rel=1e-6)


@pytest.mark.parametrize("bad", ["__import__('os')", "red.real", "(lambda: 1)()", "open('x')"])
def test_rule_expressions_cannot_run_code(bad):
    with pytest.raises(ValueError):
        compile_expression(bad, "test")


def test_scl_clouds_are_excluded_and_reported(tmp_path, slovenia):
    # The real scene as a Sentinel-2 L2A-style file: its bands plus an SCL band that marks the
    # top-left quarter as cloud (9) and one row as cloud shadow (3).
    with rasterio.open(slovenia) as src:
        data = src.read()
        profile = src.profile | {"count": src.count + 1, "driver": "GTiff"}
        descriptions = (*src.descriptions, "scl")
    scl = np.full(data.shape[1:], 4, np.uint16)  # 4 = vegetation
    scl[:50, :50] = 9
    scl[80, :] = 3
    path = tmp_path / "l2a.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.concatenate([data, scl[None]]))
        dst.descriptions = descriptions
    backend = SpectralBackend()
    masks, stats = backend.masks_for(open_scene(path), ["forest"])
    cloud = (scl == 9) | (scl == 3)
    assert stats["cloud_percent"] == pytest.approx(100 * cloud.mean())
    assert "scene classification" in stats["cloud_rule"]
    np.testing.assert_array_equal(masks["forest"].valid, ~cloud)
    trace = backend.reason([open_scene(path)], parse_query("What percentage is forest?"))
    forest = masks["forest"].data
    assert trace.numbers["coverage_percent"].value == pytest.approx(
        100 * np.count_nonzero(forest & ~cloud) / np.count_nonzero(~cloud), rel=1e-3)


def test_windowed_processing_does_not_depend_on_the_window_size(naip):
    scene = open_scene(naip)
    whole, _ = SpectralBackend(block=1024).masks_for(scene, ["vegetation"])
    tiled, _ = SpectralBackend(block=96, workers=2).masks_for(scene, ["vegetation"])
    assert whole["vegetation"].data.any()
    np.testing.assert_array_equal(whole["vegetation"].data, tiled["vegetation"].data)
    np.testing.assert_array_equal(whole["vegetation"].valid, tiled["vegetation"].valid)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('needs = "green"\nexpression = "green > 0"', "needs must be a list"),
        ('needs = ["green"]\nexpression = "ndwi > 0"', "uses nir but needs does not list it"),
        ('needs = ["vv"]\nexpression = "vv_db < t"\n[rule.threshold.t]\nindex = "vv_db"\nrange = 5\nfallback = -15',
         "range must be two numbers"),
        ('needs = ["green"]\nexpression = "green > bogus"', "neither a band"),
    ],
)
def test_malformed_rules_files_are_input_errors(tmp_path, rule, message):
    from tscope.reason.rules import load_rules

    path = tmp_path / "rules.toml"
    path.write_text('[indices]\nndwi = "(green - nir) / (green + nir)"\nvv_db = "10 * log10(vv)"\n\n'
                    f'[[rule]]\nclass = "water"\nsource = "test"\n{rule}\n')
    with pytest.raises(InputError, match=message):
        load_rules(path)
