"""Loading and saving TerraScope checkpoints (safetensors only; no remote code, no pickle).

Two layouts are accepted by :func:`load_terrascope`:

(a) **released** -- a local copy of ``sy1998/TerraScope``: ``config.json`` with ``model_type:
    sa2va_chat`` (``llm_config``, ``vision_config``, ``template``, ``force_image_size``,
    ``downsample_ratio``, ``ps_version``...), ``*.safetensors`` (optionally sharded with an index) in
    the official key layout, and the tokenizer files. Keys are remapped at load time
    (:mod:`tscope.model.keys`). SAM-2 is Hiera-L as released; a ``sam2_config`` entry in config.json
    (a tscope extension, used by tests' tiny checkpoints) overrides it.
(b) **native** -- what :func:`save_terrascope` / ``tscope model convert`` write::

        DIR/terrascope.json        TerraScopeConfig (format: tscope-terrascope)
        DIR/internvl/              InternVLForConditionalGeneration.save_pretrained (safetensors)
        DIR/sam2/                  Sam2Model.save_pretrained (safetensors)
        DIR/seg_head.safetensors   the seg head (text_hidden_fcs)
        DIR/tokenizer*.json ...    the tokenizer with the special tokens
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tscope.errors import InputError
from tscope.geo.writers import atomic_dir
from tscope.model.config import NATIVE_CONFIG, NATIVE_FORMAT, TerraScopeConfig, TokenNames

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
HIERA_L = {
    "model_type": "sam2_hiera_det_model", "hidden_size": 144, "blocks_per_stage": [2, 6, 36, 4],
    "embed_dim_per_stage": [144, 288, 576, 1152],
    "num_attention_heads_per_stage": [2, 4, 8, 16], "global_attention_blocks": [23, 33, 43],
    "window_size_per_stage": [8, 4, 16, 8], "window_positional_embedding_background_size": [7, 7],
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")


def hiera_large_sam2() -> dict[str, Any]:
    """Sam2Config (as a dict) of SAM-2 Hiera-L, the grounding model of the release."""
    return {"vision_config": {"backbone_config": dict(HIERA_L), "backbone_channel_list": [1152, 576, 288, 144]}}


def detect_layout(path: Path) -> str:
    """``native`` or ``released``; InputError naming what is missing otherwise."""
    if not path.is_dir():
        raise InputError(f"--model {path}: not a folder")
    if (path / NATIVE_CONFIG).exists():
        return "native"
    config = path / "config.json"
    if config.exists():
        model_type = read_json_object(config).get("model_type")
        if model_type == "sa2va_chat":
            return "released"
        raise InputError(f"{config}: model_type {model_type!r} is not a TerraScope checkpoint (want sa2va_chat)")
    raise InputError(f"--model {path}: no {NATIVE_CONFIG} (tscope layout) and no config.json (released layout)")


# Keys every transformers 4.x ``PretrainedConfig.to_dict()`` writes: bookkeeping and generation defaults
# that do not enter the forward computation (the official loop sets its own generation options).
_GENERIC_KEYS = frozenset({
    "_name_or_path", "_commit_hash", "_attn_implementation_autoset", "transformers_version", "architectures",
    "auto_map", "model_type", "torch_dtype", "dtype", "use_bfloat16", "return_dict", "output_hidden_states",
    "output_attentions", "torchscript", "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward",
    "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size", "add_cross_attention",
    "tie_encoder_decoder", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "finetuning_task", "id2label", "label2id", "tokenizer_class", "prefix",
    "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "problem_type", "use_cache", "initializer_range", "attn_implementation",
    "tie_word_embeddings",
})
# Qwen2 (llm_config) keys passed to transformers 5's Qwen2Config as they are; rope_theta / rope_scaling
# become its rope_parameters.
_LLM_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "use_sliding_window",
             "sliding_window", "max_window_layers", "tie_word_embeddings", "attention_dropout")
# InternViT (vision_config) keys -> transformers 5's InternVLVisionConfig.
_VISION_KEYS = {"hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
                "num_attention_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
                "image_size": "image_size", "patch_size": "patch_size", "num_channels": "num_channels",
                "qkv_bias": "attention_bias", "qk_normalization": "use_qk_norm", "layer_norm_eps": "layer_norm_eps",
                "norm_type": "norm_type", "hidden_act": "hidden_act", "attention_dropout": "attention_dropout",
                "dropout": "hidden_dropout_prob"}
# InternViT keys that only matter in training or for other kernels.
_VISION_INERT = frozenset({"drop_path_rate", "initializer_factor", "use_flash_attn"})
# Top-level sa2va_chat keys. The release's inference code hard-codes its tiling (at most 12 tiles of 448 px
# plus a thumbnail, patch 14, ratio 0.5), so dynamic_image_size / use_thumbnail / min/max_dynamic_patch,
# which only drove training, are read but not used; LoRA flags describe weights already merged.
_TOP_USED = frozenset({"llm_config", "vision_config", "template", "force_image_size", "downsample_ratio",
                       "ps_version", "select_layer", "sam2_config"})
_TOP_INERT = frozenset({"use_backbone_lora", "use_llm_lora", "pad2square", "dynamic_image_size", "use_thumbnail",
                        "min_dynamic_patch", "max_dynamic_patch", "hidden_size", "tie_word_embeddings"})


def _unmapped(section: str, data: dict, known: set | frozenset, path: Path) -> None:
    """Refuse keys the mapping does not know: a key silently dropped can change the model's arithmetic."""
    unknown = sorted(set(data) - set(known) - _GENERIC_KEYS)
    if unknown:
        raise InputError(f"{path / 'config.json'}: {section} has keys tscope does not map: {', '.join(unknown)}"
                         " (refusing to guess how they change the model)")


