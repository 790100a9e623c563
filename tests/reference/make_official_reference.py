"""Build tscope's differential reference set by running the OFFICIAL TerraScope inference code.

What it does
------------
1. Imports the official inference package (``projects/terrascope/hf/models`` of a checkout of
   github.com/shuyansy/Earth-Observation-VLMs, folder ``TerraScope/``) from a scratch copy, so that its
   relative imports work. Nothing of it is copied into this repository.
2. Builds a tiny RANDOM checkpoint with the official classes (``Sa2VAChatConfig`` /
   ``Sa2VAChatModel``), seeded, in the released ``sa2va_chat`` layout, and writes it to
   ``data/checkpoint/`` (``model.safetensors`` fp32, ``config.json`` as ``save_pretrained`` writes it
   plus a ``sam2_config`` entry, tokenizer files). It then reloads that folder with
   ``Sa2VAChatModel.from_pretrained`` so the outputs come from exactly the committed files.
   - InternViT: real geometry (448 px, patch 14, pixel-shuffle 0.5: 256 tokens per tile), width 32.
   - Qwen2: hidden 64, 2 layers, 4 heads / 2 kv heads, rope_theta 1e6 as released, untied head.
   - Tokenizer: byte-level BPE (256 byte tokens, no merges) + Qwen's chat tokens, InternVL's image
     tokens and TerraScope's special tokens in the release order.
   - SAM-2: the official ``SAM2`` hard-codes Hiera-L; its three builders
     (``build_image_encoder``, ``build_memory_attention``, ``build_memory_encoder``) are replaced at run
     time by builders that construct the same official classes with small widths (see SAM2_TINY).
     Image size stays 1024. The mask decoder's MLP (2048) and IoU head (256) stay as hard-coded.
     The same architecture is written as a transformers-5 ``Sam2Config`` dict under
     ``config.json["sam2_config"]`` (a tscope extension for non-Hiera-L grounding models).
   - Weights: every tensor re-drawn from one seeded generator with O(1) activations, then the
     ``[SEG]`` row of ``lm_head`` is biased so that free greedy runs emit ``[SEG]`` now and then.
3. Runs ``predict_forward_with_grounding`` (single image) and ``predict_forward_with_grounding_multi``
   (image pair) on the cases in CASES, in fp32 on CPU, after
   ``model.preparing_for_generation(tokenizer, torch_dtype=torch.float32)``, and records (by wrapping
   official methods at run time, never editing them) prompt ids, generated ids, per-[SEG] hidden
   states, SAM-2 logits and object scores, final masks and region-token indices.
4. Runs the official region-selection functions directly on synthetic masks (``regions.npz``).

How to run
----------
The official code needs transformers 4.42 (the release's era). A scratch venv with torch 2.13.0 CPU,
transformers==4.42.3, peft==0.11.1, einops, sentencepiece, safetensors, pillow, numpy, accelerate::

    /path/to/official-env/bin/python tests/reference/make_official_reference.py \
        --official /path/to/Earth-Observation-VLMs/TerraScope \
        --joplin /path/to/xview2-joplin        # only needed when the input PNGs are not there yet

Input images are read from ``data/*.png`` when present (they are committed), otherwise cropped from
the xView2 Joplin tiles (``--joplin``) and ``tests/data/naip_rgbn.tif``. The run takes a few minutes
on 2 CPU cores and rewrites everything under ``tests/reference/data/``. See README.md there for the
file format.

Stand-ins and run-time patches (the official code is not edited)
----------------------------------------------------------------
- ``torchvision``: PyPI's build fails to import beside CPU torch, so small modules are injected into
  ``sys.modules`` for what the official code uses: ``transforms.Compose``, ``Lambda``, ``Resize``
  (PIL resize, bicubic, as torchvision does for PIL images), ``ToTensor``, ``Normalize``,
  ``InterpolationMode`` and ``functional.resize`` / ``to_pil_image``.
- ``timm``: only ``timm.models.layers.DropPath`` is imported (identity at inference).
- Devices: the official code hard-codes CUDA. Its modules get a ``torch`` whose ``device("cuda")``
  returns the CPU device, and ``Tensor.cuda`` returns the tensor itself. Nothing else changes.
  ``torch.autocast(device_type="cuda", dtype=bfloat16)`` around SAM-2's decode is left as it is: on a
  machine without CUDA it is disabled (PyTorch warns), so this run is fp32 throughout, whereas on a
  GPU the official SAM-2 decode runs in bf16.
- ``self.gen_config.max_length``: the official functions set it to 8192 on entry; for this reference
  it is pinned to ``GEN_CAP`` (a GenerationConfig whose max_length ignores assignments), so free runs
  stop after GEN_CAP generated ids (``<REGION>`` ids included, as the official count does).

Forcing rule (tscope's tests must apply the same)
-------------------------------------------------
``model.language_model.forward`` is wrapped. Every call whose input is NOT the single ``[SEG]`` token
(the prefill, each single-token step, each block of region tokens) "decides" generated token number
n = 0, 1, 2 ... (counting only such calls). If the case's schedule has an entry for n, the returned
logits' last row is overwritten at the scheduled token with (row max + 1), making it the argmax.
Calls whose input is ``[SEG]`` are not counted (the official loop ignores their logits and takes the
next token from the region-token forward). n therefore indexes the generated tokens excluding the
``<REGION>`` ids. The script checks that every scheduled token appears at its index.
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import shutil
import sys
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SEED = 20261129
GEN_CAP = 64          # generated ids per free run (official: 8192)
MAX_TOKENS_PER_SEG = 8  # what the official bench script passes (the loops hard-code 8 anyway)
LOGITS_PER_CASE = 3     # [SEG]s per case whose 256x256 SAM-2 logits are stored (size)

SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in their mind and then provides the user a "
    "concise final answer in a short word or phrase. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here "
    "</think><answer> answer here </answer>\n\n"
)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INTERNVL_SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>"]
# projects/terrascope/configs/terrascope_8b.py, in that order.
TERRASCOPE_SPECIALS = ["<think>", "</think>", "<answer>", "</answer>", "[SEG]", "<REGION>", "<p>", "</p>",
                       "<vp>", "</vp>", "<|end|>"]

VISION = dict(image_size=448, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=128, qkv_bias=True, qk_normalization=False, use_flash_attn=False,
              norm_type="layer_norm", hidden_act="gelu", layer_norm_eps=1e-6, drop_path_rate=0.0,
              initializer_factor=1.0, architectures=["InternVisionModel"])
LLM = dict(architectures=["Qwen2ForCausalLM"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
           rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu", use_sliding_window=False,
           sliding_window=32768, max_window_layers=2, attention_dropout=0.0, torch_dtype="float32")

# The shrunken SAM-2 (official builders' parameters, Hiera-L values in comments).
SAM2_TINY = dict(
    embed_dim=16,                 # 144
    num_heads=1,                  # 2  (doubles every stage: 1, 2, 4, 8)
    stages=[1, 1, 2, 1],          # [2, 6, 36, 4]
    global_att_blocks=[3],        # [23, 33, 43]; must not open stage 2-4 (transformers' Hiera)
    window_spec=[8, 4, 16, 8],    # as released
    window_pos_embed_bkg_spatial_size=[7, 7],
    d_model=32,                   # 256: neck width = SAM-2 hidden_dim = memory_attention.d_model
    mem_dim=16,                   # 64
    mem_attn_layers=1,            # 4
    mem_attn_ffn=64,              # 2048
    fuser_layers=1,               # 2
)


# --------------------------------------------------------------------------- stand-ins


def install_standins() -> None:
    """Minimal torchvision / timm modules for what the official inference code imports."""
    import torch
    from PIL import Image

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    pil_modes = {InterpolationMode.NEAREST: Image.NEAREST, InterpolationMode.BILINEAR: Image.BILINEAR,
                 InterpolationMode.BICUBIC: Image.BICUBIC}

    def resize(img, size, interpolation=InterpolationMode.BILINEAR, **_):
        # torchvision on a PIL image with a (h, w) size: img.resize((w, h), mode).
        if not isinstance(img, Image.Image):
            raise TypeError("stand-in resize handles PIL images only")
        h, w = (size, size) if isinstance(size, int) else size
        return img.resize((w, h), pil_modes[interpolation])

    def to_pil_image(pic, mode=None):
        arr = np.asarray(pic)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or mode not in (None, "RGB"):
            raise TypeError("stand-in to_pil_image handles HxWx3 uint8 arrays only")
        return Image.fromarray(arr)

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, x):
            for t in self.transforms:
                x = t(x)
            return x

    class Lambda:
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, x):
            return self.fn(x)

    class Resize:
        def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
            self.size, self.interpolation = size, interpolation

        def __call__(self, img):
            return resize(img, self.size, self.interpolation)

    class ToTensor:
        def __call__(self, pic):
            # torchvision: HWC uint8 -> CHW float32 / 255
            arr = torch.from_numpy(np.array(pic, np.uint8, copy=True))
            return arr.permute(2, 0, 1).contiguous().to(torch.get_default_dtype()).div(255)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = mean, std

        def __call__(self, t):
            mean = torch.as_tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
            return t.sub_(mean).div_(std)

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")
    fn.InterpolationMode, fn.resize, fn.to_pil_image = InterpolationMode, resize, to_pil_image
    for name, obj in dict(Compose=Compose, Lambda=Lambda, Resize=Resize, ToTensor=ToTensor, Normalize=Normalize,
                          InterpolationMode=InterpolationMode, functional=fn).items():
        setattr(tr, name, obj)
    tv.transforms = tr

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob=0.0, scale_by_keep=True):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if self.drop_prob == 0.0 or not self.training:
                return x
            raise RuntimeError("stand-in DropPath is for inference only")

    timm = types.ModuleType("timm")
    timm_models = types.ModuleType("timm.models")
    timm_layers = types.ModuleType("timm.models.layers")
    timm_layers.DropPath = DropPath
    timm.models, timm_models.layers = timm_models, timm_layers
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn,
                        "timm": timm, "timm.models": timm_models, "timm.models.layers": timm_layers})


def import_official(official: Path, scratch: Path):
    """Import the official hf/models package from a scratch copy; return (modeling, sam2) modules."""
    import importlib

    import torch

    src = official / "projects" / "terrascope" / "hf" / "models"
    if not (src / "modeling_sa2va_chat.py").exists():
        raise SystemExit(f"{src}: no modeling_sa2va_chat.py (pass --official <checkout>/TerraScope)")
    pkg = scratch / "terrascope_official"
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(src, pkg)
    (pkg / "__init__.py").touch()
    sys.path.insert(0, str(scratch))
    install_standins()
    modeling = importlib.import_module("terrascope_official.modeling_sa2va_chat")
    sam2 = importlib.import_module("terrascope_official.sam2")

    # cuda -> cpu, at run time only.
    cpu_torch = types.ModuleType("torch")
    cpu_torch.__dict__.update(torch.__dict__)

    def device(*args, **kwargs):
        if args and isinstance(args[0], str) and args[0].startswith("cuda"):
            return torch.device("cpu")
        return torch.device(*args, **kwargs)

    cpu_torch.device = device
    modeling.torch = cpu_torch
    sam2.torch = cpu_torch
    torch.Tensor.cuda = lambda self, *a, **k: self
    return modeling, sam2


# --------------------------------------------------------------------------- tokenizer, model


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    everything = QWEN_SPECIALS + INTERNVL_SPECIALS + TERRASCOPE_SPECIALS
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in everything])  # ids in order
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=everything[1:], clean_up_tokenization_spaces=False)
    fast.model_max_length = 32768
    ids = fast.convert_tokens_to_ids(QWEN_SPECIALS + INTERNVL_SPECIALS + TERRASCOPE_SPECIALS)
    assert ids == list(range(256, 256 + len(ids))), ids
    return fast


def patch_sam2_builders(sam2) -> None:
    """Replace SAM2's hard-coded Hiera-L builders with ones building the same classes, smaller."""
    t = SAM2_TINY
    dims = [t["embed_dim"] * 2 ** i for i in range(4)]

    def build_image_encoder(self):
        trunk = sam2.Hiera(embed_dim=t["embed_dim"], num_heads=t["num_heads"], stages=t["stages"],
                           global_att_blocks=t["global_att_blocks"],
                           window_pos_embed_bkg_spatial_size=t["window_pos_embed_bkg_spatial_size"],
                           window_spec=t["window_spec"])
        pos = sam2.PositionEmbeddingSine(num_pos_feats=t["d_model"], normalize=True, scale=None, temperature=10000)
        neck = sam2.FpnNeck(d_model=t["d_model"], position_encoding=pos, backbone_channel_list=dims[::-1],
                            fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
        return sam2.ImageEncoder(scalp=1, trunk=trunk, neck=neck)

    def build_memory_attention(self):
        d = t["d_model"]
        self_attn = sam2.RoPEAttention(rope_theta=10000.0, feat_sizes=[32, 32], embedding_dim=d, num_heads=1,
                                       downsample_rate=1, dropout=0.1)
        cross_attn = sam2.RoPEAttention(rope_theta=10000.0, feat_sizes=[32, 32], rope_k_repeat=True,
                                        embedding_dim=d, num_heads=1, downsample_rate=1, dropout=0.1,
                                        kv_in_dim=t["mem_dim"])
        layer = sam2.MemoryAttentionLayer(activation="relu", dim_feedforward=t["mem_attn_ffn"], dropout=0.1,
                                          pos_enc_at_attn=False, d_model=d, pos_enc_at_cross_attn_queries=False,
                                          pos_enc_at_cross_attn_keys=True, self_attention=self_attn,
                                          cross_attention=cross_attn)
        return sam2.MemoryAttention(d_model=d, pos_enc_at_input=True, num_layers=t["mem_attn_layers"], layer=layer)

    def build_memory_encoder(self):
        d = t["d_model"]
        pos = sam2.PositionEmbeddingSine(num_pos_feats=t["mem_dim"], normalize=True, scale=None, temperature=10000)
        down = sam2.MaskDownSampler(embed_dim=d, kernel_size=3, stride=2, padding=1)
        fuser = sam2.Fuser(layer=sam2.CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1e-6,
                                              use_dwconv=True), num_layers=t["fuser_layers"])
        return sam2.MemoryEncoder(out_dim=t["mem_dim"], position_encoding=pos, mask_downsampler=down, fuser=fuser,
                                  in_dim=d)

    sam2.SAM2.build_image_encoder = build_image_encoder
    sam2.SAM2.build_memory_attention = build_memory_attention
    sam2.SAM2.build_memory_encoder = build_memory_encoder


