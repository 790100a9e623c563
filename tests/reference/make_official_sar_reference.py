"""Reference for optical+SAR region-token selection, made by running the OFFICIAL TerraScope TRAINING code.

The release has no optical+SAR inference path; its only implementation of the paper's text-guided
token-level modality selection (Eq. 4-5) is the training forward,
``projects/terrascope/models/internvl.py`` (``InternVL_Slowfast.forward`` -> ``_llm_forward``,
``fusion_mode == 'query_select'``), fed by ``projects/terrascope/datasets/SAR_RGB_Dataset.py``
(``SARRGBDataset.__getitem__``). This script runs both, unedited, on real tensors of the tiny reference
checkpoint (``data/checkpoint``, made by ``make_official_reference.py``) and records what the official
code writes into the ``<REGION>`` positions. Nothing of the official code is copied into this repository.

What it does
------------
1. SAR input: ``tests/data/rotterdam_sar.tif`` (SpaceNet-6 SLC, VV and VH) -> power ``|z|^2`` -> dB ->
   linear 2-98 % stretch per band -> ``data/sar_vh.png``, ``data/sar_vv.png`` (uint8 greyscale, 200 x 200),
   the single-band 8-bit files the official dataset reads (``<sar folder>/vh/<name>``,
   ``<sar folder>/vv/<name>``). This step needs rasterio; run it once with ``--prepare-sar`` under an
   environment that has it (tscope's). The PNGs are committed, so the main run does not need it.
   Optical input: ``data/joplin_post_700x500.png`` (already in the reference set). The two images are of
   different places (no co-registered optical/SAR pair is in the repository); the selection arithmetic
   does not care, and the official dataset resizes each to one 448 tile anyway.
2. Writes a one-sample annotation file (``image``, ``conversations`` with ``<image>`` and four
   ``[SEG]``s, ``masks``) and runs the official ``SARRGBDataset.__getitem__`` on it with the reference
   tokenizer and xtuner's ``qwen_chat`` template (the release config's): pixel values (RGB tile, then the
   SAR tile as VH/VV/mean RGB), ``region_info`` (``_get_visual_tokens_from_mask_simple``, max 8 tokens,
   SAR indices = RGB indices + 256), ``<REGION>`` placeholders after each ``[SEG]``, input ids and labels.
3. Runs the official ``InternVL_Slowfast.forward`` (which calls ``_llm_forward``) on that sample as a
   batch of one, with a minimal host object whose ``model`` holds the official ``Sa2VAChatModel``'s
   vision tower + projector (``extract_feature``), its language model (real, fp32) and the token ids. A
   forward pre-hook on the language model records the ``inputs_embeds`` it receives: the official
   result, with visual tokens at the ``<IMG_CONTEXT>`` positions and the selected tokens at the
   ``<REGION>`` positions. The official loop prints and skips an object on any error; the script fails
   if anything is printed.
4. Writes ``data/sar_selection.npz`` and ``data/sar_selection.json`` (format in README.md).

Masks (on the 700 x 500 optical image): a blob (<= 8 tokens, no sampling), a thin strip one token row
high, a large area (> 8 tokens: the official spatial-uniform sampling) and a sliver that misses every
token centre (the official fallback: token 0).

Stand-ins (the official files are not edited; only what import and these two methods touch)
---------------------------------------------------------------------------------------------
- torchvision, timm: as in ``make_official_reference.py`` (``install_standins``).
- ``xtuner.model.InternVL_V1_5``: an empty base class (``forward`` and ``_llm_forward`` are called on
  the host object, never through xtuner). ``xtuner.model.utils``: the four imported names, unused.
- ``xtuner.registry.BUILDER.build``: returns its argument (the tokenizer object is passed in).
- ``xtuner.dataset.utils.get_bos_eos_token_ids``: xtuner's answer for Qwen tokenizers: no BOS, EOS =
  ``[eos_token_id]`` (the reference tokenizer is a plain ``PreTrainedTokenizerFast`` with Qwen's tokens).
- ``xtuner.utils``: ``IGNORE_INDEX = -100``, ``DEFAULT_IMAGE_TOKEN = '<image>'``,
  ``IMAGE_TOKEN_INDEX = -200`` (xtuner's values).
- xtuner's ``template_map_fn`` with ``PROMPT_TEMPLATE.qwen_chat`` (INSTRUCTION
  ``<|im_start|>user\\n{input}<|im_end|>\\n<|im_start|>assistant\\n``, SUFFIX ``<|im_end|>``,
  SUFFIX_AS_EOS, SEP ``\\n``; the dataset's system text is empty, so no system turn).
- ``pycocotools.mask.decode``: the annotation stores each mask as a plain 0/1 list instead of COCO RLE;
  the stand-in returns it as a uint8 array.
- ``mmengine.print_log``, ``datasets.Dataset`` / ``DatasetDict``, ``xtuner.dataset.huggingface``: unused
  names.

How to run
----------
::

    /work/main/.venv/bin/python tests/reference/make_official_sar_reference.py --prepare-sar   # once
    /path/to/official-env/bin/python tests/reference/make_official_sar_reference.py \\
        --official /path/to/Earth-Observation-VLMs/TerraScope

The official environment is the one of ``make_official_reference.py`` (torch CPU, transformers 4.42.3);
CPU, fp32. It takes seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_official_reference import import_official, patch_sam2_builders  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SAR_TIF = REPO / "tests" / "data" / "rotterdam_sar.tif"
RGB_PNG = "joplin_post_700x500.png"
SAR_PNGS = {"vh": "sar_vh.png", "vv": "sar_vv.png"}
IMAGE_NAME = "scene.png"

QUESTION = "<image>\nWhere are the roofs, the road and the open ground?"
ANSWER = ("<think>The roof [SEG], the road [SEG], the open ground [SEG] and a sliver [SEG].</think>"
          "<answer>four regions</answer>")

# xtuner's PROMPT_TEMPLATE.qwen_chat (the release config's template).
QWEN_CHAT = dict(SYSTEM="<|im_start|>system\n{system}<|im_end|>\n",
                 INSTRUCTION="<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
                 SUFFIX="<|im_end|>", SUFFIX_AS_EOS=True, SEP="\n")


# --------------------------------------------------------------------------- inputs


def prepare_sar(out: Path) -> None:
    """rotterdam_sar.tif -> 8-bit VH and VV greyscale PNGs (dB, 2-98 % stretch per band)."""
    import rasterio
    from PIL import Image

    with rasterio.open(SAR_TIF) as src:
        bands = {d: src.read(i + 1) for i, d in enumerate(src.descriptions)}
    for pol, name in SAR_PNGS.items():
        with np.errstate(divide="ignore"):
            db = 10 * np.log10(np.abs(bands[pol]).astype(np.float64) ** 2)
        finite = db[np.isfinite(db)]
        lo, hi = np.percentile(finite, [2, 98])
        u8 = (np.clip(np.nan_to_num((db - lo) / (hi - lo), nan=0.0, neginf=0.0), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(u8, mode="L").save(out / name)
        print(f"{name}: {u8.shape}, dB stretch {lo:.2f}..{hi:.2f}")


def masks_for(height: int, width: int) -> dict[str, np.ndarray]:
    """Masks on the optical image (H, W); see the module docstring for what each exercises."""
    yy, xx = np.mgrid[:height, :width]
    sy, sx = height / 448, width / 448  # token centres of the 448 tile sit at 14 + 28 i
    blob = (yy - 150 * sy) ** 2 / (45 * sy) ** 2 + (xx - 300 * sx) ** 2 / (45 * sx) ** 2 <= 1
    strip = (np.abs(yy - 210 * sy) <= 5 * sy) & (xx >= 60 * sx) & (xx <= 260 * sx)
    large = (yy >= 250 * sy) & (yy < 430 * sy) & (xx >= 40 * sx) & (xx < 420 * sx)
    sliver = (yy >= 30 * sy) & (yy < 38 * sy) & (xx >= 100 * sx) & (xx < 300 * sx)
    return {"blob": blob, "strip": strip, "large": large, "sliver": sliver}


# --------------------------------------------------------------------------- stand-ins


def _module(name: str, **attrs) -> types.ModuleType:
    mod = sys.modules.get(name) or types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    parent, _, leaf = name.rpartition(".")
    if parent:
        setattr(_module(parent), leaf, mod)
    return mod


def _unused(name: str):
    def fn(*_a, **_k):
        raise RuntimeError(f"stand-in {name} is not used by this reference")
    return fn


def install_training_standins() -> None:
    class InternVL_V1_5:  # noqa: N801 - xtuner's name
        pass

    class Builder:
        @staticmethod
        def build(obj):
            return obj

    def get_bos_eos_token_ids(tokenizer):
        return [], [tokenizer.eos_token_id]

    def decode(rle):
        return np.asarray(rle, dtype=np.uint8)

    _module("mmengine", print_log=lambda *a, **k: None)
    _module("xtuner")
    _module("xtuner.model", InternVL_V1_5=InternVL_V1_5)
    _module("xtuner.model.utils", **{n: _unused(n) for n in ("find_all_linear_names", "get_peft_model_state_dict",
                                                             "guess_load_checkpoint", "make_inputs_require_grad")})
    _module("xtuner.registry", BUILDER=Builder())
    _module("xtuner.dataset")
    _module("xtuner.dataset.huggingface", build_origin_dataset=_unused("build_origin_dataset"))
    _module("xtuner.dataset.utils", get_bos_eos_token_ids=get_bos_eos_token_ids)
    _module("xtuner.utils", IGNORE_INDEX=-100, DEFAULT_IMAGE_TOKEN="<image>", IMAGE_TOKEN_INDEX=-200)
    _module("datasets", Dataset=type("Dataset", (), {}), DatasetDict=type("DatasetDict", (), {}))
    _module("pycocotools")
    _module("pycocotools.mask", decode=decode)


def template_map_fn(example: dict) -> dict:
    """xtuner's ``template_map_fn`` with the qwen_chat template."""
    t = QWEN_CHAT
    conversation = example.get("conversation", [])
    for i, turn in enumerate(conversation):
        text = t["INSTRUCTION"].format(input=turn.get("input") or "", round=i + 1)
        system = turn.get("system", "")
        if system != "" and system is not None:
            text = t["SYSTEM"].format(system=system) + text
        turn["input"] = text
        turn["output"] = turn.get("output", "") + t["SUFFIX"]
        turn["need_eos_token"] = not t["SUFFIX_AS_EOS"]
        turn["sep"] = t["SEP"]
    return {"conversation": conversation}