def qwen2_config(llm: dict, path: Path) -> dict:
    """The released ``llm_config`` -> transformers 5 ``Qwen2Config`` arguments (``rope_parameters``)."""
    _unmapped("llm_config", llm, {*_LLM_KEYS, "rope_theta", "rope_scaling"}, path)
    arch = (llm.get("architectures") or ["Qwen2ForCausalLM"])[0]
    if arch != "Qwen2ForCausalLM":
        raise InputError(f"{path / 'config.json'}: llm_config architecture {arch} is not supported (Qwen2 only)")
    if llm.get("use_sliding_window"):
        raise InputError(f"{path / 'config.json'}: llm_config.use_sliding_window is not supported")
    out = {k: llm[k] for k in _LLM_KEYS if k in llm}
    rope = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    scaling = llm.get("rope_scaling")
    if scaling:
        rope.update({k: v for k, v in scaling.items() if k != "type"}, rope_type=scaling.get("rope_type",
                                                                                               scaling.get("type")))
    out["rope_parameters"] = rope
    return out


def read_json_object(path: Path) -> dict:
    """A checkpoint's JSON file (config, index) as a dict; InputError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding ``folder``'s weights, checked without reading a tensor.

    Pickle files (``*.bin``, ``*.pt``) are never opened: a folder with only those is refused. An
    index (``*.safetensors.index.json``) must name shards that exist inside ``folder``: a shard path
    leading elsewhere (``../other``, ``/etc/...``) is refused, not followed.
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        hint = f" (found {', '.join(pickles)}: pickle checkpoints are refused; convert them to safetensors)" \
            if pickles else ""
        raise InputError(f"--model {folder}: no *.safetensors weights{hint}")
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if not indexes:
        return files
    wanted: set[str] = set()
    for index in indexes:
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError(f"{index}: no weight_map of tensor name -> shard file")
        wanted |= set(weight_map.values())
    root = folder.resolve()
    outside = [f for f in sorted(wanted) if Path(f).is_absolute() or (root / f).resolve().parent != root]
    if outside:
        raise InputError(f"{indexes[0]}: shard {outside[0]!r} is outside the checkpoint folder; refused")
    absent = [f for f in sorted(wanted) if not (folder / f).is_file()]
    if absent:
        raise InputError(f"--model {folder}: missing weight shards {', '.join(absent)}")
    return [folder / f for f in sorted(wanted)]


def load_safetensors(file: Path) -> dict:
    """The tensors of one safetensors file; a corrupt header is bad input naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{file}: not a valid safetensors file ({exc})") from None


