"""Free-form and multiple-choice questions go to the TerraScope model as written (tiny random checkpoint)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

import tiny_terrascope as tt  # noqa: E402

from tests.conftest import ROOT, run_cli  # noqa: E402
from tscope.model.prompt import user_text  # noqa: E402
from tscope.reason.query import NotMeasurable, choice_letters, parse_query  # noqa: E402


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    return tt.write_native(tmp_path_factory.mktemp("ckpt") / "native", max_new_tokens=16)


def _options(native: Path, **extra) -> dict:
    return dict(model=native, dtype="fp32", device="cpu", **extra)


def test_questions_no_measure_answers_are_told_apart():
    for question in ("Which buildings show roof damage?", "Describe the scene.",
                     "What is not forest?", "How much forest?\nA. 10%\nB. 50%\nC. 90%"):
        with pytest.raises(NotMeasurable):
            parse_query(question)
    assert choice_letters("Q?\nA. yes\nB. no\n") == "AB" and choice_letters("A. only one") == ""
    assert parse_query("What percentage of the image is covered by forest?").task == "coverage"


def test_free_question_on_a_geotiff_is_answered_by_the_model(native, slovenia, tmp_path):
    from tscope.ask import ask

    question = "Which buildings show roof damage?"
    trace = ask([slovenia], question, backend="terrascope", backend_options=_options(native), out=tmp_path / "o")
    assert trace.query.task == "free" and trace.answer == trace.model_answer
    assert any("full resolution" in note for note in trace.notes)
    data = json.loads((tmp_path / "o" / "answer.json").read_text())
    assert data["query"]["task"] == "free" and data["model_answer"] == trace.answer
    assert len(trace.masks) == trace.numbers["seg_tokens"].value
    with rasterio.open(slovenia) as src:
        for mask_id, mask in trace.masks.items():
            assert mask.grid.shape == (src.height, src.width) and mask.grid.transform == src.transform
            with rasterio.open(tmp_path / "o" / "masks" / f"{mask_id}.tif") as cog:
                assert cog.crs == src.crs and cog.transform == src.transform
    assert [s.mask for s in trace.steps if s.mask] == list(trace.masks)


def _scripted(monkeypatch, reply: str, seen: list[str]):
    from tscope.model.interleave import Generation

    def scripted(model, tokenizer, images, text, max_new_tokens=None, sar=None, prepared=None, override=None):
        seen.append(text)
        return Generation(text=reply, token_ids=tokenizer.encode(reply, add_special_tokens=False))

    tt.script_model(monkeypatch, scripted)


def test_multiple_choice_text_is_passed_through_and_the_letter_reported(native, slovenia, tmp_path, monkeypatch):
    from tscope.ask import ask

    seen: list[str] = []
    _scripted(monkeypatch, "<think>Mostly trees.</think><answer>B</answer>", seen)
    question = "How much of the image is forest?\nA. 10%\nB. 75%\nC. 95%"
    trace = ask([slovenia], question, backend="terrascope", backend_options=_options(native), out=tmp_path / "o")
    assert seen == [user_text(question)]  # exactly as written, after the release's system text
    assert trace.choice == "B" and trace.answer == "B"
    data = json.loads((tmp_path / "o" / "answer.json").read_text())
    assert data["choice"] == "B"
    assert "**Chosen option:** B" in (tmp_path / "o" / "answer.md").read_text()


def test_a_scene_larger_than_one_model_input_is_answered_on_an_overview(native, joplin_pair, tmp_path):
    from tscope.ask import ask

    before, _ = joplin_pair  # 1024 x 512 px: more than the tiny model's 4 tiles of 64 px
    trace = ask([before], "Describe the damage.", backend="terrascope",
                backend_options=_options(native, scene_tile=512, tile_overlap=0), out=tmp_path / "o")
    assert any("overview decimated 8x to 128 x 64 px" in note for note in trace.notes)
    assert len(trace.tiles) == 2 and all("answer" in tile for tile in trace.tiles)
    with rasterio.open(before) as src:
        for mask in trace.masks.values():
            assert mask.grid.shape == (src.height, src.width) and mask.grid.transform == src.transform
    small = ask([before], "Describe the damage.", backend="terrascope",
                backend_options=_options(native, scene_tile=512, tile_overlap=0, tile_answers=1), write=False)
    assert not small.tiles and any("per-tile answers were not computed" in note for note in small.notes)


def test_spectral_backend_refuses_free_questions_in_one_line(slovenia):
    result = run_cli("ask", slovenia, "Which buildings show roof damage?", cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tscope: error:")
    assert "measurable questions only" in lines[0] and "--backend terrascope" in lines[0]


def test_measured_answers_carry_the_model_answer_and_disagreements(native, slovenia, tmp_path, monkeypatch):
    from tscope.ask import ask

    seen: list[str] = []
    _scripted(monkeypatch, "<think>Hardly any.</think><answer>No</answer>", seen)
    trace = ask([slovenia], "Is there any forest?", backend="terrascope",
                backend_options=_options(native, scene_tile=64, tile_overlap=16), out=tmp_path / "o")
    data = json.loads((tmp_path / "o" / "answer.json").read_text())
    assert data["model_answer"] == "No"
    # Every tile's check answered no, so no forest was measured: the model agrees with the measure.
    assert trace.numbers["present"].value is False
    assert not any("disagrees" in note for note in trace.notes)
    seen.clear()
    _scripted(monkeypatch, "<answer>Yes</answer>", seen)
    trace = ask([slovenia], "What percentage of the image is covered by forest?", backend="terrascope",
                backend_options=_options(native, scene_tile=64, tile_overlap=16), write=False)
    assert trace.model_answer == "Yes"  # no number in it: nothing to compare
    _scripted(monkeypatch, "<answer>40%</answer>", seen)
    trace = ask([slovenia], "What percentage of the image is covered by forest?", backend="terrascope",
                backend_options=_options(native, scene_tile=64, tile_overlap=16), write=False)
    assert any("disagrees with the measured coverage_percent 0" in note for note in trace.notes)
    assert np.isclose(trace.numbers["coverage_percent"].value, 0.0)


def test_free_question_on_a_plain_png_answers_with_masks_in_pixels(native, tmp_path):
    from PIL import Image

    from tscope.ask import ask

    image = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "plain.png")
    trace = ask([tmp_path / "plain.png"], "Which buildings show roof damage?", backend="terrascope",
                backend_options=_options(native), out=tmp_path / "o")
    assert trace.query.task == "free" and trace.answer == trace.model_answer
    assert trace.masks and all(m.grid.shape == (90, 120) and m.grid.crs is None for m in trace.masks.values())
    for mask_id in trace.masks:
        with rasterio.open(tmp_path / "o" / "masks" / f"{mask_id}.tif") as cog:
            assert cog.crs is None and (cog.height, cog.width) == (90, 120)
    assert not (tmp_path / "o" / "masks.geojson").exists()
    assert not any(note.startswith("masks.geojson") for note in trace.notes)