def import_training(official: Path, scratch: Path):
    """Import the official SAR_RGB_Dataset.py (with its relative imports) and internvl.py from a scratch copy."""
    base = official / "projects" / "terrascope"
    pkg = scratch / "terrascope_training_official"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    for rel in ("datasets/SAR_RGB_Dataset.py", "datasets/encode_fn.py", "datasets/gcg_process.py",
                "models/internvl.py"):
        shutil.copy(base / rel, pkg / Path(rel).name)
    (pkg / "__init__.py").touch()
    if str(scratch) not in sys.path:
        sys.path.insert(0, str(scratch))
    install_training_standins()
    dataset = importlib.import_module("terrascope_training_official.SAR_RGB_Dataset")
    internvl = importlib.import_module("terrascope_training_official.internvl")
    return dataset, internvl


# --------------------------------------------------------------------------- run


def build_sample(dataset_mod, tokenizer, data: Path, work: Path, masks: dict[str, np.ndarray]) -> dict:
    from PIL import Image

    rgb_dir, sar_dir = work / "rgb", work / "sar"
    for d in (rgb_dir, sar_dir / "vh", sar_dir / "vv"):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / RGB_PNG, rgb_dir / IMAGE_NAME)
    for pol, name in SAR_PNGS.items():
        if not (data / name).exists():
            raise SystemExit(f"{data / name} missing: run this script once with --prepare-sar (needs rasterio)")
        shutil.copy(data / name, sar_dir / pol / IMAGE_NAME)
    w, h = Image.open(data / RGB_PNG).size
    assert all(m.shape == (h, w) for m in masks.values())
    ann = [{"image": IMAGE_NAME,
            "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}],
            "masks": [[m.astype(np.uint8).tolist()] for m in masks.values()]}]
    (work / "ann.json").write_text(json.dumps(ann))
    ds = dataset_mod.SARRGBDataset(rgb_image_folder=str(rgb_dir), sar_image_folder=str(sar_dir),
                                   data_path=str(work / "ann.json"), tokenizer=tokenizer,
                                   template_map_fn=template_map_fn, max_tokens_per_object=8)
    return ds[0]


