"""Bench evaluation: a hand-written official-schema parquet scored with a fixed fake answer stream."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio

from tests.conftest import DATA, EXAMPLES, run_cli
from tscope.bench.answers import SYSTEM, extract_letter, format_prompt
from tscope.bench.evaluate import ModelOutput, SpectralAnswerer, evaluate, load_results
from tscope.bench.report import markdown, summarise
from tscope.bench.schema import read_bench
from tscope.data import image as images
from tscope.data import rle
from tscope.errors import InputError
from tscope.geo.scene import open_scene

LULC = DATA / "slovenia_lulc.tif"


@pytest.fixture(scope="module")
def truth():
    with rasterio.open(LULC) as src:
        labels = src.read(1)
    forest, grass = labels == 2, labels == 3
    block = np.zeros_like(forest)
    block[:10, :10] = True
    png = images.png_bytes(images.render(open_scene(EXAMPLES / "slovenia_s2.tif"))[0])
    return forest, grass, block, png


def _gt(*pairs):
    return json.dumps([{"label": label, "frame": "t1", "rle": rle.encode(m)} for label, m in pairs])


def _rows(truth, candidates_as_json: bool):
    forest, grass, _, png = truth
    rows = [
        ("What percentage of the image is covered by forest?", {"A": "76.4%", "B": "45.9%", "C": "99.0%",
                                                                 "D": "34.4%"}, "A", "coverage_percentage",
         _gt(("forest", forest))),
        ("What percentage of the image is covered by grassland?", {"A": "12.5%", "B": "23.2%", "C": "17.9%",
                                                                    "D": "35.7%"}, "C", "coverage_percentage",
         _gt(("grassland", grass))),
        ("Does the forest border the grassland?", {"A": "Yes", "B": "No"}, "A", "boundary_detection",
         _gt(("forest", forest), ("grassland", grass))),
        ("How far is the forest from the water, in metres?", {"A": "10 m", "B": "40 m", "C": "80 m", "D": "120 m"},
         "B", "distance_measurement", None),
        ("Which covers a larger area, the grassland or the forest?", {"A": "grassland", "B": "forest"}, "B",
         "comparative_area", None),
    ]
    cand = [json.dumps(c) if candidates_as_json else c for _, c, _, _, _ in rows]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cand_type = pa.string() if candidates_as_json else pa.struct([(k, pa.string()) for k in "ABCD"])
    return pa.table({
        "image": pa.array([{"bytes": png, "path": f"img_{i}.png"} for i in range(len(rows))], image_type),
        "question": [r[0] for r in rows],
        "candidates": pa.array(cand, cand_type),
        "answer": [r[2] for r in rows],
        "task_type": [r[3] for r in rows],
        "gt_masks": [r[4] for r in rows],
    })


class FakeAnswerer:
    """The fixed answer stream: one (text, masks, frames) per call, in order."""

    def __init__(self, truth):
        forest, grass, block, _ = truth
        self.stream = [
            ModelOutput("<think>I segment the forest [SEG].</think><answer>A</answer>", [forest], [0]),
            ModelOutput("<think>grassland [SEG]</think><answer>B. 23.2%</answer>", [], []),
            ModelOutput("Looking at the masks, A is right.", [grass | block, forest], [0, 0]),
            ModelOutput("I am not sure.", [], []),
            ModelOutput("<think>compare</think><answer>b</answer>", [], []),
        ]
        self.prompts: list[str] = []
        self.shapes: list[tuple] = []

    def chat(self, pictures, prompt):
        self.prompts.append(prompt)
        self.shapes.append(tuple(p.shape for p in pictures))
        return self.stream[len(self.prompts) - 1]


@pytest.fixture(params=[False, True], ids=["candidates-dict", "candidates-json"])
def official(tmp_path, truth, request):
    path = tmp_path / "official.parquet"
    pq.write_table(_rows(truth, request.param), path)
    return path


def test_fixed_answer_stream_scores_to_the_digit(official, truth, tmp_path):
    forest, grass, block, _ = truth
    fake = FakeAnswerer(truth)
    records = evaluate(official, fake, tmp_path / "out" / "results.jsonl")
    assert [r["predicted_answer"] for r in records] == ["A", "B", "A", None, "B"]
    assert [r["correct"] for r in records] == [True, False, True, False, True]
    assert [r["extraction"] for r in records] == ["answer-tag", "answer-tag", "first-letter", "none", "answer-tag"]
    assert fake.prompts[0] == (SYSTEM + "<image>\nWhat percentage of the image is covered by forest?\n"
                               "A. 76.4%\nB. 45.9%\nC. 99.0%\nD. 34.4%\n")
    assert fake.shapes[0] == ((101, 100, 3),)
    grass_iou = int(grass.sum()) / int((grass | block).sum())
    assert [r["iou"] for r in records] == [1.0, 0.0, (1.0 + grass_iou) / 2, None, None]
    summary = summarise(records, "fake")
    assert {t: v["accuracy"] for t, v in summary["per_task"].items()} == {
        "coverage_percentage": 50.0, "boundary_detection": 100.0, "distance_measurement": 0.0,
        "comparative_area": 100.0}
    assert summary["macro_accuracy"] == 62.5 and summary["micro_accuracy"] == 60.0
    third = (1.0 + grass_iou) / 2
    assert summary["iou"]["mean"] == pytest.approx((1.0 + 0.0 + third) / 3, abs=1e-15)
    assert summary["iou"]["mean_correct"] == pytest.approx((1.0 + third) / 2, abs=1e-15)
    assert summary["iou"]["mean_incorrect"] == 0.0
    assert summary["iou"]["pearson_r"] == pytest.approx(statistics.correlation([1.0, 0.0, third], [1, 0, 1]),
                                                        abs=1e-12)
    assert summary["unanswered"] == {"no option letter in the response": 1}
    table = markdown(summary)
    assert "| Model | CA | CR | BRD | DM | Avg. | mIoU |" in table  # the paper's task order
    assert "| fake | 50.0 | 100.0 | 100.0 | 0.0 | 62.5 |" in table


def test_resume_skips_scored_samples_and_drops_a_torn_line(official, truth, tmp_path):
    results = tmp_path / "results.jsonl"
    first = FakeAnswerer(truth)
    assert len(evaluate(official, first, results, limit=2)) == 2 and len(first.prompts) == 2
    with open(results, "a") as out:
        out.write('{"id": "img_2.png", "torn')  # an interrupted write
    second = FakeAnswerer(truth)
    second.stream = second.stream[2:]
    records = evaluate(official, second, results)
    assert len(second.prompts) == 3 and len(records) == 5
    assert len(load_results(results)) == 5 and results.read_text().count("\n") == 5
    third = FakeAnswerer(truth)
    assert [r["correct"] for r in evaluate(official, third, results)] == [True, False, True, False, True]
    assert third.prompts == []


def test_task_selection(official, truth, tmp_path):
    fake = FakeAnswerer(truth)
    fake.stream = [fake.stream[2]]
    records = evaluate(official, fake, tmp_path / "r.jsonl", tasks=["BRD"])
    assert [r["task_type"] for r in records] == ["boundary_detection"]
    with pytest.raises(InputError, match="no sample of BCE"):
        evaluate(official, fake, tmp_path / "r2.jsonl", tasks=["BCE"])


def test_malformed_rows_name_the_row(truth, tmp_path):
    table = _rows(truth, True)
    bad = table.set_column(3, "answer", pa.array(["A", "E", "A", "B", "B"]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"row 1: answer 'E' is not one of the candidates"):
        read_bench(tmp_path / "bad.parquet")
    bad = table.set_column(2, "candidates", pa.array(["{}", "{", "{}", "{}", "{}"]))
    pq.write_table(bad, tmp_path / "bad2.parquet")
    with pytest.raises(InputError, match="row 0: candidates need 2 to 4 options"):
        read_bench(tmp_path / "bad2.parquet")
    pq.write_table(table.drop(["task_type"]), tmp_path / "bad3.parquet")
    with pytest.raises(InputError, match="missing column.*task_type"):
        read_bench(tmp_path / "bad3.parquet")
    images_ = table.column("image").to_pylist()
    images_[4] = {"bytes": b"", "path": "x.png"}
    pq.write_table(table.set_column(0, "image", pa.array(images_, table.schema.field("image").type)),
                   tmp_path / "bad4.parquet")
    with pytest.raises(InputError, match="row 4: image has no image bytes"):
        read_bench(tmp_path / "bad4.parquet")


def test_answer_extraction_protocol():
    assert extract_letter("<think>A or B?</think><answer>C</answer>") == ("C", "answer-tag")
    assert extract_letter("<answer> (d) </answer>") == ("D", "answer-tag")
    assert extract_letter("<answer>forest</answer> so A") == (None, "none")  # a tag without a letter is wrong
    assert extract_letter("<think>Option A looks wrong</think> The answer is B.") == ("B", "first-letter")
    assert extract_letter("a forest covers it") == (None, "none")
    assert extract_letter("<answer>D</answer>", letters="AB") == (None, "none")
    # Exactly the official bench script's text: no extra guidance line after the options.
    assert format_prompt("Q?", {"B": "no", "A": "yes"}) == SYSTEM + "<image>\nQ?\nA. yes\nB. no\n"


def test_spectral_backend_on_a_built_bench(tmp_path):
    from tscope.bench.build import build_bench
    from tscope.data.synth import Sources

    bench = tmp_path / "b.parquet"
    build_bench([EXAMPLES / "slovenia_s2.tif"], bench, Sources.open(LULC), tasks="CA,CR", seed=0)
    pair = tmp_path / "p.parquet"
    build_bench([EXAMPLES / "joplin_pre.tif"], pair, Sources.open(None, None, DATA / "joplin_xbd_fixture.json"),
                post=EXAMPLES / "joplin_post.tif")
    answerer = SpectralAnswerer(tmp_path)
    records = evaluate(bench, answerer, tmp_path / "r.jsonl")
    assert [r["task_type"] for r in records] == ["coverage_percentage", "comparative_area"]
    for r, s in zip(records, read_bench(bench), strict=True):
        assert r["reason"] is None and r["predicted_answer"] in s.candidates and 0.0 <= r["iou"] <= 1.0
    # CR on the clear scene: the spectral forest outweighs its grassland, as the labels say.
    assert records[1]["correct"]
    (bce,) = evaluate(pair, answerer, tmp_path / "r2.jsonl")
    assert not bce["correct"] and "not per-building damage" in bce["reason"]


def test_cli_eval_resumes_and_reports(official, tmp_path):
    out = tmp_path / "report"
    done = run_cli("bench", "eval", official, "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # The official rows have no georeferenced source: the spectral backend reads their true-colour PNG,
    # which has no near-infrared band for forest or grassland and no ground size for metres.
    assert summary["correct"] == 0 and summary["unanswered"] == {
        "spectral backend: forest needs nir; this scene has blue, green, red": 2,
        "spectral backend: grassland needs nir; this scene has blue, green, red": 2,
        "no ground size (a plain image without a georeferenced source) for options in ground units": 1}
    assert (out / "report.md").exists() and json.loads((out / "report.json").read_text())["samples"] == 5
    before = (out / "results.jsonl").read_text()
    again = run_cli("bench", "eval", official, "--out", out, "--tasks", "CA", "--limit", "1")
    assert again.returncode == 0 and (out / "results.jsonl").read_text() == before
    assert "CA" in again.stdout and "(0/1)" in again.stdout
    missing = run_cli("bench", "eval", tmp_path / "nope.parquet")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"tscope: error: {tmp_path / 'nope.parquet'}: no such bench file"
    model = run_cli("bench", "eval", official, "--backend", "terrascope")
    assert model.returncode == 2 and "--model" in model.stderr


def test_a_failing_answerer_stops_with_the_row_and_keeps_scored_samples(official, truth, tmp_path):
    from tscope.errors import RuntimeFailure

    class Failing(FakeAnswerer):
        def chat(self, pictures, prompt):
            if len(self.prompts) == 2:
                raise MemoryError("out of memory")
            return super().chat(pictures, prompt)

    results = tmp_path / "r.jsonl"
    with pytest.raises(RuntimeFailure, match=r"row 2 \(row2:img_2.png\): the answerer failed: out of memory"):
        evaluate(official, Failing(truth), results)
    assert [r["id"] for r in load_results(results)] == ["row0:img_0.png", "row1:img_1.png"]


def test_results_of_another_bench_with_the_same_ids_are_not_reused(official, truth, tmp_path):
    results = tmp_path / "results.jsonl"
    first = FakeAnswerer(truth)
    evaluate(official, first, results)
    # The same ids with other questions (a bench rebuilt with another seed): every row is asked again.
    table = pq.read_table(official)
    questions = [q + " (rebuilt)" for q in table.column("question").to_pylist()]
    rebuilt = tmp_path / "rebuilt.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("question"), "question", pa.array(questions)),
                   rebuilt)
    second = FakeAnswerer(truth)
    records = evaluate(rebuilt, second, results)
    assert len(second.prompts) == len(records) == 5
    assert all(r["question"].endswith("(rebuilt)") for r in records)


def test_spectral_backend_answers_png_only_rows_from_the_image(truth, tmp_path):
    # Rows of the official release carry only the PNG: the spectral backend answers them as `tscope ask`
    # answers that PNG (in pixels and percentages), instead of marking them unanswerable.
    _, _, _, png = truth
    (tmp_path / "img.png").write_bytes(png)
    asked = run_cli("ask", tmp_path / "img.png", "What percentage is vegetation?", "--out", tmp_path / "ask",
                    "--json", "-q")
    assert asked.returncode == 0, asked.stderr
    share = json.loads(asked.stdout)["numbers"]["coverage_percent"]["value"]
    options = {"A": f"{share + 30:.1f}%", "B": f"{share:.1f}%", "C": f"{max(share - 30, 0):.1f}%"}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": png, "path": "../escape.png"}] * 2, image_type),
        "question": ["What percentage of the image is covered by vegetation?", "Is there any vegetation?"],
        "candidates": [json.dumps(options), json.dumps({"A": "Yes", "B": "No"})],
        "answer": ["B", "A"],
        "task_type": ["coverage_percentage", "object_existence"],
    })
    bench = tmp_path / "png_only.parquet"
    pq.write_table(table, bench)
    records = evaluate(bench, SpectralAnswerer(tmp_path), tmp_path / "r.jsonl")
    assert [r["reason"] for r in records] == [None, None]
    assert [r["correct"] for r in records] == [True, True]
    assert f"coverage {share:.2f}%" in records[0]["response"]
    assert not (tmp_path.parent / "escape.png").exists()