def sam2_config_tf5() -> dict:
    """SAM2_TINY as a transformers-5 Sam2Config dict (what tscope's loader reads from config.json)."""
    t = SAM2_TINY
    dims = [t["embed_dim"] * 2 ** i for i in range(4)]
    heads = [t["num_heads"] * 2 ** i for i in range(4)]
    backbone = {"model_type": "sam2_hiera_det_model", "hidden_size": t["embed_dim"],
                "num_attention_heads": t["num_heads"], "blocks_per_stage": t["stages"],
                "embed_dim_per_stage": dims, "num_attention_heads_per_stage": heads,
                "global_attention_blocks": t["global_att_blocks"], "window_size_per_stage": t["window_spec"],
                "window_positional_embedding_background_size": t["window_pos_embed_bkg_spatial_size"],
                "image_size": [1024, 1024]}
    return {
        "vision_config": {"backbone_config": backbone, "backbone_channel_list": dims[::-1],
                          "backbone_feature_sizes": [[256, 256], [128, 128], [64, 64]],
                          "fpn_hidden_size": t["d_model"], "fpn_top_down_levels": [2, 3]},
        "prompt_encoder_config": {"hidden_size": t["d_model"], "image_size": 1024, "patch_size": 16,
                                  "mask_input_channels": 16, "num_point_embeddings": 4},
        "mask_decoder_config": {"hidden_size": t["d_model"], "mlp_dim": 2048, "num_hidden_layers": 2,
                                "num_attention_heads": 8, "attention_downsample_rate": 2,
                                "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 256,
                                "dynamic_multimask_via_stability": True,
                                "dynamic_multimask_stability_delta": 0.05,
                                "dynamic_multimask_stability_thresh": 0.98},
    }