def run_forward(internvl_mod, model, tokenizer, sample: dict):
    """The official training forward on one sample; returns the inputs_embeds the language model received."""
    import torch

    cls = internvl_mod.InternVL_Slowfast
    host_cls = type("Host", (), {"forward": cls.forward, "_llm_forward": cls._llm_forward})
    host = host_cls()
    host._count = 0
    host.model = types.SimpleNamespace(
        vision_model=model.vision_model, language_model=model.language_model,
        extract_feature=model.extract_feature, config=model.config,
        img_context_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        region_context_token_id=tokenizer.convert_tokens_to_ids("<REGION>"))

    ids = torch.tensor(sample["input_ids"], dtype=torch.long)[None]
    data = {"pixel_values": [sample["pixel_values"]], "input_ids": ids,
            "position_ids": torch.arange(ids.shape[1])[None], "attention_mask": torch.ones_like(ids, dtype=torch.bool),
            "labels": torch.tensor(sample["labels"], dtype=torch.long)[None], "region_info": [sample["region_info"]]}
    seen = []
    handle = model.language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"].detach().clone()), with_kwargs=True)
    printed = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(printed):
            out = host.forward(data)
    finally:
        handle.remove()
    if printed.getvalue():
        raise SystemExit(f"the official forward reported:\n{printed.getvalue()}")
    assert len(seen) == 1 and torch.isfinite(out.loss), (len(seen), out.loss)
    return seen[0][0], float(out.loss)