def released_config(path: Path, tokenizer) -> TerraScopeConfig:
    """TerraScopeConfig from a released checkpoint's config.json (+ the tokenizer, for the image token id).

    Every key is either mapped or known not to change inference; any other key is refused."""
    raw = json.loads((path / "config.json").read_text())
    missing = [k for k in ("llm_config", "vision_config") if k not in raw]
    if missing:
        raise InputError(f"{path / 'config.json'}: missing {', '.join(missing)}")
    _unmapped("config.json", raw, _TOP_USED | _TOP_INERT, path)
    llm = qwen2_config(raw["llm_config"], path)
    vis = dict(raw["vision_config"])
    _unmapped("vision_config", vis, set(_VISION_KEYS) | _VISION_INERT, path)
    vision = {new: vis[old] for old, new in _VISION_KEYS.items() if old in vis}
    image_size = int(raw.get("force_image_size") or vis.get("image_size", 448))
    vision["image_size"] = image_size
    vision["use_absolute_position_embeddings"] = True
    vision["use_mean_pooling"] = True  # InternViT has no final norm: transformers then uses Identity
    if raw.get("ps_version", "v2") != "v2":
        raise InputError(f"{path}: ps_version {raw.get('ps_version')!r} is not supported (v2 only)")
    image_token = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    internvl = {
        "text_config": {**llm, "model_type": "qwen2"},
        "vision_config": {**vision, "model_type": "internvl_vision"},
        "image_token_id": int(image_token),
        "downsample_ratio": float(raw.get("downsample_ratio", 0.5)),
        "vision_feature_layer": int(raw.get("select_layer", -1)),
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": bool(llm.get("tie_word_embeddings", False)),
    }
    sam2 = raw.get("sam2_config") or hiera_large_sam2()
    sam_side = int(sam2.get("prompt_encoder_config", {}).get("image_size", 1024))
    if raw.get("template") not in (None, "qwen_chat", "qwen-chat"):
        raise InputError(f"{path}: template {raw.get('template')!r} is not supported (qwen_chat only)")
    return TerraScopeConfig(internvl=internvl, sam2=sam2, image_size=image_size, sam_image_size=sam_side)


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[dtype])


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device here")
    if not (device == "cpu" or device.startswith("cuda")):
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")
    return device


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        raise InputError(f"--model {path}: no tokenizer files (tokenizer.json or vocab.json + merges.txt)")
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        # transformers refuses custom code (auto_map) and unreadable files with these; both are the input's.
        raise InputError(f"--model {path}: cannot load the tokenizer: {' '.join(str(exc).split())[:300]}") from None


def read_safetensors(path: Path) -> dict:
    """All tensors of the checkpoint's safetensors files (sharded or not). Never unpickles anything."""
    state: dict = {}
    for file in weight_files(path):
        state.update(load_safetensors(file))
    return state


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    layout: str
    quant: str


def _check_keys(missing: list[str], unexpected: list[str], path: Path, tied: bool = False) -> None:
    # Tied embeddings and SAM-2's duplicated positional matrix may legitimately be absent.
    missing = [k for k in missing if k != "internvl.lm_head.weight" or not tied]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InputError(f"--model {path}: weights missing for {shown}")
    if unexpected:
        shown = ", ".join(unexpected[:10]) + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else "")
        raise InputError(f"--model {path}: weights that do not fit the architecture: {shown}")


def _build_from_state(config: TerraScopeConfig, state: dict, path: Path, torch_dtype):
    import torch

    from tscope.model.architecture import TerraScopeModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype if torch_dtype.is_floating_point else torch.float32)
    try:
        model = TerraScopeModel(config)
    finally:
        torch.set_default_dtype(previous)
    expected = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
                  if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if mismatched:
        raise InputError(f"--model {path}: weight shapes do not match the config: {'; '.join(mismatched[:5])}")
    result = model.load_state_dict(state, strict=False)
    _check_keys(list(result.missing_keys), list(result.unexpected_keys), path,
                tied=bool(config.internvl.get("tie_word_embeddings")))
    return model.to(torch_dtype)


