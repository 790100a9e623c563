"""State-dict key layouts: the released TerraScope checkpoint (``sa2va_chat``) <-> tscope's native one.

The released layout (``vision_model.*`` InternViT with fused qkv, ``mlp1.*``, ``language_model.*``
Qwen2ForCausalLM, ``grounding_encoder.sam2_model.*`` from the ``sam2`` package, ``text_hidden_fcs.*``)
is remapped onto :class:`~tscope.model.architecture.TerraScopeModel`, whose children are transformers'
native classes: ``internvl.*`` (InternVLForConditionalGeneration), ``sam2.*`` (Sam2Model),
``seg_head.*``. The renames follow transformers' own InternVL and SAM-2 conversion rules; SAM-2's
video-memory modules are not used for single images and are dropped (listed in ``DROPPED``).

Functions here work on plain ``{key: tensor}`` dicts; the tensors are only sliced or concatenated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SAM_PREFIX = "grounding_encoder.sam2_model."

# SAM-2 parts that only the video predictor uses (memory attention / encoder, object pointers).
DROPPED = (
    "memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
    "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.", "no_obj_embed_spatial",
)

# Ordered (pattern, replacement) rules for single-name renames. Each maps a whole key.
_VISION = [
    (r"^vision_model\.embeddings\.class_embedding$", "internvl.model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "internvl.model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.embeddings\.patch_embedding\.(weight|bias)$",
     r"internvl.model.vision_tower.embeddings.patch_embeddings.projection.\1"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)$",
     r"internvl.model.vision_tower.encoder.layer.\1.attention.projection_layer.\2"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.(weight|bias)$",
     r"internvl.model.vision_tower.encoder.layer.\1.attention.\2.\3"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls(\d)$", r"internvl.model.vision_tower.encoder.layer.\1.lambda_\2"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc\d)\.(weight|bias)$",
     r"internvl.model.vision_tower.encoder.layer.\1.mlp.\2.\3"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)$",
     r"internvl.model.vision_tower.encoder.layer.\1.layernorm_before.\2"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)$",
     r"internvl.model.vision_tower.encoder.layer.\1.layernorm_after.\2"),
]
_PROJECTOR = [
    (r"^mlp1\.0\.(weight|bias)$", r"internvl.model.multi_modal_projector.layer_norm.\1"),
    (r"^mlp1\.1\.(weight|bias)$", r"internvl.model.multi_modal_projector.linear_1.\1"),
    (r"^mlp1\.3\.(weight|bias)$", r"internvl.model.multi_modal_projector.linear_2.\1"),
]
_LANGUAGE = [
    (r"^language_model\.lm_head\.weight$", "internvl.lm_head.weight"),
    (r"^language_model\.model\.(.+)$", r"internvl.model.language_model.\1"),
]
_SEG_HEAD = [(r"^text_hidden_fcs\.(\d+)\.(weight|bias)$", r"seg_head.\1.\2")]
# SAM-2 (names after the grounding_encoder.sam2_model. prefix).
_SAM = [
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.norm(\d)\.(weight|bias)$",
     r"vision_encoder.backbone.blocks.\1.layer_norm\2.\3"),
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.mlp\.layers\.0\.(weight|bias)$",
     r"vision_encoder.backbone.blocks.\1.mlp.proj_in.\2"),
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.mlp\.layers\.1\.(weight|bias)$",
     r"vision_encoder.backbone.blocks.\1.mlp.proj_out.\2"),
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.(attn\.qkv|attn\.proj|proj)\.(weight|bias)$",
     r"vision_encoder.backbone.blocks.\1.\2.\3"),
    (r"^image_encoder\.trunk\.patch_embed\.proj\.(weight|bias)$", r"vision_encoder.backbone.patch_embed.projection.\1"),
    (r"^image_encoder\.trunk\.(pos_embed|pos_embed_window)$", r"vision_encoder.backbone.\1"),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.(weight|bias)$", r"vision_encoder.neck.convs.\1.\2"),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^sam_prompt_encoder\.mask_downscaling\.0\.(weight|bias)$", r"prompt_encoder.mask_embed.conv1.\1"),
    (r"^sam_prompt_encoder\.mask_downscaling\.1\.(weight|bias)$", r"prompt_encoder.mask_embed.layer_norm1.\1"),
    (r"^sam_prompt_encoder\.mask_downscaling\.3\.(weight|bias)$", r"prompt_encoder.mask_embed.conv2.\1"),
    (r"^sam_prompt_encoder\.mask_downscaling\.4\.(weight|bias)$", r"prompt_encoder.mask_embed.layer_norm2.\1"),
    (r"^sam_prompt_encoder\.mask_downscaling\.6\.(weight|bias)$", r"prompt_encoder.mask_embed.conv3.\1"),
    (r"^sam_prompt_encoder\.(no_mask_embed|not_a_point_embed)\.weight$", r"prompt_encoder.\1.weight"),
    (r"^sam_mask_decoder\.output_upscaling\.0\.(weight|bias)$", r"mask_decoder.upscale_conv1.\1"),
    (r"^sam_mask_decoder\.output_upscaling\.1\.(weight|bias)$", r"mask_decoder.upscale_layer_norm.\1"),
    (r"^sam_mask_decoder\.output_upscaling\.3\.(weight|bias)$", r"mask_decoder.upscale_conv2.\1"),
    (r"^sam_mask_decoder\.(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+)"
     r"\.layers\.0\.(weight|bias)$", r"mask_decoder.\1.proj_in.\2"),
    (r"^sam_mask_decoder\.(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+)"
     r"\.layers\.1\.(weight|bias)$", r"mask_decoder.\1.layers.0.\2"),
    (r"^sam_mask_decoder\.(iou_prediction_head|pred_obj_score_head|output_hypernetworks_mlps\.\d+)"
     r"\.layers\.2\.(weight|bias)$", r"mask_decoder.\1.proj_out.\2"),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.0\.(weight|bias)$",
     r"mask_decoder.transformer.layers.\1.mlp.proj_in.\2"),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.1\.(weight|bias)$",
     r"mask_decoder.transformer.layers.\1.mlp.proj_out.\2"),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.(weight|bias)$",
     r"mask_decoder.transformer.layers.\1.layer_norm\2.\3"),
    (r"^sam_mask_decoder\.transformer\.norm_final_attn\.(weight|bias)$",
     r"mask_decoder.transformer.layer_norm_final_attn.\1"),
    (r"^sam_mask_decoder\.transformer\.(layers\.\d+\.\w+|final_attn_token_to_image)\.out_proj\.(weight|bias)$",
     r"mask_decoder.transformer.\1.o_proj.\2"),
    (r"^sam_mask_decoder\.transformer\.(layers\.\d+\.\w+|final_attn_token_to_image)\.([qkv]_proj)\.(weight|bias)$",
     r"mask_decoder.transformer.\1.\2.\3"),
    (r"^sam_mask_decoder\.(conv_s0|conv_s1)\.(weight|bias)$", r"mask_decoder.\1.\2"),
    (r"^sam_mask_decoder\.(iou_token|mask_tokens|obj_score_token)\.weight$", r"mask_decoder.\1.weight"),
]
_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_POINT = re.compile(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$")
_GAUSS = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


class KeyError_(ValueError):
    """A checkpoint whose keys do not fit the layout; the message names the keys."""


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def official_to_native(state: Mapping[str, object]) -> tuple[dict[str, object], list[str]]:
    """Remap a released-layout state dict onto tscope's native keys.

    Returns ``(native_state, dropped_keys)``. Raises :class:`KeyError_` naming keys that fit no rule.
    Fused InternViT ``attn.qkv`` tensors (3D, D) are split into q/k/v (D, D) each; SAM-2's four point
    embeddings (1, 256) become one (4, 256) table; the prompt encoder's Gaussian matrix is shared with
    the image-wide positional embedding, as transformers' Sam2Model expects.
    """
    import torch

    out: dict[str, object] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    points: dict[int, object] = {}
    for key, value in state.items():
        if key.startswith(SAM_PREFIX):
            name = key[len(SAM_PREFIX):]
            if name.startswith(DROPPED):
                dropped.append(key)
                continue
            if name == _GAUSS:
                out["sam2.prompt_encoder.shared_embedding.positional_embedding"] = value
                out["sam2.shared_image_embedding.positional_embedding"] = value
                continue
            m = _POINT.match(name)
            if m:
                points[int(m.group(1))] = value
                continue
            new = _rename(name, _SAM)
            if new is None:
                unknown.append(key)
            else:
                out["sam2." + new] = value
            continue
        m = _QKV.match(key)
        if m:
            layer, kind = m.groups()
            q, k, v = torch.chunk(value, 3, dim=0)
            base = f"internvl.model.vision_tower.encoder.layer.{layer}.attention"
            out[f"{base}.q_proj.{kind}"], out[f"{base}.k_proj.{kind}"], out[f"{base}.v_proj.{kind}"] = q, k, v
            continue
        new = _rename(key, _VISION + _PROJECTOR + _LANGUAGE + _SEG_HEAD)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if points:
        out["sam2.prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)], dim=0)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise KeyError_(f"keys that fit no TerraScope layout rule: {shown}")
    return out, dropped


# --- native -> official (export, and the tests' writer of released-layout checkpoints) ----------

def _invert(rules: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    """Turn ``(official_regex, native_template)`` rules into ``(native_regex, official_template)``."""
    inverted = []
    for pattern, repl in rules:
        # Capture groups in the native template (\1, \2 ...) correspond, in order, to the official pattern's.
        official_groups = re.findall(r"\((?!\?)[^)]*\)", pattern.strip("^$"))
        native = re.escape(repl).replace(r"\\", "\\")
        for i, grp in enumerate(official_groups, start=1):
            native = native.replace(f"\\{i}", f"(?P<g{i}>{grp[1:-1]})", 1)
        official = pattern.strip("^$")
        for i, grp in enumerate(official_groups, start=1):
            official = official.replace(grp, f"\\g<g{i}>", 1)
        official = official.replace("\\.", ".")
        inverted.append((re.compile("^" + native + "$"), official))
    return inverted


def native_to_official(state: Mapping[str, object]) -> dict[str, object]:
    """The inverse of :func:`official_to_native` for the modules single-image inference uses."""
    import torch

    vision = _invert(_VISION + _PROJECTOR + _LANGUAGE + _SEG_HEAD)
    sam = _invert(_SAM)
    out: dict[str, object] = {}
    qkv: dict[tuple[str, str], dict[str, object]] = {}
    for key, value in state.items():
        m = re.match(r"^internvl\.model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$",
                     key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        if key == "sam2.shared_image_embedding.positional_embedding":
            continue
        if key == "sam2.prompt_encoder.shared_embedding.positional_embedding":
            out[SAM_PREFIX + _GAUSS] = value
            continue
        if key == "sam2.prompt_encoder.point_embed.weight":
            for i in range(value.shape[0]):
                out[f"{SAM_PREFIX}sam_prompt_encoder.point_embeddings.{i}.weight"] = value[i : i + 1]
            continue
        table, name, prefix = (sam, key[5:], SAM_PREFIX) if key.startswith("sam2.") else (vision, key, "")
        for pattern, template in table:
            m = pattern.match(name)
            if m:
                out[prefix + m.expand(template)] = value
                break
        else:
            raise KeyError_(f"native key {key!r} has no released-layout name")
    for (layer, kind), parts in qkv.items():
        out[f"vision_model.encoder.layers.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def key_pattern(key: str) -> str:
    """``a.3.b.12.c`` -> ``a.{i}.b.{i}.c``: the form of the published key list."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "{i}", key)