def randomize(model, seed: int) -> None:
    """Re-draw every parameter from one seeded generator, scaled so activations stay O(1).

    Small initialisations (HF's std 0.02) make a tiny LM's logits nearly flat, and a differential test
    on nearly tied argmaxes would be flaky; these keep logit margins large.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name or leaf in ("ls1", "ls2") or name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif leaf == "bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() >= 2 and "embedding" not in name and "pos_embed" not in name and "token" not in name:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:  # embeddings, tokens, position tables
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        # SAM-2's prompt-encoder Gaussian matrix is a buffer; keep its default N(0, 1) but seeded.
        for name, b in sorted(model.named_buffers()):
            if name.endswith("positional_encoding_gaussian_matrix"):
                b.copy_(torch.randn(b.shape, generator=g))


def build_checkpoint(modeling, tokenizer, out: Path, seg_scale: float, images: list) -> dict:
    import torch

    cfg = modeling.Sa2VAChatConfig(
        vision_config=dict(VISION), llm_config=dict(LLM, vocab_size=len(tokenizer)), template="qwen_chat",
        force_image_size=448, downsample_ratio=0.5, ps_version="v2", dynamic_image_size=True,
        use_thumbnail=True, select_layer=-1, min_dynamic_patch=1, max_dynamic_patch=12,
        architectures=["Sa2VAChatModel"], torch_dtype="float32")
    torch.manual_seed(SEED)
    model = modeling.Sa2VAChatModel(cfg, use_flash_attn=False).eval()
    randomize(model, SEED)
    shape_for_reference(model, tokenizer, seg_scale, images)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    config = json.loads((out / "config.json").read_text())
    config["sam2_config"] = sam2_config_tf5()
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config, {k: v.detach().clone() for k, v in model.state_dict().items()}


def shape_for_reference(model, tokenizer, seg_scale: float, images: list) -> None:
    """Adjust a few random tensors so the reference exercises what a test should see.

    - ``lm_head`` x2: larger top-1/top-2 logit margins (no near-ties for greedy decoding).
    - ``[SEG]``'s ``lm_head`` row points at the mean final hidden state of a few text contexts, so free
      greedy runs emit ``[SEG]`` now and then (random weights alone never do).
    - ``text_hidden_fcs``: its first layer is centred on that mean state and amplified, so different
      ``[SEG]`` states give different SAM-2 prompts (a tiny LM's states differ little).
    - SAM-2 hypernetwork output layers x8: mask logits far from the 0.5 threshold for most pixels.
    - SAM-2 object-score head: amplified, and its bias set so that the input images' scores straddle 0
      (some [SEG]s get a negative object score).
    """
    import torch

    seg = tokenizer.convert_tokens_to_ids("[SEG]")
    contexts = [SYSTEM_PROMPT + q for q in ("How many buildings? [SEG]", "Segment the water [SEG] and roads [SEG]",
                                            "<answer>[SEG]</answer>", "Which areas changed? [SEG]")]
    with torch.no_grad():
        head = model.language_model.lm_head.weight
        head.mul_(2.0)
        states = []
        for text in contexts:
            ids = torch.tensor([tokenizer.encode(text)])
            h = model.language_model.model(input_ids=ids).last_hidden_state[0]
            states.append(h)
        allh = torch.cat(states)
        direction = allh.mean(0)
        head[seg] = direction / direction.norm() * head.norm(dim=1).mean() * seg_scale
        seg_states = torch.stack([h[-1] for h in states])
        fc0 = model.text_hidden_fcs[0]
        fc0.weight.mul_(4.0)
        fc0.bias.copy_(-fc0.weight @ seg_states.mean(0) + 0.1 * fc0.bias)
        dec = model.grounding_encoder.sam2_model.sam_mask_decoder
        for mlp in dec.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(8.0)
        obj_head = dec.pred_obj_score_head.layers[-1]
        obj_head.weight.mul_(20.0)
        # Calibrate the object-score bias on the official SAM-2 path (preprocess, encode, decode).
        model.preparing_for_generation(tokenizer, torch_dtype=torch.float32)
        scores = []
        hook = dec.register_forward_hook(lambda mod, inp, out: scores.append(float(out[3].reshape(-1)[0])))
        ge = model.grounding_encoder
        for image in images:
            g = torch.from_numpy(model.extra_image_processor.apply_image(np.array(image))).permute(2, 0, 1)
            pixels = torch.stack([ge.preprocess_image(g.contiguous().float())])
            for h in seg_states:
                ge.language_embd_inference(ge.get_sam2_embeddings(pixels), [model.text_hidden_fcs(h[None])])
        hook.remove()
        obj_head.bias.sub_(float(np.median(scores)))


class PinnedGenConfig:
    """Wraps the GenerationConfig so the official functions' ``max_length = 8192`` is ignored."""

    def __init__(self, inner, cap: int):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "max_length", cap)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        if name != "max_length":
            setattr(self._inner, name, value)