QUANT_SCRATCH = "tscope-quant-"


@contextlib.contextmanager
def quant_scratch() -> Iterator[Path]:
    """A temporary folder for the remapped copy a quantised load of a released checkpoint needs.

    The copy is as large as the weights (about 16 GB for the 8B release), so one left by a killed run
    must not stay in /tmp for ever: each folder holds an exclusive ``flock`` on its ``.lock`` while in
    use (the kernel drops it when the process dies, SIGKILL included), and every quantised load first
    sweeps this user's scratch folders whose lock nobody holds.
    """
    root = Path(tempfile.gettempdir())
    for stale in root.glob(QUANT_SCRATCH + "*"):
        with contextlib.suppress(OSError):
            if stale.is_symlink() or stale.stat().st_uid != os.getuid():
                continue
            fd = os.open(stale / ".lock", os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its owner lives
                shutil.rmtree(stale, ignore_errors=True)
            finally:
                os.close(fd)
    tmp = Path(tempfile.mkdtemp(prefix=QUANT_SCRATCH))
    fd = os.open(tmp / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


def load_terrascope(path: str | Path, dtype: str = "bf16", device: str = "auto", quant: str = "none") -> Loaded:
    """Load a TerraScope checkpoint of either layout; returns the model (eval mode) and tokenizer.

    ``quant`` (``8bit``/``4bit``) quantises the language model only, through bitsandbytes; a released
    checkpoint is then first remapped into a temporary native folder (it needs that much free disk).
    """

    from tscope.model.architecture import TerraScopeModel
    from tscope.model.quantize import QUANT_CHOICES, quantization_config, verify_skips

    path = Path(path)
    if quant not in QUANT_CHOICES:
        raise InputError(f"--quant must be one of {', '.join(QUANT_CHOICES)}")
    torch_dtype = _torch_dtype(dtype)
    device = resolve_device(device)
    layout = detect_layout(path)
    tokenizer = _load_tokenizer(path)
    if layout == "released":
        from tscope.model.keys import KeyError_, official_to_native

        config = released_config(path, tokenizer)
        try:
            state, _dropped = official_to_native(read_safetensors(path))
        except KeyError_ as exc:
            raise InputError(f"--model {path}: {exc}") from None
        model = _build_from_state(config, state, path, torch_dtype)
        if quant == "none":
            return Loaded(model.to(device).eval(), tokenizer, layout, quant)
        with quant_scratch() as tmp:
            save_terrascope(model, tokenizer, tmp / "model")
            del model
            loaded = load_terrascope(tmp / "model", dtype=dtype, device=device, quant=quant)
            return Loaded(loaded.model, loaded.tokenizer, layout, quant)
    config = TerraScopeConfig.from_dict(read_json_object(path / NATIVE_CONFIG))
    for part in ("internvl", "sam2"):
        if not (path / part / "config.json").exists():
            raise InputError(f"--model {path}: missing {part}/config.json")
        weight_files(path / part)
    if not (path / "seg_head.safetensors").exists():
        raise InputError(f"--model {path}: missing seg_head.safetensors")
    from transformers import InternVLForConditionalGeneration, Sam2Model

    qconfig = quantization_config(quant, torch_dtype)
    # use_safetensors: transformers would otherwise fall back to a pickle beside (or instead of) them.
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "use_safetensors": True}
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map={"": device})
    try:
        internvl = InternVLForConditionalGeneration.from_pretrained(str(path / "internvl"), **kwargs)
        sam2 = Sam2Model.from_pretrained(str(path / "sam2"), dtype=torch_dtype, use_safetensors=True)
    except OSError as exc:
        # transformers' "no file named model.safetensors" and unreadable weights: the folder's fault.
        raise InputError(f"--model {path}: {' '.join(str(exc).split())[:300]}") from None
    model = TerraScopeModel(config, internvl=internvl, sam2=sam2)
    seg = load_safetensors(path / "seg_head.safetensors")
    result = model.seg_head.load_state_dict(seg, strict=False)
    _check_keys([f"seg_head.{k}" for k in result.missing_keys], list(result.unexpected_keys), path)
    model.seg_head.to(torch_dtype)
    if qconfig is not None:
        verify_skips(model.internvl)
        model.sam2.to(device)
        model.seg_head.to(device)
    else:
        model.to(device)
    return Loaded(model.eval(), tokenizer, layout, quant)