def beta(v: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Float64 recomputation of the selection score, only to record how far each decision is from a tie."""
    s = v.astype(np.float64) @ q.astype(np.float64).T / np.sqrt(q.shape[-1])
    e = np.exp(s - s.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).mean(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, help="the TerraScope/ folder of the official checkout")
    ap.add_argument("--prepare-sar", action="store_true", help="only write the SAR PNGs (needs rasterio)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/tscope-official-sar-scratch"))
    ap.add_argument("--out", type=Path, default=HERE / "data")
    args = ap.parse_args()
    if args.prepare_sar:
        prepare_sar(args.out)
        return
    if args.official is None:
        ap.error("--official is required")

    import warnings

    import torch
    import transformers
    from PIL import Image
    from transformers import AutoTokenizer

    warnings.filterwarnings("ignore", category=FutureWarning)
    modeling, sam2 = import_official(args.official.resolve(), args.scratch)
    patch_sam2_builders(sam2)  # the checkpoint's small SAM-2 (unused here, but it must load)
    dataset_mod, internvl_mod = import_training(args.official.resolve(), args.scratch)

    ckpt = args.out / "checkpoint"
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    model = modeling.Sa2VAChatModel.from_pretrained(str(ckpt), torch_dtype=torch.float32,
                                                    use_flash_attn=False).eval()
    w, h = Image.open(args.out / RGB_PNG).size
    masks = masks_for(h, w)
    if args.scratch.exists():
        shutil.rmtree(args.scratch / "sample", ignore_errors=True)
    sample = build_sample(dataset_mod, tok, args.out, args.scratch / "sample", masks)
    embeds, loss = run_forward(internvl_mod, model, tok, sample)

    ids = np.asarray(sample["input_ids"], dtype=np.int64)
    img_id, region_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>"), tok.convert_tokens_to_ids("<REGION>")
    embeds = embeds.numpy().astype(np.float32)
    vit = embeds[ids == img_id]                     # what the official code wrote: vit_embeds_flat
    assert vit.shape == (512, model.config.llm_config.hidden_size), vit.shape
    region_embeds = embeds[ids == region_id]
    query = embeds[(ids != img_id) & (ids != region_id)]

    arrays = {"input_ids": ids, "vit_embeds_flat": vit, "region_embeds": region_embeds,
              "text_embeds": query, "mask_names": np.array(list(masks))}
    objects, choices, pos = [], [], 0
    for name, info in zip(masks, sample["region_info"], strict=True):
        rgb = np.asarray(info["rgb_token_indices"], dtype=np.int64)
        sar = np.asarray(info["sar_token_indices"], dtype=np.int64)
        assert info["fusion_mode"] == "query_select" and info["num_tokens"] == len(rgb) and (sar == rgb + 256).all()
        got = region_embeds[pos:pos + len(rgb)]
        is_sar = np.array([np.array_equal(g, vit[s]) for g, s in zip(got, sar, strict=True)])
        is_opt = np.array([np.array_equal(g, vit[r]) for g, r in zip(got, rgb, strict=True)])
        assert (is_sar ^ is_opt).all(), f"{name}: a region embedding is neither (or both) of its tokens"
        margin = beta(vit[sar], query) - beta(vit[rgb], query)
        assert ((margin > 0) == is_sar).all(), f"{name}: float64 recomputation disagrees"
        arrays[f"{name}_mask_bits"] = np.packbits(masks[name])
        arrays[f"{name}_rgb_indices"], arrays[f"{name}_sar_indices"] = rgb, sar
        arrays[f"{name}_choice"] = is_sar.astype(np.uint8)
        arrays[f"{name}_beta_margin"] = margin.astype(np.float32)
        objects.append(dict(name=name, mask_pixels=int(masks[name].sum()), num_tokens=int(len(rgb)),
                            region_positions=[int(p) for p in np.flatnonzero(ids == region_id)[pos:pos + len(rgb)]],
                            rgb_token_indices=rgb.tolist(), choice_sar=is_sar.astype(int).tolist(),
                            min_abs_beta_margin=float(np.abs(margin).min())))
        choices.append(is_sar)
        pos += len(rgb)
    assert pos == len(region_embeds), (pos, len(region_embeds))
    picked = np.concatenate(choices)
    assert picked.any() and not picked.all(), "the reference must contain both SAR and optical choices"

    np.savez_compressed(args.out / "sar_selection.npz", **arrays)
    doc = dict(
        generator="tests/reference/make_official_sar_reference.py",
        official_code=("github.com/shuyansy/Earth-Observation-VLMs, TerraScope/projects/terrascope/"
                       "models/internvl.py (InternVL_Slowfast.forward/_llm_forward) and "
                       "datasets/SAR_RGB_Dataset.py (SARRGBDataset.__getitem__)"),
        environment=dict(torch=torch.__version__, transformers=transformers.__version__, device="cpu",
                         dtype="float32"),
        checkpoint="checkpoint/ (make_official_reference.py)",
        optical_image=RGB_PNG, sar_images=SAR_PNGS, image_size_wh=[w, h], question=QUESTION, answer=ANSWER,
        text=tok.decode(ids.tolist()), num_ids=int(len(ids)), num_text=int(len(query)),
        num_region=int(len(region_embeds)), sar_token_offset=256, loss=loss,
        special_token_ids={t: tok.convert_tokens_to_ids(t) for t in ("<IMG_CONTEXT>", "<REGION>", "[SEG]")},
        num_sar_choices=int(picked.sum()), num_optical_choices=int((~picked).sum()), objects=objects)
    (args.out / "sar_selection.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(ids)} ids, {len(region_embeds)} region tokens: {int(picked.sum())} SAR, "
          f"{int((~picked).sum())} optical; min |beta margin| where K > 1 "
          f"{min(o['min_abs_beta_margin'] for o in objects if o['num_tokens'] > 1):.3g}")


if __name__ == "__main__":
    main()
