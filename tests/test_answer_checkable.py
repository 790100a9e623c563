"""Every number of answer.json can be recomputed from what `ask` wrote: the COG masks and masks.geojson."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tscope.ask import ask
from tscope.geo.grid import Grid
from tscope.geo.mask import Mask
from tscope.reason import measures
from tscope.reason.query import parse_query
from tscope.reason.solve import solve
from tscope.reason.trace import Trace

# Numbers that describe the input (thresholds, nodata and cloud shares), not a measure of the masks.
INPUT_NUMBERS = ("nodata_percent", "cloud_percent", "cloud_shadow_percent", "threshold_")


def _read_mask(path: Path, label: str, frame: str) -> Mask:
    with rasterio.open(path) as src:
        pixels = src.read(1)
        grid = Grid(src.crs, src.transform, src.width, src.height)
    return Mask(data=pixels == 1, valid=pixels != src.nodata, grid=grid, label=label, frame=frame)


def recompute(out: Path) -> None:
    """Check answer.json against the masks and polygons in ``out``, as a user with a GIS would."""
    answer = json.loads((out / "answer.json").read_text())
    features = json.loads((out / "masks.geojson").read_text())["features"]
    simplified = {step for note in answer["notes"] for step in answer["masks"]
                  if note.startswith("masks.geojson:") and step in note}
    masks = {}
    for step, info in answer["masks"].items():
        mask = _read_mask(out / info["file"], info["class"], info["frame"])
        masks[(info["class"], info["frame"])] = mask
        area = measures.area_m2(mask)
        assert info["area_m2"] == pytest.approx(area, rel=1e-9, abs=1e-6)
        mine = [f for f in features if f["properties"]["step"] == step]
        if step not in simplified:
            # The polygons are the mask's regions: 4-connected, and their geodesic areas add up.
            assert sum(f["properties"]["area_m2"] for f in mine) == pytest.approx(area, rel=2e-3, abs=1e-6)
            assert len(mine) == measures.count(mask, min_area=0).count
    # Every measure again, from the masks as written.
    question, n_scenes = answer["question"], len(answer["scenes"])
    trace = Trace(question=question, query=parse_query(question, n_scenes=n_scenes), backend="check")
    solve(trace.query, masks, trace)
    written = {k: v["value"] for k, v in answer["numbers"].items() if not k.startswith(INPUT_NUMBERS)}
    assert set(written) == set(trace.numbers)
    for key, number in trace.numbers.items():
        if isinstance(number.value, float):
            assert written[key] == pytest.approx(number.value, rel=1e-9, abs=1e-3), key
        else:
            assert written[key] == number.value, key
    task = answer["query"]["task"]
    if task in ("count", "existence") and not simplified:
        # Counted regions are GeoJSON features of at least the minimum area.
        min_area = written.get("min_area_m2", measures.default_min_area(next(iter(masks.values())).grid))
        big = [f for f in features if f["properties"]["area_m2"] >= min_area * (1 - 1e-3)]
        assert len(big) == written.get("count", written.get("regions"))
    if task == "change":
        # Each date's mask holds exactly the pixels the change counted (valid at both dates).
        cls = answer["query"]["classes"][0]
        assert written["area_t1_m2"] == pytest.approx(measures.area_m2(masks[(cls, "t1")]), abs=1e-3)
        assert written["area_t2_m2"] == pytest.approx(measures.area_m2(masks[(cls, "t2")]), abs=1e-3)
        assert np.array_equal(masks[(cls, "t1")].valid, masks[(cls, "t2")].valid)
    if n_scenes == 1:
        # Nodata and cloud are the pixels the masks mark 255.
        mask = next(iter(masks.values()))
        excluded = 100 * (1 - mask.valid.mean())
        assert written_input(answer, "nodata_percent") + written_input(answer, "cloud_percent") == pytest.approx(
            excluded, abs=1e-3)
    assert "nan" not in json.dumps(answer["numbers"]).lower()


def written_input(answer: dict, key: str) -> float:
    return answer["numbers"][key]["value"]


@pytest.mark.parametrize("question", [
    "What percentage of the image is covered by forest?",
    "How much area is forest?",
    "Which is larger, forest or grassland?",
    "Does the forest border the grassland?",
    "How far is the grassland from the built-up area?",
    "How many forest regions are there?",
    "Is there any grassland?",
    "Where is the grassland?",
])
def test_every_number_is_recomputable_from_the_outputs(tmp_path, slovenia, question):
    ask([slovenia], question, out=tmp_path / "o")
    recompute(tmp_path / "o")


def test_a_pair_is_recomputable_and_both_masks_share_the_common_validity(tmp_path, joplin_pair):
    # The t1 mask used to lack t2's nodata: it summed to 31,145 m² where the answer said 30,868 m².
    ask(list(joplin_pair), "How much did the vegetation change between the two images?", out=tmp_path / "o")
    recompute(tmp_path / "o")


def _s2(path: Path, water: bool) -> Path:
    """A 64 x 64 px, 5-band float reflectance scene: grass, with a lake when ``water``."""
    reflectance = np.empty((5, 64, 64), np.float32)
    reflectance[:] = np.array([0.04, 0.08, 0.05, 0.35, 0.22], np.float32)[:, None, None]
    if water:
        reflectance[:, 20:40, 20:40] = np.array([0.05, 0.06, 0.04, 0.02, 0.01], np.float32)[:, None, None]
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=5, dtype="float32",
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5_000_000)) as dst:
        dst.write(reflectance)
        dst.descriptions = ("blue", "green", "red", "nir", "swir16")
    return path


def test_undefined_numbers_are_null_with_a_note(tmp_path):
    before, after = _s2(tmp_path / "t1.tif", water=False), _s2(tmp_path / "t2.tif", water=True)
    trace = ask([before, after], "How much did the water change between the two images?", out=tmp_path / "c")
    answer = json.loads((tmp_path / "c" / "answer.json").read_text())
    assert answer["numbers"]["percent_change"] == {"value": None, "unit": "%"}  # was the string "nan"
    assert any(n.startswith("percent_change is null") for n in answer["notes"])
    assert answer["numbers"]["area_t2_m2"]["value"] > 0 and trace.answer
    ask([before], "How far is the water from the grassland?", out=tmp_path / "d")
    answer = json.loads((tmp_path / "d" / "answer.json").read_text())
    assert answer["numbers"]["distance_m"]["value"] is None
    assert any(n.startswith("distance_m is null: there is no water") for n in answer["notes"])
    recompute(tmp_path / "d")
    ask([before], "Which is larger, water or grassland?", out=tmp_path / "e")
    answer = json.loads((tmp_path / "e" / "answer.json").read_text())
    assert answer["numbers"]["ratio"]["value"] is None and not math.isnan(answer["numbers"]["area_b_m2"]["value"])
    assert "null" in (tmp_path / "e" / "answer.md").read_text()


def test_geojson_features_are_the_counted_regions(tmp_path):
    # Two diagonal-only neighbours are two regions: 8-connected counting said one, GeoJSON drew two.
    grid = Grid(rasterio.crs.CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5_000_000), 8, 8)
    data = np.zeros(grid.shape, bool)
    data[1:3, 1:3] = data[3:5, 3:5] = True
    mask = Mask(data=data, valid=np.ones(grid.shape, bool), grid=grid, label="forest")
    assert measures.count(mask, min_area=0).count == 2
