"""Terra-CoT synthesis on real labels: every answer re-derived here from the label raster/footprints."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.features import rasterize, shapes
from rasterio.windows import Window
from scipy import ndimage
from shapely import transform as shp_transform
from shapely.geometry import shape
from shapely.ops import unary_union

from tests.conftest import DATA, EXAMPLES, run_cli
from tscope.data import rle
from tscope.data.labels import load_class_table, read_footprints, read_labels
from tscope.data.res import res_records
from tscope.data.synth import Sources, read_records, synthesise
from tscope.errors import InputError
from tscope.geo.scene import open_scene
from tscope.reason.query import parse_query

LULC = DATA / "slovenia_lulc.tif"
# eo-learn LULC values of each class name the synthesis uses (independent of tscope's class table).
VALUES = {"cropland": [1], "forest": [2], "grassland": [3], "shrubland": [4], "water": [5], "wetland": [6],
          "tundra": [7], "built_up": [8], "bare_soil": [9], "snow": [10]}
EXPECTED_TASK = {"existence": "existence", "counting": "count", "localisation": "locate", "area": "area",
                 "coverage": "coverage", "boundary": "adjacency", "distance": "distance"}


@pytest.fixture(scope="module")
def lulc() -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(LULC) as src:
        return src.read(1), src.transform


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synthesise([EXAMPLES / "slovenia_s2.tif", DATA / "slovenia_s2_t2.tif"], out, Sources.open(LULC),
                         seed=7, chip=25)
    return out, summary


def _chip(record_id: str) -> tuple[int, int]:
    match = re.search(r"_r(\d+)c(\d+)_", record_id)
    return int(match.group(1)), int(match.group(2))


def test_rle_round_trip_is_lossless(lulc):
    from pycocotools import mask as coco

    labels, _ = lulc
    cases = [labels == 2, labels == 4, np.zeros((7, 5), bool), np.ones((3, 9), bool), np.eye(6, dtype=bool)]
    for mask in cases:
        encoded = rle.encode(mask)
        assert isinstance(encoded["counts"], str) and encoded["size"] == list(mask.shape)
        assert np.array_equal(rle.decode(json.loads(json.dumps(encoded))), mask)
        # The official GranDf loader calls pycocotools.mask.decode on the dict as stored.
        assert np.array_equal(coco.decode(encoded).astype(bool), mask)
        assert rle.area(encoded) == int(mask.sum())


def test_class_table_sources(tmp_path):
    table = load_class_table(LULC)
    assert table.classes[1] == "cropland" and table.classes[8] == "built_up" and table.classes[7] == "tundra"
    (tmp_path / "t.json").write_text('{"5": "Water", "2": "Tree cover"}')
    assert load_class_table(LULC, tmp_path / "t.json").classes == {5: "water", 2: "forest"}
    (tmp_path / "t.txt").write_text("# value name\n1 cultivated land\n3,pasture\n")
    assert load_class_table(LULC, tmp_path / "t.txt").classes == {1: "cropland", 3: "grassland"}
    (tmp_path / "bad.txt").write_text("x forest\n")
    with pytest.raises(InputError, match="not an integer"):
        load_class_table(LULC, tmp_path / "bad.txt")
    with pytest.raises(InputError, match="CLASSES"):
        load_class_table(DATA / "slovenia_s2_t2.tif")


def test_labels_on_the_image_grid_are_the_raster(lulc):
    labels, _ = lulc
    scene = open_scene(EXAMPLES / "slovenia_s2.tif")
    values, valid = read_labels(LULC, scene.grid)
    assert np.array_equal(values[valid], labels[valid]) and np.array_equal(valid, labels != 0)


def test_synthesised_records_are_in_the_training_format(synth_dir, lulc):
    out, summary = synth_dir
    labels, _ = lulc
    records = read_records(out / "terra_cot.jsonl")
    assert len(records) == summary["samples"] > 20
    assert set(summary["per_task"]) == set(EXPECTED_TASK)
    for r in records:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and re.fullmatch(r"<think>.+</think><answer>.+</answer>", gpt["value"], re.S)
        think = gpt["value"].split("</think>")[0]
        assert think.count("[SEG]") == len(r["masks"]) == len(r["labels"])
        # Each [SEG] comes right after the name of the region it segments, in mask order.
        names = re.findall(r"segment the ([\w\- ]+?) \[SEG\]", think)
        from tscope.data.labels import display_name

        assert names == [display_name(label) for label in r["labels"]]
        # Masks parse back and equal the label raster's class pixels in the chip.
        row, col = _chip(r["id"])
        for group, label in zip(r["masks"], r["labels"], strict=True):
            decoded = rle.decode(group[0])
            window = labels[row:row + decoded.shape[0], col:col + decoded.shape[1]]
            assert np.array_equal(decoded, np.isin(window, VALUES[label]))
        with Image.open(out / r["image"]) as png:
            assert (png.height, png.width) == tuple(r["masks"][0][0]["size"])
        assert parse_query(human["value"].split("\n", 1)[1]).task == EXPECTED_TASK[r["task"]]


def _polygons(mask: np.ndarray, transform) -> object:
    return unary_union([shape(g) for g, v in shapes(mask.astype(np.uint8), mask=mask, transform=transform)])


def test_every_answer_rederived_from_the_labels(synth_dir, lulc):
    out, _ = synth_dir
    labels, transform = lulc
    pixel_m2 = abs(transform.a * transform.e)
    # Ground area of a UTM pixel = nominal area / areal scale factor (k² of the projection).
    with rasterio.open(LULC) as src:
        x, y = src.xy(src.height // 2, src.width // 2)
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(x, y)
    from pyproj import Proj

    ground_m2 = pixel_m2 / Proj("EPSG:32633").get_factors(lon, lat).areal_scale
    checked = set()
    for r in read_records(out / "terra_cot.jsonl"):
        row, col = _chip(r["id"])
        h, w = r["masks"][0][0]["size"]
        window = labels[row:row + h, col:col + w]
        valid = window != 0
        masks = [np.isin(window, VALUES[label]) & valid for label in r["labels"]]
        value, answer = r["answer_value"], r["conversations"][1]["value"].split("<answer>")[1][:-9]
        task = r["task"]
        if task == "coverage":
            assert value == pytest.approx(100 * masks[0].sum() / valid.sum(), abs=1e-3)
            assert answer == f"{value:.1f}%"
        elif task == "area":
            assert value == pytest.approx(masks[0].sum() * ground_m2, rel=1e-4)  # answer_value is in m²
            assert answer == (f"{value / 1e4:.2f} ha" if value >= 1e4 else f"{value:.0f} m²")
        elif task in ("counting", "existence"):
            lab, n = ndimage.label(masks[0])  # 4-connected, as masks.geojson is traced
            sizes = np.bincount(lab.ravel())[1:]
            at_least_4 = int((sizes >= 4).sum())
            if task == "counting":
                assert value == at_least_4 and answer == str(value)
            else:
                assert value == (at_least_4 > 0) and answer == ("Yes" if value else "No")
        elif task == "localisation":
            rows, cols = np.nonzero(masks[0])
            third = lambda v, n: min(2, int(3 * v / n))  # noqa: E731
            vertical = ("north", "", "south")[third(rows.mean() + 0.5, h)]
            horizontal = ("west", "", "east")[third(cols.mean() + 0.5, w)]
            assert value == ("-".join(p for p in (vertical, horizontal) if p) or "centre")
        elif task == "boundary":
            a, b = masks
            touch = (a[:, :-1] & b[:, 1:]).any() or (a[:, 1:] & b[:, :-1]).any() \
                or (a[:-1] & b[1:]).any() or (a[1:] & b[:-1]).any()
            assert value == bool(touch) and answer == ("Yes" if touch else "No")
        elif task == "distance":
            chip_transform = transform @ rasterio.Affine.translation(col, row)
            gap = _polygons(masks[0], chip_transform).distance(_polygons(masks[1], chip_transform))
            assert value == pytest.approx(gap, rel=2e-3)
            assert answer == f"{value:.0f} m"
        checked.add(task)
    assert checked == set(EXPECTED_TASK)


def test_synthesis_is_deterministic_given_a_seed(tmp_path, synth_dir):
    out, _ = synth_dir
    again = tmp_path / "again"
    synthesise([EXAMPLES / "slovenia_s2.tif", DATA / "slovenia_s2_t2.tif"], again, Sources.open(LULC), seed=7, chip=25)
    assert (again / "terra_cot.jsonl").read_bytes() == (out / "terra_cot.jsonl").read_bytes()
    other = tmp_path / "other"
    synthesise([EXAMPLES / "slovenia_s2.tif", DATA / "slovenia_s2_t2.tif"], other, Sources.open(LULC), seed=8, chip=25)
    assert (other / "terra_cot.jsonl").read_bytes() != (out / "terra_cot.jsonl").read_bytes()


def _burn(geoms, src_crs: str, grid_path, window: Window | None = None) -> np.ndarray:
    with rasterio.open(grid_path) as src:
        transform, shape_ = src.transform, (src.height, src.width)
        to_grid = Transformer.from_crs(src_crs, src.crs, always_xy=True).transform
    on_grid = [(shp_transform(g, to_grid, interleaved=False), 1) for g in geoms]
    burnt = rasterize(on_grid, out_shape=shape_, transform=transform)
    return burnt.astype(bool)


def test_spacenet_building_footprints(tmp_path):
    summary = synthesise([DATA / "spacenet_pan.tif"], tmp_path, Sources.open(None, None,
                         DATA / "spacenet_footprints.geojson"), seed=1)
    records = {r["task"]: r for r in read_records(tmp_path / "terra_cot.jsonl")}
    assert summary["samples"] == len(records) >= 4
    data = json.loads((DATA / "spacenet_footprints.geojson").read_text())
    buildings = _burn([shape(f["geometry"]) for f in data["features"]], "EPSG:32616", DATA / "spacenet_pan.tif")
    assert np.array_equal(rle.decode(records["coverage"]["masks"][0][0]), buildings)
    lab, n = ndimage.label(buildings, structure=np.ones((3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    assert records["counting"]["answer_value"] == int((sizes >= 4).sum()) == 15
    assert records["coverage"]["answer_value"] == pytest.approx(100 * buildings.sum() / buildings.size, abs=0.1)


def test_joplin_damage_pair_in_the_bitemporal_format(tmp_path):
    fixture = DATA / "joplin_xbd_fixture.json"
    synthesise([EXAMPLES / "joplin_pre.tif"], tmp_path, Sources.open(None, None, fixture),
               post=EXAMPLES / "joplin_post.tif", seed=0)
    (record,) = read_records(tmp_path / "terra_cot.jsonl")
    assert {"pre_image", "post_image"} <= set(record) and "image" not in record
    assert record["frames"] == ["t1", "t2"] and record["labels"] == ["built_up", "destroyed"]
    think = record["conversations"][1]["value"]
    assert think.index("pre-event image, I segment the buildings [SEG]") < think.index("post-event image")
    footprints, crs = read_footprints(fixture)
    destroyed = [f.geometry for f in footprints if f.damage == "destroyed"]
    lab, n = ndimage.label(rle.decode(record["masks"][1][0]), structure=np.ones((3, 3)))
    assert record["answer_value"] == n == len(destroyed) == 23
    assert record["conversations"][1]["value"].endswith("<answer>23</answer>")


def test_res_pairs(tmp_path, lulc):
    summary = res_records([EXAMPLES / "slovenia_s2.tif"], tmp_path, Sources.open(LULC))
    records = read_records(tmp_path / "res.jsonl")
    assert summary["samples"] == len(records) == 4  # forest, grassland, shrubland, built-up; cropland is a speck
    labels, _ = lulc
    for r in records:
        assert r["conversations"][0]["value"] == "<image>\nPlease segment the " + \
            {"forest": "forest", "grassland": "grassland", "shrubland": "shrubland",
             "built_up": "built-up area"}[r["labels"][0]] + "."
        assert r["conversations"][1]["value"] == "Sure, [SEG]."
        assert np.array_equal(rle.decode(r["masks"][0][0]), np.isin(labels, VALUES[r["labels"][0]]))


def test_cli_synth_and_errors(tmp_path):
    out = tmp_path / "cot"
    done = run_cli("data", "synth", EXAMPLES / "slovenia_s2.tif", "--labels", LULC, "--out", out, "--json",
                   "--tasks", "coverage,area")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["per_task"] == {"coverage": 1, "area": 1}
    again = run_cli("data", "synth", EXAMPLES / "slovenia_s2.tif", "--labels", LULC, "--out", out)
    assert again.returncode == 2 and again.stderr.startswith("tscope: error:") and "--overwrite" in again.stderr
    bad = run_cli("data", "synth", EXAMPLES / "slovenia_s2.tif", "--out", tmp_path / "x")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--labels" in bad.stderr
    bad = run_cli("data", "synth", EXAMPLES / "slovenia_s2.tif", "--labels", LULC, "--tasks", "weather",
                  "--out", tmp_path / "y")
    assert bad.returncode == 2 and "weather" in bad.stderr