# --------------------------------------------------------------------------- recording


class Recorder:
    """Wraps official methods on one model instance to observe (and, for forcing, steer) a run."""

    def __init__(self, model, tokenizer):
        self.model, self.tok = model, tokenizer
        self.seg_id = tokenizer.convert_tokens_to_ids("[SEG]")
        self.region_id = tokenizer.convert_tokens_to_ids("<REGION>")
        self.schedule: dict[int, int] = {}
        self.reset()
        self._wrap()

    def reset(self, schedule: dict[int, int] | None = None):
        self.schedule = dict(schedule or {})
        self.n = 0
        self.generated: list[int] = []
        self.decided: list[int] = []     # argmax after forcing, per deciding call
        self.margins: list[float] = []   # unforced top-1 minus top-2 logit, per deciding call
        self.prompt_ids = None
        self.vit = None
        self.sam_pixels: list = []
        self.seg_hidden: list = []
        self.seg_fcs_out: list = []
        self.sam_heads: list = []        # per _forward_sam_heads call
        self.lang_out: list = []         # language_embd_inference outputs (frames, 1, 1024, 1024)
        self.regions: list = []          # (raw indices, mask passed in, fn name)

    def _wrap(self):
        m = self.model
        lm = m.language_model
        orig_lm = lm.forward

        def lm_forward(*args, **kwargs):
            input_ids = kwargs.get("input_ids")
            embeds = kwargs.get("inputs_embeds")
            out = orig_lm(*args, **kwargs)
            is_prefill = kwargs.get("past_key_values") is None
            if not is_prefill:
                if input_ids is not None:
                    self.generated.append(int(input_ids.reshape(-1)[0]))
                else:
                    self.generated.extend([self.region_id] * embeds.shape[1])
            if input_ids is not None and input_ids.numel() == 1 and int(input_ids) == self.seg_id:
                return out
            row = out.logits[0, -1]
            top2 = row.topk(2).values
            self.margins.append(float(top2[0] - top2[1]))
            if self.n in self.schedule:
                row[self.schedule[self.n]] = row.max() + 1
            self.decided.append(int(row.argmax()))
            self.n += 1
            return out

        lm.forward = lm_forward

        orig_prefill = m.build_inputs_embeds_for_prefill

        def prefill(input_ids, vit_embeds_flat, img_context_token_id):
            self.prompt_ids = input_ids[0].tolist()
            return orig_prefill(input_ids, vit_embeds_flat, img_context_token_id)

        m.build_inputs_embeds_for_prefill = prefill

        orig_extract = m.extract_feature

        def extract(pixel_values):
            out = orig_extract(pixel_values)
            self.vit = out.reshape(-1, out.shape[-1]).detach().clone()
            self.pixel_shape = list(pixel_values.shape)
            return out

        m.extract_feature = extract

        fcs = m.text_hidden_fcs
        orig_fcs = fcs.forward

        def fcs_forward(x):
            y = orig_fcs(x)
            self.seg_hidden.append(x.detach().reshape(-1).clone())
            self.seg_fcs_out.append(y.detach().reshape(-1).clone())
            return y

        fcs.forward = fcs_forward

        ge = m.grounding_encoder
        orig_embed = ge.get_sam2_embeddings

        def get_embeddings(images):
            x = images.float()
            self.sam_pixels.append(np.stack([x.mean(dim=(2, 3)).numpy(), x.std(dim=(2, 3)).numpy()], 1))
            return orig_embed(images)

        ge.get_sam2_embeddings = get_embeddings

        orig_lang = ge.language_embd_inference

        def lang(state, embd):
            out = orig_lang(state, embd)
            self.lang_out.append(out.detach().float().clone())
            return out

        ge.language_embd_inference = lang

        sm = ge.sam2_model
        orig_heads = sm._forward_sam_heads

        def heads(*args, **kwargs):
            res = orig_heads(*args, **kwargs)
            _, _, ious, low_res_masks, _, _, obj = res
            self.sam_heads.append(dict(low=low_res_masks.detach().float().clone(), ious=ious.detach().float().clone(),
                                       obj=obj.detach().float().clone()))
            return res

        sm._forward_sam_heads = heads

        for fn_name in ("_get_visual_tokens_from_mask_accurate", "_get_visual_tokens_from_mask_multi_simple"):
            orig = getattr(m, fn_name)

            def wrapped(*args, _orig=orig, _name=fn_name, **kwargs):
                res = _orig(*args, **kwargs)
                mask = kwargs.get("mask", args[0] if args else None)
                mask = mask.cpu().numpy() if hasattr(mask, "cpu") else np.asarray(mask)
                self.regions.append((list(map(int, res)), mask.astype(bool), _name))
                return res

            setattr(m, fn_name, wrapped)


