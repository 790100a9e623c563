"""Clouds and cloud shadows from ukis-csmask's trained model, on a real hand-labelled cloudy scene."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from tests.conftest import DATA, run_cli
from tscope.geo.grid import Grid
from tscope.geo.scene import ReadOptions, open_scene
from tscope.reason import clouds
from tscope.reason.query import parse_query
from tscope.reason.rules import RuleSet, load_rules
from tscope.reason.spectral import SpectralBackend

pytestmark = [
    pytest.mark.skipif(not clouds.available(), reason="the clouds extra (ukis-csmask) is not installed"),
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),  # reading the plain label
]

S2 = DATA / "ukis_s2_cloudy.tif"
LABEL = DATA / "ukis_s2_cloudy_label.tif"  # 0 cloud shadow, 1 water, 3 clear land, 4 cloud


@pytest.fixture(scope="module")
def label() -> np.ndarray:
    with rasterio.open(LABEL) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def with_model():
    return SpectralBackend().masks_for(open_scene(S2, ReadOptions(gsd=30)), ["vegetation"])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def test_model_masks_clouds_and_shadows_like_the_hand_label(with_model, label):
    masks, stats = with_model
    excluded = ~masks["vegetation"].valid
    truth = (label == 4) | (label == 0)
    assert "ukis-csmask" in stats["cloud_rule"] and "L1C" in stats["cloud_rule"]
    # The label: 18.9% cloud and 10.9% cloud shadow. The HOT rule masks no shadow at all.
    assert stats["cloud_shadow_percent"] == pytest.approx(14.2, abs=2.0)
    assert stats["cloud_percent"] == pytest.approx(38.5, abs=3.0)
    assert _iou(excluded, truth) > 0.7
    _, hot = SpectralBackend(cloud_model=False).masks_for(open_scene(S2, ReadOptions(gsd=30)), ["vegetation"])
    assert hot["cloud_shadow_percent"] is None and hot["cloud_percent"] < 20


# (scene, share of labelled water counted, share found as water, shadow IoU): measured 0.56, 0.47, 0.704 and
# 0.86, 0.62, 0.643; before, 0.17, 0.07, 0.703 and 0.24, 0.00, 0.631.
@pytest.mark.parametrize(("name", "kept", "found", "shadow_iou"),
                         [("ukis_s2_cloudy", 0.5, 0.4, 0.70), ("ukis_l7_cloudy", 0.8, 0.55, 0.63)])
def test_water_the_model_calls_shadow_stays_water(name, kept, found, shadow_iou):
    # The model calls most dark labelled water cloud shadow (83 % and 71 % of it on these two scenes).
    # Shadow cells that pass DSWE's band-comparison tests are water, not shadowed land: they stay in.
    scene = open_scene(DATA / f"{name}.tif", ReadOptions(gsd=30))
    with rasterio.open(DATA / f"{name}_label.tif") as src:
        truth = src.read(1)  # 0 cloud shadow, 1 water, 3 clear land, 4 cloud
    masks, stats = SpectralBackend().masks_for(scene, ["water"])
    water = masks["water"]
    assert "kept as water" in stats["cloud_rule"]
    assert np.mean(water.valid[truth == 1]) > kept
    assert np.mean(water.data[truth == 1]) > found
    # What the model still calls shadow matches the labelled shadow at least as well as before (0.70, 0.63).
    cloud = SpectralBackend().masks_for(scene, ["cloud"])[0]["cloud"].data
    assert _iou(~water.valid & ~cloud, truth == 0) >= shadow_iou
    # A rules file without the test keeps every shadow out, as before.
    rules = load_rules()
    plain = RuleSet({k: v for k, v in rules.indices.items() if k != "shadow_water"}, rules.index_text, rules.rules)
    kept_before = SpectralBackend(rules=plain).masks_for(scene, ["water"])[0]["water"].valid
    assert np.mean(kept_before[truth == 1]) < 0.3


def test_cloud_questions_are_answered_by_the_model(label):
    masks, _ = SpectralBackend().masks_for(open_scene(S2, ReadOptions(gsd=30)), ["cloud"])
    assert "ukis-csmask" in masks["cloud"].source
    assert _iou(masks["cloud"].data, label == 4) > 0.7


def test_without_the_extra_the_hot_rule_masks_clouds(monkeypatch, slovenia_t2):
    monkeypatch.setattr(clouds, "available", lambda: False)
    trace = SpectralBackend().reason([open_scene(slovenia_t2)], parse_query("What percentage is forest?"))
    assert any("HOT > 0" in note for note in trace.notes)
    assert "cloud_shadow_percent" not in trace.numbers


def test_the_report_names_what_masked_the_clouds(tmp_path, slovenia):
    result = run_cli("ask", slovenia, "What percentage is forest?", "--out", tmp_path / "o", "--json", "-q")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    note = next(n for n in answer["notes"] if "clouds excluded by" in n)
    assert "ukis-csmask" in note and "cloud shadows" in note and "30 m grid" in note
    assert answer["numbers"]["cloud_shadow_percent"]["value"] == 0.0
    assert "ukis-csmask" in (tmp_path / "o" / "answer.md").read_text()


def test_scl_comes_before_the_model(tmp_path, slovenia):
    with rasterio.open(slovenia) as src:
        data, profile, descriptions = src.read(), src.profile | {"driver": "GTiff"}, src.descriptions
    scl = np.full(data.shape[1:], 4, np.uint16)
    scl[:20] = 9
    path = tmp_path / "l2a.tif"
    with rasterio.open(path, "w", **(profile | {"count": data.shape[0] + 1})) as dst:
        dst.write(np.concatenate([data, scl[None]]))
        dst.descriptions = (*descriptions, "scl")
    _, stats = SpectralBackend().masks_for(open_scene(path), ["forest"])
    assert stats["cloud_rule"].startswith("Sentinel-2 L2A scene classification")
    assert stats["cloud_percent"] == pytest.approx(100 * 20 / 101, abs=0.01)


def test_large_scenes_run_the_model_on_a_bounded_coarse_grid():
    class Tile:  # a full Sentinel-2 tile at 10 m: the model must not see 3660 px a side
        grid = Grid("EPSG:32633", Affine(10, 0, 399960, 0, -10, 5100000), 10980, 10980)

    class Small:
        grid = Grid("EPSG:32633", Affine(10, 0, 399960, 0, -10, 5100000), 100, 101)

    assert math.ceil(10980 / clouds.coarse_factor(Tile)) <= clouds.MAX_SIDE
    assert clouds.coarse_factor(Small) == 3  # 30 m, what the models were trained on


def test_product_level_from_preset_bands_and_tags(slovenia, naip):
    assert clouds.product_level(open_scene(slovenia)) == "l1c"  # has the cirrus band
    assert clouds.product_level(open_scene(S2)) == "l1c"  # tagged Level-1 TOA
    assert clouds.product_level(open_scene(naip)) == "l2a"


def test_thin_cloud_the_hot_rule_misses_is_cloud_for_the_model(slovenia_hazy):
    # eo-learn scene 1 (2015-07-31): thin cloud over the whole scene (blue ~0.15 against ~0.08 when
    # clear). ukis-csmask and s2cloudless both call it cloud; the HOT rule passes 0.9% of it.
    thin = open_scene(slovenia_hazy.parent / "slovenia_s2_thin_cloud.tif")
    model, _ = SpectralBackend().masks_for(thin, ["cloud"])
    rule, _ = SpectralBackend(cloud_model=False).masks_for(thin, ["cloud"])
    assert model["cloud"].data.mean() > 0.95
    assert rule["cloud"].data.mean() < 0.02


def test_each_pixel_takes_the_class_of_its_cell_in_any_window():
    rng = np.random.default_rng(0)
    classes = rng.choice([0, 0, 0, clouds.CLOUD, clouds.SHADOW], size=(7, 9)).astype(np.uint8)
    classes[:2, :3] = 0  # a clear corner
    cloud_map = clouds.CloudMap(classes=classes, factor=3, source="test", gsd_m=None)
    full = np.kron(classes, np.ones((3, 3), np.uint8))[:20, :26]
    for window in (Window(0, 0, 26, 20), Window(4, 5, 11, 7), Window(25, 19, 1, 1), Window(2, 1, 7, 5)):
        found = cloud_map.window(window)
        expected = full[window.toslices()]
        if not expected.any():
            assert found is None
            continue
        cloud, shadow = found
        assert np.array_equal(cloud, expected == clouds.CLOUD)
        assert np.array_equal(shadow, expected == clouds.SHADOW)


def test_the_model_input_comes_from_the_pass_that_computes_the_masks(monkeypatch, slovenia):
    # The model read its input through a decimated WarpedVRT: in a file without overviews, a second read of
    # the whole scene (32 of 47 s of `ask` on a 10980² tile). Every pixel is now read once.
    scene = open_scene(slovenia)
    read: list[int] = []
    real_read = type(scene).read

    def counting(self, names, window):
        read.append(int(window.width * window.height))
        return real_read(self, names, window)

    opened: list[str] = []
    real_open = rasterio.open
    # The value checks read a few small windows of their own (the whole of so small a scene): not the pass.
    monkeypatch.setattr("tscope.reason.spectral.check_scene", lambda scene, names: [])
    monkeypatch.setattr(type(scene), "read", counting)
    monkeypatch.setattr(rasterio, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    backend = SpectralBackend(block=40)
    _, stats = backend.masks_for(scene, ["forest"])
    assert "ukis-csmask" in stats["cloud_rule"]
    assert sum(read) == scene.grid.width * scene.grid.height
    # The pass's threads keep one handle each; nothing else opens the file.
    assert 1 <= len(opened) <= backend.workers + 1 < len(read)


def test_passes_running_at_once_load_the_model_once(monkeypatch, slovenia):
    # batch runs several passes in threads: each loaded the 40 MB model itself (the session cache does not
    # stop two first calls at once), costing a load's CPU and memory per thread.
    import onnxruntime

    made: list[str] = []
    real_session = onnxruntime.InferenceSession

    def slow_session(path, *args, **kwargs):
        made.append(str(path))
        time.sleep(0.3)  # a load long enough for the other pass to ask for the model meanwhile
        return real_session(path, *args, **kwargs)

    clouds._session.cache_clear()
    monkeypatch.setattr(onnxruntime, "InferenceSession", slow_session)
    scenes = [open_scene(slovenia), open_scene(slovenia)]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            done = list(pool.map(lambda scene: SpectralBackend().masks_for(scene, ["forest"]), scenes))
    finally:
        clouds._session.cache_clear()
    assert all("ukis-csmask" in stats["cloud_rule"] for _, stats in done)
    assert len(made) == 1
