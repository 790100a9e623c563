"""TerraScope checkpoints: released layout -> load -> convert -> reload identically; info; errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

import tiny_terrascope as tt  # noqa: E402

from tests.conftest import run_cli  # noqa: E402
from tscope.errors import InputError  # noqa: E402
from tscope.model.keys import key_pattern, native_to_official, official_to_native  # noqa: E402
from tscope.model.loading import hiera_large_sam2, load_terrascope  # noqa: E402

KEYS = Path(__file__).parent / "data" / "terrascope_official_keys.txt"


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    return tt.write_released(tmp_path_factory.mktemp("ckpt") / "released")


def _published() -> dict[str, list[int]]:
    out = {}
    for line in KEYS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _count, shape = line.split("\t")
        out[key] = json.loads(shape)
    return out


def test_sam2_hiera_large_keys_match_the_published_release_layout():
    from transformers import Sam2Config, Sam2Model

    with torch.device("meta"):
        sam = Sam2Model(Sam2Config(**hiera_large_sam2()))
    native = {f"sam2.{k}": v for k, v in sam.state_dict().items()}
    official = native_to_official(native)
    published = {k: v for k, v in _published().items() if k.startswith("grounding_encoder.")}
    ours = {}
    for key, value in official.items():
        ours.setdefault(key_pattern(key), list(value.shape))
    # Every SAM-2 tensor we need exists in the release with the same shape ...
    for pattern, shape in ours.items():
        assert pattern in published, pattern
        assert published[pattern] == shape, pattern
    # ... and every released SAM-2 tensor is either used or a video-memory module we drop.
    unused = set(published) - set(ours)
    state = {p.replace("{i}", "0"): torch.zeros(1) for p in unused}
    remapped, dropped = official_to_native(state)
    assert not remapped and len(dropped) == len(unused)


def test_internvl_keys_match_the_published_release_layout():
    built, _ = tt.build_model()
    official = {key_pattern(k): list(v.shape) for k, v in native_to_official(built.state_dict()).items()}
    published = {k: v for k, v in _published().items() if not k.startswith("grounding_encoder.")}
    assert {re.sub(r"^(mlp1)\.\{i\}", r"\1.{i}", k) for k in official if not k.startswith("grounding")} \
        == set(published)


def test_released_layout_loads_converts_and_reloads_identically(released, tmp_path):
    a = load_terrascope(released, dtype="fp32", device="cpu")
    assert a.layout == "released"
    result = run_cli("model", "convert", released, tmp_path / "native")
    assert result.returncode == 0, result.stderr
    b = load_terrascope(tmp_path / "native", dtype="fp32", device="cpu")
    assert b.layout == "native"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert a.tokenizer.convert_tokens_to_ids("[SEG]") == b.tokenizer.convert_tokens_to_ids("[SEG]")
    info = run_cli("model", "info", tmp_path / "native", "--json")
    data = json.loads(info.stdout)
    assert data["layout"] == "native"
    assert data["parameters"]["seg_head"] == sum(v.numel() for k, v in sb.items() if k.startswith("seg_head."))
    assert data["parameters"]["vision_tower"] == sum(v.numel() for v in b.model.vision_tower.state_dict().values())
    assert data["quantisation"]["skip_modules"] == ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


def test_missing_weights_are_named(released, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in released.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    shard = broken / "model-00002-of-00002.safetensors"
    state = load_file(str(shard))
    victim = sorted(k for k in state if k.startswith("text_hidden_fcs") or "norm" in k)[0]
    del state[victim]
    save_file(state, str(shard))
    with pytest.raises(InputError, match="weights missing for"):
        load_terrascope(broken, dtype="fp32", device="cpu")
    (broken / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(InputError, match="missing weight shards"):
        load_terrascope(broken, dtype="fp32", device="cpu")


def test_bad_model_dirs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        load_terrascope(tmp_path / "nope")
    with pytest.raises(InputError, match="no terrascope.json"):
        load_terrascope(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InputError, match="not a TerraScope checkpoint"):
        load_terrascope(tmp_path)
    result = run_cli("ask", "examples/slovenia_s2.tif", "What % is forest?", "--backend", "terrascope",
                     "--model", tmp_path, cwd=Path(__file__).parents[1])
    assert result.returncode == 2 and "not a TerraScope checkpoint" in result.stderr


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_quantised_load_keeps_vision_sam_and_seg_head_unquantised(tmp_path, quant):
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("accelerate")
    from tscope.model.quantize import quantized_modules

    path = tt.write_native(tmp_path / "native")
    try:
        loaded = load_terrascope(path, dtype="fp32" if quant == "8bit" else "bf16", device="cpu", quant=quant)
    except (RuntimeError, ImportError) as exc:  # bitsandbytes builds without a CPU backend
        pytest.skip(f"bitsandbytes cannot {quant} on this CPU: {exc}")
    names = quantized_modules(loaded.model)
    assert names and all(n.startswith("internvl.model.language_model.") for n in names)
    assert not quantized_modules(loaded.model.vision_tower) and not quantized_modules(loaded.model.sam2)
    import numpy as np

    from tscope.model.interleave import generate
    from tscope.model.prompt import user_text

    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    text = user_text("Where is the water?", loaded.model.config.system_prompt)
    gen = generate(loaded.model, loaded.tokenizer, [image], text, max_new_tokens=4)
    assert gen.token_ids and gen.stop in {"eos", "stop-id", "max_new_tokens", "max_segs"}