# --------------------------------------------------------------------------- cases


def load_images(data: Path, joplin: Path | None) -> dict:
    """The input PNGs (written from real imagery the first time)."""
    from PIL import Image

    crops = {
        "joplin_pre_448.png": ("pre/tile_337-9136.tif", (300, 300, 748, 748)),
        "joplin_post_700x500.png": ("post/tile_31500-5137.tif", (100, 200, 800, 700)),
        "joplin_pre_pair_448.png": ("pre/tile_337-10160.tif", (0, 0, 448, 448)),
        "joplin_post_pair_512x384.png": ("post/tile_31500-6161.tif", (400, 300, 912, 684)),
    }
    images = {}
    for name, (src, box) in crops.items():
        path = data / name
        if not path.exists():
            if joplin is None:
                raise SystemExit(f"{path} missing: pass --joplin <xview2-joplin folder> to crop it")
            Image.open(joplin / src).convert("RGB").crop(box).save(path)
        images[name] = Image.open(path).convert("RGB")
    naip = data / "naip_rgb_515x403.png"
    if not naip.exists():
        rgba = np.array(Image.open(REPO / "tests" / "data" / "naip_rgbn.tif"))
        Image.fromarray(rgba[..., :3]).save(naip)  # bands red, green, blue, nir
    images[naip.name] = Image.open(naip).convert("RGB")
    return images