def save_terrascope(model, tokenizer, path: str | Path) -> Path:
    """Write ``model`` (a TerraScopeModel) and ``tokenizer`` in the native layout, atomically (a
    sibling temporary folder renamed into place)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / NATIVE_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        model.internvl.save_pretrained(str(tmp / "internvl"), safe_serialization=True)
        model.sam2.save_pretrained(str(tmp / "sam2"), safe_serialization=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.seg_head.state_dict().items()},
                  str(tmp / "seg_head.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
    return path


def convert(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """``tscope model convert``: any accepted layout -> the native layout at ``dst`` (weights kept in
    their stored dtype)."""
    src, dst = Path(src), Path(dst)
    detect_layout(src)
    real_src, real_dst = src.resolve(), dst.resolve()
    if real_dst == real_src or real_dst in real_src.parents or real_src in real_dst.parents:
        raise InputError(f"DST {dst} is, contains or lies inside SRC {src}: choose a folder apart from SRC")
    if dst.exists() and not dst.is_dir():
        raise InputError(f"DST {dst} exists and is not a folder")
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise InputError(f"{dst} exists and is not empty; pass --overwrite to replace it")
        if dst.is_symlink() or not (dst / NATIVE_CONFIG).is_file():
            # --overwrite replaces a checkpoint tscope wrote, never an arbitrary folder ($HOME, /).
            raise InputError(f"{dst} is not a tscope checkpoint (no {NATIVE_CONFIG}); refusing to replace it")
    state_dtype = _stored_dtype(src)
    loaded = load_terrascope(src, dtype=state_dtype, device="cpu", quant="none")
    return save_terrascope(loaded.model, loaded.tokenizer, dst)


def _stored_dtype(path: Path) -> str:
    """The dtype most weights are stored in (bf16, fp16 or fp32)."""
    counts = _header_stats(path)["dtypes"]
    stored = max(counts, key=counts.get) if counts else "F32"
    return {"BF16": "bf16", "F16": "fp16"}.get(stored, "fp32")


def _header_stats(path: Path) -> dict:
    """Parameter counts per part and dtype histogram from safetensors headers (no tensor is read)."""
    layout = detect_layout(path)
    if layout == "released":
        files = weight_files(path)
    else:
        # Each part checked as the loader would: pickle-only parts and missing shards are flagged here.
        files = weight_files(path / "internvl") + weight_files(path / "sam2")
        if not (path / "seg_head.safetensors").is_file():
            raise InputError(f"--model {path}: missing seg_head.safetensors")
        files.append(path / "seg_head.safetensors")
    parts: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    lm_linear = 0
    for file in files:
        rel = file.relative_to(path).parts
        with _headers(file) as f:
            for key in f.keys():
                sl = f.get_slice(key)
                n = 1
                for s in sl.get_shape():
                    n *= s
                name = key if layout == "released" else f"{rel[0]}/{key}" if len(rel) > 1 else f"seg_head/{key}"
                part = _part_of(name)
                parts[part] = parts.get(part, 0) + n
                dtypes[sl.get_dtype()] = dtypes.get(sl.get_dtype(), 0) + n
                if part == "language_model" and key.endswith("proj.weight"):
                    lm_linear += n
    return {"layout": layout, "parts": parts, "dtypes": dtypes, "lm_linear": lm_linear}


@contextlib.contextmanager
def _headers(file: Path) -> Iterator[Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            yield f
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{file}: not a valid safetensors file ({exc})") from None


def _part_of(name: str) -> str:
    # transformers saves InternVL under its hub names (vision_tower., multi_modal_projector., language_model.)
    rules = [("internvl/vision_tower.", "vision_tower"), ("internvl/multi_modal_projector.", "projector"),
             ("internvl/language_model.", "language_model"), ("vision_model.", "vision_tower"),
             ("internvl/model.vision_tower.", "vision_tower"),
             ("mlp1.", "projector"), ("internvl/model.multi_modal_projector.", "projector"),
             ("language_model.", "language_model"), ("internvl/model.language_model.", "language_model"),
             ("internvl/lm_head.", "language_model"), ("text_hidden_fcs.", "seg_head"), ("seg_head/", "seg_head"),
             ("grounding_encoder.sam2_model.", "sam2"), ("sam2/", "sam2")]
    for prefix, part in rules:
        if name.startswith(prefix):
            return part
    return "other"


def stop_tokens(path: Path) -> dict[str, dict[str, str | None]]:
    """The stop ids of the release's loops (one image / several) with the names this checkpoint's
    tokenizer gives them (None: no token of that id), read from tokenizer.json without loading it."""
    names = TokenNames()
    if (path / NATIVE_CONFIG).exists():
        names = TerraScopeConfig.from_dict(json.loads((path / NATIVE_CONFIG).read_text())).tokens
    by_id: dict[int, str] = {}
    if (path / "tokenizer.json").exists():
        tokenizer = json.loads((path / "tokenizer.json").read_text())
        by_id = {int(t["id"]): t["content"] for t in tokenizer.get("added_tokens", [])}
        by_id.update({int(i): tok for tok, i in tokenizer.get("model", {}).get("vocab", {}).items()
                      if int(i) in set(names.release_stop_single) | set(names.release_stop_pair)})
    return {"single": {str(i): by_id.get(i) for i in names.release_stop_single},
            "pair": {str(i): by_id.get(i) for i in names.release_stop_pair}}


def model_info(path: str | Path) -> dict:
    """``tscope model info``: architecture, parameter counts per part, stored dtype, quantisation plan."""
    from tscope.model.quantize import SKIP_MODULES

    path = Path(path)
    stats = _header_stats(path)
    if stats["layout"] == "native":
        config = read_json_object(path / NATIVE_CONFIG)
        internvl, sam2 = config.get("internvl", {}), config.get("sam2", {})
    else:
        raw = read_json_object(path / "config.json")
        internvl = {"text_config": raw.get("llm_config", {}), "vision_config": raw.get("vision_config", {})}
        sam2 = raw.get("sam2_config") or hiera_large_sam2()
    text, vision = internvl.get("text_config", {}), internvl.get("vision_config", {})
    backbone = sam2.get("vision_config", {}).get("backbone_config", {})
    total = sum(stats["parts"].values())
    lm = stats["lm_linear"]
    rest = total - lm
    return {
        "path": str(path),
        "layout": stats["layout"],
        "format": NATIVE_FORMAT if stats["layout"] == "native" else "sa2va_chat",
        "architecture": {
            "language_model": f"Qwen2: {text.get('num_hidden_layers')} layers, hidden {text.get('hidden_size')},"
                              f" {text.get('num_attention_heads')} heads / {text.get('num_key_value_heads')} kv,"
                              f" vocab {text.get('vocab_size')}",
            "vision_tower": f"InternViT: {vision.get('num_hidden_layers')} layers, hidden {vision.get('hidden_size')},"
                            f" patch {vision.get('patch_size')}, image {vision.get('image_size')}",
            "sam2": f"Hiera: hidden {backbone.get('hidden_size', 144)}, blocks {backbone.get('blocks_per_stage')}",
        },
        "parameters": {**stats["parts"], "total": total},
        "stored_dtypes": stats["dtypes"],
        "stop_tokens": stop_tokens(path),
        "quantisation": {
            "quantised": "language model linear layers (q/k/v/o, gate/up/down), via bitsandbytes",
            "kept": "vision tower, projector, lm_head, SAM-2, seg head (in --dtype)",
            "skip_modules": SKIP_MODULES,
            "quantised_parameters": lm,
            "estimated_weight_bytes": {"none_bf16": 2 * total, "8bit": lm + 2 * rest, "4bit": lm // 2 + 2 * rest},
        },
    }
