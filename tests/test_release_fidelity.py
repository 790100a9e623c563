"""Release fidelity: each way tscope's model path once differed from the official TerraScope code.

The end-to-end comparison with the official code's own outputs is ``test_official_reference.py``;
these tests pin each mechanism on its own, on tiny random models.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

import tiny_terrascope as tt  # noqa: E402

from tscope.errors import InputError  # noqa: E402
from tscope.model.config import TerraScopeConfig  # noqa: E402
from tscope.model.images import model_tiles  # noqa: E402
from tscope.model.interleave import generate  # noqa: E402
from tscope.model.loading import load_terrascope  # noqa: E402
from tscope.model.prompt import user_text  # noqa: E402


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    return tt.write_released(tmp_path_factory.mktemp("ckpt") / "released")


@pytest.fixture(scope="module")
def tiny():
    return tt.build_model(seed=5)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_rope_theta_of_the_release_reaches_the_language_model(released):
    loaded = load_terrascope(released, dtype="fp32", device="cpu")
    text = loaded.model.internvl.config.text_config
    assert text.rope_parameters["rope_theta"] == 1_000_000.0
    rotary = loaded.model.language_model.rotary_emb
    dim = text.hidden_size // text.num_attention_heads
    expected = 1.0 / (1_000_000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    assert torch.allclose(rotary.inv_freq.float(), expected)


def test_config_keys_the_loader_does_not_map_are_refused(released, tmp_path):
    for section, key in (("llm_config", "attn_logit_softcapping"), ("vision_config", "use_rel_pos"),
                         (None, "vision_select_strategy")):
        copy = tmp_path / f"copy-{key}"
        shutil.copytree(released, copy)
        config = json.loads((copy / "config.json").read_text())
        (config[section] if section else config)[key] = 1.0
        (copy / "config.json").write_text(json.dumps(config))
        with pytest.raises(InputError, match=f"does not map: {key}"):
            load_terrascope(copy, dtype="fp32", device="cpu")


def test_pairs_are_fed_as_one_tile_each_single_images_tiled():
    (tiles, layout), = model_tiles([_image(448, 900)], 448, 16)
    assert (layout.cols, layout.rows, layout.thumbnail, tiles.shape[0]) == (2, 1, True, 3)
    pair = model_tiles([_image(448, 900), _image(300, 500, 1)], 448, 16)
    assert [(t.shape[0], lay.tokens) for t, lay in pair] == [(1, 256), (1, 256)]


def test_masks_reach_image_size_through_sam2_input_resolution(tiny):
    import torch.nn.functional as F

    model, _ = tiny
    logits = torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(1)) * 4
    got = model.masks_from_logits(logits, (45, 45))[0]
    side = model.config.sam_image_size
    video = F.interpolate(logits[None], size=(side, side), mode="bilinear", align_corners=False)
    expected = F.interpolate(video, size=(45, 45), mode="bilinear", align_corners=False)[0, 0].sigmoid() > 0.5
    direct = F.interpolate(logits[None], size=(45, 45), mode="bilinear", align_corners=False)[0, 0].sigmoid() > 0.5
    assert np.array_equal(got, expected.numpy())
    assert not np.array_equal(got, direct.numpy())  # the one-step resize is a different mask


def _forced(model, tokenizer, schedule: dict[int, int], text: str = "Where is the water?", n_images: int = 1,
            **kwargs):
    images = [_image(64, 64, i) for i in range(n_images)]
    plain = tokenizer.convert_tokens_to_ids("a") if "a" in tokenizer.get_vocab() else 65

    def override(step: int, greedy: int) -> int:
        return schedule.get(step, plain)

    return generate(model, tokenizer, images, user_text(text, model.config.system_prompt), override=override,
                    **kwargs)


def test_stopping_mirrors_the_release(tiny):
    model, tok = tiny
    seg, eos = tok.convert_tokens_to_ids("[SEG]"), tok.eos_token_id
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    # <|endoftext|> is not a stop token of the official loops; the eos token (<|im_end|>) is, and is recorded.
    gen = _forced(model, tok, {2: endoftext, 5: eos}, max_new_tokens=64)
    assert gen.token_ids[2] == endoftext and gen.token_ids[-1] == eos and len(gen.token_ids) == 6
    assert gen.stop == "eos"
    # The release's hard-coded stop ids: one image / a pair each have their own set.
    answer_end = tok.convert_tokens_to_ids("</answer>")
    saved = model.config.tokens
    try:
        model.config.tokens = type(saved)(release_stop_single=(answer_end,), release_stop_pair=(seg,))
        gen = _forced(model, tok, {3: answer_end}, max_new_tokens=64)
        assert gen.stop == "stop-id" and len(gen.token_ids) == 4
        gen = _forced(model, tok, {1: seg}, n_images=2, max_new_tokens=64)
        assert gen.stop == "stop-id" and not gen.masks
    finally:
        model.config.tokens = saved
    # At most 20 [SEG]: generation ends right after the 20th one's region tokens are fed.
    gen = _forced(model, tok, {i: seg for i in range(100)}, max_new_tokens=10_000)
    assert gen.stop == "max_segs" and len(gen.masks) == 20 and len(gen.token_ids) == 20
    # The length limit counts region tokens too, as the release's max_length does.
    gen = _forced(model, tok, {0: seg}, max_new_tokens=12)
    assert gen.stop == "max_new_tokens" and len(gen.all_ids) == 12
    assert len(gen.token_ids) == 12 - len(gen.regions[0])


def test_release_defaults():
    config = TerraScopeConfig(internvl={}, sam2={})
    assert config.max_new_tokens == 8192 and config.max_segs == 20 and config.frame_rule == "alternate"
    assert (config.region.rule, config.region.max_tokens) == ("release", 8)
    assert config.tokens.release_stop_single == (151682,) and config.tokens.release_stop_pair == (151682, 151684)


def test_native_configs_written_before_release_fidelity_still_load():
    old = {"format": "tscope-terrascope", "internvl": {}, "sam2": {}, "max_new_tokens": 512,
           "tokens": {"seg": "[SEG]", "stop": ["<|im_end|>", "<|endoftext|>"]},
           "region": {"rule": "nearest", "coverage_threshold": 0.5, "max_tokens": 8, "sampling": "uniform"}}
    config = TerraScopeConfig.from_dict(old)
    assert config.region.rule == "release" and config.max_new_tokens == 512


def test_model_package_exports_the_generate_function():
    import importlib

    import tscope.model
    import tscope.model.interleave  # noqa: F401  (a loaded submodule must not shadow the function)

    importlib.reload(tscope.model)
    from tscope.model import generate as exported

    assert callable(exported) and exported.__name__ == "generate"


def test_a_tile_gains_a_class_mask_only_when_the_model_affirms_it(slovenia, tmp_path, monkeypatch):
    """No forced [SEG]: a class the answer did not segment is asked about; "no" leaves the tile without it."""
    from tscope.ask import ask
    from tscope.model.interleave import Generation

    native = tt.write_native(tmp_path / "native")
    script: list[tuple[str, str, bool]] = []  # (prompt, what the model says, whether it segments)

    def scripted(model, tokenizer, images, text, max_new_tokens=None, sar=None, prepared=None, override=None):
        reply = "<think>I look.</think><answer>unsure</answer>"
        segments = False
        if "Is there any forest" in text:
            reply, segments = ("<answer>Yes</answer>", False) if affirm else ("<answer>No</answer>", False)
        elif "Please segment the forest" in text:
            reply, segments = "<answer>Sure, forest [SEG].</answer>", True
        script.append((text.rsplit("\n", 1)[-1], reply, segments))
        ids = tokenizer.encode(reply, add_special_tokens=False)
        gen = Generation(text=reply, token_ids=ids)
        if segments:
            gen.seg_steps, gen.frames = [ids.index(tokenizer.convert_tokens_to_ids("[SEG]"))], [0]
            gen.masks = [np.ones(images[0].shape[:2], bool)]
        return gen

    tt.script_model(monkeypatch, scripted)
    options = dict(model=native, dtype="fp32", device="cpu", tile_overlap=16, scene_tile=64)
    question = "What percentage of the image is covered by forest?"
    affirm = False
    trace = ask([slovenia], question, backend="terrascope", backend_options=options, out=tmp_path / "no")
    assert trace.numbers["coverage_percent"].value == 0.0  # a forced [SEG] would have drawn forest here
    assert all(t["checks"] == [{"class": "forest", "frame": "t1", "asked": "Is there any forest in the image?",
                                "answer": "No", "affirmed": False, "masks": 0}] for t in trace.tiles)
    assert not any("Please segment" in prompt for prompt, _, _ in script)
    affirm = True
    trace = ask([slovenia], question, backend="terrascope", backend_options=options, out=tmp_path / "yes")
    assert trace.numbers["coverage_percent"].value == pytest.approx(100.0)
    assert all(t["checks"][0]["affirmed"] and t["checks"][0]["masks"] == 1 for t in trace.tiles)


def test_model_info_names_the_release_stop_ids(tmp_path):
    from tscope.model.loading import stop_tokens

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sa2va_chat"}))
    added = [{"id": 151677, "content": "<REGION>"}, {"id": 151682, "content": "<|end|>"}]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": added, "model": {"vocab": {}}}))
    assert stop_tokens(tmp_path) == {"single": {"151682": "<|end|>"}, "pair": {"151682": "<|end|>", "151684": None}}


def test_sam2_pixels_are_computed_in_the_model_dtype_as_the_release_does(tiny):
    model, _ = tiny
    image = _image(50, 70, 3)
    fp32 = model.sam_pixels(image)
    bf16 = model.sam_pixels(image, torch.bfloat16)
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    # The release: uint8 -> bf16, / 255, -= mean, /= std, every step rounded to bf16 -- not the fp32
    # result rounded once at the end.
    once = fp32.to(torch.bfloat16)
    assert not torch.equal(bf16, once)
    assert (bf16.float() - fp32).abs().max() < 0.05
    # fp32: the constants are bf16-rounded (the release builds them in bf16 even then).
    mean = torch.tensor((0.485, 0.456, 0.406)).to(torch.bfloat16).float()[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225)).to(torch.bfloat16).float()[:, None, None]
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((128, 128), Image.BICUBIC)).astype(np.float32) / 255.0
    assert torch.equal(fp32[0], (torch.from_numpy(resized).permute(2, 0, 1) - mean) / std)