def multiple_choice(question: str, candidates: dict) -> str:
    """As the official TerraScope-Bench script formats a question with candidates."""
    text = f"{question}\n"
    for key in sorted(candidates):
        text += f"{key}. {candidates[key]}\n"
    return SYSTEM_PROMPT + "<image>\n" + text


def cases(tok) -> list[dict]:
    seg, eos = tok.convert_tokens_to_ids("[SEG]"), tok.eos_token_id
    q1 = "Segment the buildings in the image and estimate what fraction of the area they cover."
    q2 = "Which areas changed between the two images? Segment them."
    forced = {2: seg, 5: seg, 9: seg, 14: eos}
    pair_forced = {1: seg, 3: seg, 6: seg, 8: seg, 12: eos}
    cap = {n: seg for n in range(1, 50, 2)}  # 25 [SEG]s: the official loop stops after 20
    mc = multiple_choice("Which land cover dominates the image?",
                         {"B": "forest", "A": "cropland", "D": "water", "C": "built-up area"})
    return [
        dict(name="single448_free", fn="single", images=["joplin_pre_448.png"], text=SYSTEM_PROMPT + "<image>\n" + q1),
        dict(name="single448_forced", fn="single", images=["joplin_pre_448.png"],
             text=SYSTEM_PROMPT + "<image>\n" + q1, schedule=forced),
        dict(name="large700x500_free", fn="single", images=["joplin_post_700x500.png"],
             text=SYSTEM_PROMPT + "<image>\n" + q1),
        dict(name="large700x500_forced", fn="single", images=["joplin_post_700x500.png"],
             text=SYSTEM_PROMPT + "<image>\n" + q1, schedule=forced),
        dict(name="pair_forced", fn="multi", images=["joplin_pre_pair_448.png", "joplin_post_pair_512x384.png"],
             text=SYSTEM_PROMPT + "<image>\n" + q2, schedule=pair_forced),
        dict(name="pair_free", fn="multi", images=["joplin_pre_pair_448.png", "joplin_post_pair_512x384.png"],
             text=SYSTEM_PROMPT + "<image>\n" + q2),
        dict(name="mc_naip_free", fn="single", images=["naip_rgb_515x403.png"], text=mc),
        dict(name="mc_naip_forced", fn="single", images=["naip_rgb_515x403.png"], text=mc,
             schedule={0: seg, 4: seg, 10: eos}),
        dict(name="single448_segcap", fn="single", images=["joplin_pre_448.png"],
             text=SYSTEM_PROMPT + "<image>\n" + q1, schedule=cap, gen_cap=400),
    ]


def run_case(model, tok, rec: Recorder, case: dict, images: dict, out: Path) -> dict:
    import torch

    schedule = {int(k): int(v) for k, v in case.get("schedule", {}).items()}
    rec.reset(schedule)
    cap = case.get("gen_cap", GEN_CAP)
    object.__setattr__(model.gen_config, "max_length", cap)
    imgs = [images[n] for n in case["images"]]
    with torch.no_grad():
        if case["fn"] == "single":
            res = model.predict_forward_with_grounding(image=imgs[0], text=case["text"], tokenizer=tok,
                                                       max_tokens_per_seg=MAX_TOKENS_PER_SEG)
        else:
            res = model.predict_forward_with_grounding_multi(image_list=imgs, text=case["text"], tokenizer=tok,
                                                             max_tokens_per_seg=MAX_TOKENS_PER_SEG)
    gen = rec.generated
    pred = tok.decode(gen, skip_special_tokens=False).strip()
    assert pred == res["prediction"], (pred, res["prediction"])
    non_region = [t for t in gen if t != rec.region_id]
    for n, t in schedule.items():
        if n < len(non_region):
            assert non_region[n] == t, (case["name"], n, t, non_region[n])
    n_seg = sum(1 for t in gen if t == rec.seg_id)
    masks = res["prediction_masks"]
    frames = len(imgs)
    assert len(masks) == len(rec.seg_hidden) == len(rec.regions), (len(masks), len(rec.seg_hidden), len(rec.regions))
    assert len(rec.sam_heads) == frames * len(masks)

    arrays: dict[str, np.ndarray] = {
        "prompt_ids": np.array(rec.prompt_ids, np.int64),
        "generated_ids": np.array(gen, np.int64),
        "decided_ids": np.array(rec.decided, np.int64),
        "logit_margins": np.array(rec.margins, np.float32),
        "vit_embeds_head": rec.vit[:4, :8].numpy().astype(np.float32),
        "vit_embeds_norm": rec.vit.norm(dim=1).numpy().astype(np.float32),
        "sam_pixel_stats": np.stack(rec.sam_pixels[:1])[0].astype(np.float32) if rec.sam_pixels
        else np.zeros((frames, 2, 3), np.float32),
    }
    segs = []
    for k, mask in enumerate(masks):
        mask = np.asarray(mask).astype(bool)
        arrays[f"seg{k}_hidden"] = rec.seg_hidden[k].numpy().astype(np.float32)
        arrays[f"seg{k}_fcs_out"] = rec.seg_fcs_out[k].numpy().astype(np.float32)
        arrays[f"seg{k}_mask_bits"] = np.packbits(mask.reshape(-1))
        heads = rec.sam_heads[k * frames:(k + 1) * frames]
        arrays[f"seg{k}_ious"] = np.stack([h["ious"][0].numpy() for h in heads]).astype(np.float32)
        arrays[f"seg{k}_object_score"] = np.array([float(h["obj"].reshape(-1)[0]) for h in heads], np.float32)
        if k < LOGITS_PER_CASE:
            arrays[f"seg{k}_lowres_logits"] = np.stack([h["low"][0, 0].numpy() for h in heads]).astype(np.float32)
        raw, mask_in, fn_name = rec.regions[k]
        if frames == 1:
            frame, offset = 0, 0
        else:
            frame = k % frames
            assert np.array_equal(mask_in, mask[frame]), "region mask is not the frame seg_count % frames"
            offset = frame * 256
        regions = [i + offset for i in raw]
        arrays[f"seg{k}_regions"] = np.array(regions, np.int64)
        # Sanity: the stored 1024 logits resized by the official path reproduce the mask (done in-loop).
        lang = rec.lang_out[k]
        segs.append(dict(
            index=k, frame=frame, region_fn=fn_name.lstrip("_"), region_indices=regions,
            mask_shape=list(mask.shape), mask_fraction=[float(x) for x in mask.reshape(frames, -1).mean(1)],
            object_score=[float(x) for x in arrays[f"seg{k}_object_score"]],
            best_candidate=[int(np.argmax(x)) for x in arrays[f"seg{k}_ious"]],
            sam_logits_1024_shape=list(lang.shape)))
    np.savez_compressed(out / f"{case['name']}.npz", **arrays)
    return dict(
        name=case["name"], function="predict_forward_with_grounding" + ("_multi" if frames > 1 else ""),
        images=case["images"], image_sizes_wh=[list(images[n].size) for n in case["images"]], text=case["text"],
        schedule={str(k): v for k, v in sorted(schedule.items())},
        schedule_tokens={str(k): tok.convert_ids_to_tokens(v) for k, v in sorted(schedule.items())},
        gen_cap=cap, max_tokens_per_seg=MAX_TOKENS_PER_SEG, pixel_values_shape=rec.pixel_shape,
        num_prompt_ids=len(rec.prompt_ids), num_generated_ids=len(gen), num_seg=n_seg,
        stop=stop_reason(gen, tok, n_seg, cap), prediction=res["prediction"], segs=segs,
        lowres_logits_stored_for_first=LOGITS_PER_CASE, min_unforced_margin=min_margin(rec.margins, schedule))


