"""TerraScope-Bench build on real labels (eo-learn LULC, SpaceNet and Joplin footprints): answers re-derived here."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape
from shapely.ops import unary_union

from tests.conftest import DATA, EXAMPLES, run_cli
from tscope.bench.build import build_bench, numeric_options
from tscope.bench.schema import read_bench
from tscope.data import rle
from tscope.data.labels import display_name, read_footprints
from tscope.data.synth import Sources
from tscope.reason.query import parse_query

LULC = DATA / "slovenia_lulc.tif"
VALUES = {"cropland": [1], "forest": [2], "grassland": [3], "shrubland": [4], "built_up": [8], "water": [5]}
TASK_OF = {"coverage_percentage": "coverage", "absolute_area": "area", "comparative_area": "compare",
           "boundary_detection": "adjacency", "distance_measurement": "distance", "building_change": "change"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.parquet"
    summary = build_bench([EXAMPLES / "slovenia_s2.tif"], out, Sources.open(LULC), seed=3, chip=25)
    return out, summary



def _chip_labels(sample, labels, transform):
    g = sample.grid
    chip = rasterio.Affine(*g["transform"])
    col, row = (round(v) for v in ~transform @ (chip.c, chip.f))
    return labels[row:row + g["height"], col:col + g["width"]], transform @ rasterio.Affine.translation(col, row)


def test_schema_and_options(bench):
    out, summary = bench
    table = pq.read_table(out)
    assert {"image", "question", "candidates", "answer", "task_type", "gt_masks", "source"} <= set(table.column_names)
    assert table.schema.field("image").type.names == ["bytes", "path"]
    samples = read_bench(out)
    assert len(samples) == summary["samples"] and set(summary["per_task"]) == {
        "coverage_percentage", "absolute_area", "comparative_area", "boundary_detection", "distance_measurement"}
    for s in samples:
        n = 2 if s.task_type in ("comparative_area", "boundary_detection") else 4
        assert list(s.candidates) == list("ABCD"[:n]) and s.answer in s.candidates
        assert len(set(s.candidates.values())) == n
        assert s.image[:8] == b"\x89PNG\r\n\x1a\n" and s.image_path.endswith(".png")
        query = parse_query(s.question)
        assert query.task == TASK_OF[s.task_type]
        if n == 4:
            numbers = [float(t.split()[0].rstrip("%")) for t in s.candidates.values()]
            for i, x in enumerate(numbers):
                for y in numbers[i + 1:]:
                    # Distinguishable: 15 % apart (within the display rounding).
                    assert abs(x - y) >= 0.15 * max(x, y) - 0.051


def test_answers_rederived_from_the_labels(bench):
    out, _ = bench
    with rasterio.open(LULC) as src:
        labels, transform = src.read(1), src.transform
    seen = set()
    for s in read_bench(out):
        window, chip_transform = _chip_labels(s, labels, transform)
        valid = window != 0
        gts = [rle.decode(m.rle) for m in s.gt_masks]
        for m, truth in zip(s.gt_masks, gts, strict=True):
            assert np.array_equal(truth, np.isin(window, VALUES[m.label]) & valid)
        correct = s.candidates[s.answer]
        if s.task_type == "coverage_percentage":
            assert correct == f"{100 * gts[0].sum() / valid.sum():.1f}%"
        elif s.task_type == "absolute_area":
            # ~100 m² pixels, ground area within 0.1 % of nominal on UTM 33 near its meridian.
            m2 = gts[0].sum() * abs(transform.a * transform.e)
            number, unit = correct.split()
            assert unit == ("ha" if m2 >= 1e4 else "m²") and s.unit == ("ha" if unit == "ha" else "m2")
            assert float(number) == pytest.approx(m2 / (1e4 if unit == "ha" else 1), rel=2e-3)
        elif s.task_type == "comparative_area":
            larger = s.gt_masks[0].label if gts[0].sum() >= gts[1].sum() else s.gt_masks[1].label
            assert correct == display_name(larger)
            assert max(gts[0].sum(), gts[1].sum()) >= 1.2 * min(gts[0].sum(), gts[1].sum())
        elif s.task_type == "boundary_detection":
            a, b = gts
            touch = (a[:, :-1] & b[:, 1:]).any() or (a[:, 1:] & b[:, :-1]).any() \
                or (a[:-1] & b[1:]).any() or (a[1:] & b[:-1]).any()
            assert correct == ("Yes" if touch else "No")
            for mask in gts:  # the paper's BRD filter
                assert 100 * mask.sum() / valid.sum() >= 3.0
                assert ndimage.label(mask, structure=np.ones((3, 3)))[1] <= 5
        elif s.task_type == "distance_measurement":
            polys = [unary_union([shape(g) for g, _ in shapes(m.astype(np.uint8), mask=m, transform=chip_transform)])
                     for m in gts]
            assert float(correct.split()[0]) == pytest.approx(polys[0].distance(polys[1]), abs=0.6)
        seen.add(s.task_type)
    assert len(seen) == 5


def test_building_change_from_xbd_footprints(tmp_path):
    out = tmp_path / "bce.parquet"
    fixture = DATA / "joplin_xbd_fixture.json"
    build_bench([EXAMPLES / "joplin_pre.tif"], out, Sources.open(None, None, fixture),
                post=EXAMPLES / "joplin_post.tif", seed=0)
    (s,) = read_bench(out)
    assert s.task_type == "building_change" and s.post_image is not None and s.post_source.endswith("joplin_post.tif")
    assert parse_query(s.question, n_scenes=2).task == "change"
    footprints, _ = read_footprints(fixture)
    destroyed = sum(f.damage == "destroyed" for f in footprints)
    assert s.candidates[s.answer] == str(destroyed) == "23"
    assert [m.frame for m in s.gt_masks] == ["t1", "t2"]
    assert ndimage.label(rle.decode(s.gt_masks[0].rle), structure=np.ones((3, 3)))[1] == len(footprints) == 67
    # Too few destroyed buildings: the BCE filter (N_destroyed >= 3) leaves nothing to build.
    few = tmp_path / "few.json"
    data = json.loads(fixture.read_text())
    for i, item in enumerate(data["features"]["lng_lat"]):
        item["properties"]["subtype"] = "destroyed" if i < 2 else "no-damage"
    few.write_text(json.dumps(data))
    from tscope.errors import InputError

    with pytest.raises(InputError, match="no sample passed"):
        build_bench([EXAMPLES / "joplin_pre.tif"], tmp_path / "none.parquet", Sources.open(None, None, few),
                    post=EXAMPLES / "joplin_post.tif")


def test_numeric_options_are_deterministic_and_distinct():
    import random

    for value in (0.7, 3.0, 17.77, 76.4, 99.2, 950.0):
        upper = 100.0 if value < 100 else None
        a = numeric_options(value, random.Random(f"x{value}"), lambda x: f"{x:.1f}", upper=upper)
        b = numeric_options(value, random.Random(f"x{value}"), lambda x: f"{x:.1f}", upper=upper)
        assert a == b
        options, letter = a
        assert options[letter] == f"{value:.1f}" and len(set(options.values())) == 4
        assert all(0 < float(v) <= (100 if value < 100 else 1e9) for v in options.values())
    options, letter = numeric_options(3.0, random.Random(1), lambda x: f"{x:.0f}", integer=True)
    assert options[letter] == "3" and all(float(v).is_integer() for v in options.values())


def test_build_is_deterministic_and_cli(tmp_path, bench):
    out, _ = bench
    again = tmp_path / "again.parquet"
    done = run_cli("bench", "build", EXAMPLES / "slovenia_s2.tif", "--labels", LULC, "--chip", "25", "--seed", "3",
                   "--out", again, "--json")
    assert done.returncode == 0, done.stderr
    first, second = read_bench(out), read_bench(again)
    def key(samples):
        return [(s.question, s.candidates, s.answer) for s in samples]

    assert key(first) == key(second)
    refused = run_cli("bench", "build", EXAMPLES / "slovenia_s2.tif", "--labels", LULC, "--out", again)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    limited = run_cli("bench", "build", EXAMPLES / "slovenia_s2.tif", "--labels", LULC, "--tasks", "CA,CR",
                      "--out", tmp_path / "l.parquet", "--limit", "1", "--json")
    assert json.loads(limited.stdout)["per_task"] == {"coverage_percentage": 1}


def test_cli_build_creates_the_output_folder(tmp_path):
    out = tmp_path / "new" / "folder" / "bench.parquet"
    result = run_cli("bench", "build", EXAMPLES / "slovenia_s2.tif", "--labels", DATA / "slovenia_lulc.tif",
                     "--tasks", "CA", "--out", out, "-q")
    assert result.returncode == 0, result.stderr
    assert len(read_bench(out)) == 1