def min_margin(margins: list[float], schedule: dict) -> float:
    """The smallest top-1 minus top-2 logit gap over the unforced decisions (a near-tie makes a flaky test)."""
    free = [m for n, m in enumerate(margins) if n not in schedule]
    return float(min(free)) if free else float("inf")


def stop_reason(gen: list[int], tok, n_seg: int, cap: int) -> str:
    if gen and gen[-1] == tok.eos_token_id:
        return "eos"
    if n_seg >= 20:
        return "seg_iterations_20"
    if len(gen) >= cap:
        return "gen_cap"
    return "other"


# --------------------------------------------------------------------------- regions


def synthetic_masks(h: int, w: int) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    m = {}
    m["empty"] = np.zeros((h, w), bool)
    m["single_pixel"] = np.zeros((h, w), bool)
    m["single_pixel"][h // 3, w // 2] = True
    m["thin_line"] = np.zeros((h, w), bool)
    m["thin_line"][h // 2, w // 8: w - w // 8] = True
    m["thin_vertical"] = np.zeros((h, w), bool)
    m["thin_vertical"][h // 10: h - h // 10, w // 5] = True
    m["l_shape"] = np.zeros((h, w), bool)
    m["l_shape"][h // 5: h // 5 * 4, w // 6: w // 6 + max(3, w // 20)] = True
    m["l_shape"][h // 5 * 4 - max(3, h // 20): h // 5 * 4, w // 6: w // 2] = True
    m["full"] = np.ones((h, w), bool)
    m["blob"] = ((yy - h * 0.55) / (h * 0.3)) ** 2 + ((xx - w * 0.4) / (w * 0.25)) ** 2 < 1
    m["small_blob"] = ((yy - h * 0.2) / (h * 0.04)) ** 2 + ((xx - w * 0.7) / (w * 0.05)) ** 2 < 1
    m["border"] = np.zeros((h, w), bool)
    m["border"][: h // 6, :] = True
    m["border"][:, w - w // 10:] = True
    m["corner"] = (yy > h - h // 12) & (xx < w // 12)
    m["two_blobs"] = (((yy - h * 0.25) ** 2 + (xx - w * 0.25) ** 2) < (min(h, w) * 0.1) ** 2) | (
        ((yy - h * 0.75) ** 2 + (xx - w * 0.8) ** 2) < (min(h, w) * 0.12) ** 2)
    rng = np.random.default_rng(7)
    m["speckle"] = rng.random((h, w)) < 0.002
    return m


def run_regions(modeling, model, out: Path) -> dict:
    import torch
    from PIL import Image

    entries, arrays = [], {}
    sizes = [(448, 448), (500, 700), (900, 300), (403, 515)]  # (h, w)
    for h, w in sizes:
        tiles = modeling.dynamic_preprocess(Image.new("RGB", (w, h)), model.min_dynamic_patch,
                                            model.max_dynamic_patch, model.image_size, model.use_thumbnail)
        pixel_values = torch.zeros(len(tiles), 3, 1, 1)
        for mname, mask in synthetic_masks(h, w).items():
            key = f"accurate_{h}x{w}_{mname}"
            arrays[key + "_mask_bits"] = np.packbits(mask.reshape(-1))
            outs = {}
            for k in (8, 64, 128):
                idx = model._get_visual_tokens_from_mask_accurate(mask=torch.from_numpy(mask), ori_height=h,
                                                                  ori_width=w, pixel_values=pixel_values,
                                                                  max_tokens_per_object=k)
                arrays[f"{key}_k{k}"] = np.array(idx, np.int64)
                outs[str(k)] = len(idx)
            entries.append(dict(key=key, fn="_get_visual_tokens_from_mask_accurate", height=h, width=w,
                                mask=mname, num_tiles_with_thumbnail=len(tiles), pixels=int(mask.sum()),
                                num_indices=outs))
    for h, w in [(448, 448), (384, 512), (900, 300)]:
        for mname, mask in synthetic_masks(h, w).items():
            key = f"multi_{h}x{w}_{mname}"
            arrays[key + "_mask_bits"] = np.packbits(mask.reshape(-1))
            outs = {}
            for k in (8, 64, 128):
                idx = model._get_visual_tokens_from_mask_multi_simple(mask=torch.from_numpy(mask), ori_height=h,
                                                                      ori_width=w, max_tokens_per_object=k)
                arrays[f"{key}_k{k}"] = np.array(idx, np.int64)
                outs[str(k)] = len(idx)
            entries.append(dict(key=key, fn="_get_visual_tokens_from_mask_multi_simple", height=h, width=w,
                                mask=mname, pixels=int(mask.sum()), num_indices=outs))
    np.savez_compressed(out / "regions.npz", **arrays)
    doc = dict(max_tokens=[8, 64, 128], entries=entries,
               note="indices for the accurate variant are global over the tiles (thumbnail excluded); the multi "
                    "variant's are within one 448 tile (add frame*256 for the frame's offset)")
    (out / "regions.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


# --------------------------------------------------------------------------- main


def _assigned_string(path: Path, name: str) -> str:
    """The string literal assigned to ``name`` anywhere in a Python file (parsed, not executed)."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{path}: no {name} assignment")


def check_system_prompt(official: Path) -> None:
    """SYSTEM_PROMPT must equal the official bench script's ``custom_prompt`` and tscope's SYSTEM_PROMPT."""
    bench = official / "projects" / "terrascope" / "evaluation" / "infer_terrascope_bench.py"
    if _assigned_string(bench, "custom_prompt") != SYSTEM_PROMPT:
        raise SystemExit(f"SYSTEM_PROMPT differs from custom_prompt in {bench}")
    if _assigned_string(REPO / "tscope" / "model" / "config.py", "SYSTEM_PROMPT") != SYSTEM_PROMPT:
        raise SystemExit("SYSTEM_PROMPT differs from tscope.model.config.SYSTEM_PROMPT")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="the TerraScope/ folder of the official checkout")
    ap.add_argument("--joplin", type=Path, default=None, help="xview2-joplin folder (only to crop missing PNGs)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/tscope-official-scratch"))
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--seg-scale", type=float, default=0.75, help="strength of the [SEG] lm_head bias")
    args = ap.parse_args()

    import warnings

    import torch
    import transformers

    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    modeling, sam2 = import_official(args.official.resolve(), args.scratch)
    patch_sam2_builders(sam2)

    check_system_prompt(args.official)

    args.out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    images = load_images(args.out, args.joplin)
    ckpt = args.out / "checkpoint"
    config, built = build_checkpoint(modeling, tok, ckpt, args.seg_scale, list(images.values()))

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpt))
    model, info = modeling.Sa2VAChatModel.from_pretrained(str(ckpt), torch_dtype=torch.float32,
                                                          output_loading_info=True, use_flash_attn=False)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    loaded = model.state_dict()
    assert loaded.keys() == built.keys() and all(torch.equal(loaded[k], built[k]) for k in built)
    model.eval()
    model.preparing_for_generation(tok, torch_dtype=torch.float32)
    model.gen_config = PinnedGenConfig(model.gen_config, GEN_CAP)
    rec = Recorder(model, tok)

    results = []
    for case in cases(tok):
        r = run_case(model, tok, rec, case, images, args.out)
        print(f"{r['name']}: {r['num_generated_ids']} ids, {r['num_seg']} [SEG], stop {r['stop']}, "
              f"mask fractions {[s['mask_fraction'] for s in r['segs']]}", flush=True)
        results.append(r)
    regions = run_regions(modeling, model, args.out)
    print(f"regions: {len(regions['entries'])} masks", flush=True)

    special = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS + INTERNVL_SPECIALS + TERRASCOPE_SPECIALS}
    doc = dict(
        generator="tests/reference/make_official_reference.py",
        official_code="github.com/shuyansy/Earth-Observation-VLMs, TerraScope/projects/terrascope/hf/models",
        environment=dict(torch=torch.__version__, transformers=transformers.__version__, device="cpu",
                         dtype="float32", sam2_autocast="torch.autocast('cuda', bf16) is disabled on CPU: fp32"),
        seed=SEED, gen_cap=GEN_CAP, max_tokens_per_seg=MAX_TOKENS_PER_SEG, system_prompt=SYSTEM_PROMPT,
        special_token_ids=special, eos_token_id=tok.eos_token_id, vocab_size=len(tok),
        sam2_tiny=SAM2_TINY, sam2_config=config["sam2_config"],
        forcing_rule=("wrap language_model.forward; every call whose input is not the single [SEG] token decides "
                      "generated token n (0-based, <REGION> ids excluded); if schedule[n] exists the last logits "
                      "row gets row.max()+1 at that token"),
        cases=results)
    (args.out / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
