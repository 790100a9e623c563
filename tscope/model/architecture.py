"""The TerraScope architecture on transformers' native classes.

``TerraScopeModel`` has three named children:

* ``internvl``: ``InternVLForConditionalGeneration`` -- the vision tower (InternViT,
  ``model.vision_tower``), the projector (``model.multi_modal_projector``, the release's ``mlp1``) and
  the Qwen2 language model (``model.language_model`` + ``lm_head``);
* ``sam2``: ``Sam2Model`` -- the grounding model (Hiera image encoder, prompt encoder, mask decoder);
* ``seg_head``: the release's ``text_hidden_fcs``, Linear(H, H) -> ReLU -> Linear(H, D) -> Dropout(0),
  mapping a ``[SEG]`` last-layer hidden state (H) to a SAM-2 prompt token (D = SAM-2 prompt hidden).

Accessors ``vision_tower``, ``projector``, ``language_model``, ``lm_head`` expose them for training.
The methods are the pieces the interleaved loop (:mod:`tscope.model.interleave`) composes; shapes are
in each docstring. Heavy imports happen when this module is imported (only by model code).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tscope.model.config import TerraScopeConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SamImage:
    """One image encoded by SAM-2 once, reused by every ``[SEG]`` that refers to it.

    ``embeddings``: [feat_s0 (1, C0, 4h, 4w), feat_s1 (1, C1, 2h, 2w), image (1, D, h, w)];
    ``positional``: (1, D, h, w); ``size``: the original (height, width) masks are returned at.
    """

    embeddings: list[torch.Tensor]
    positional: torch.Tensor
    size: tuple[int, int]


class TerraScopeModel(nn.Module):
    def __init__(self, config: TerraScopeConfig, internvl: nn.Module | None = None, sam2: nn.Module | None = None):
        super().__init__()
        from transformers import InternVLForConditionalGeneration, Sam2Model

        self.config = config
        self.internvl = internvl if internvl is not None else InternVLForConditionalGeneration(config.internvl_config())
        self.sam2 = sam2 if sam2 is not None else Sam2Model(config.sam2_config())
        hidden = self.internvl.config.text_config.hidden_size
        prompt_dim = self.sam2.config.prompt_encoder_config.hidden_size
        self.seg_head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, prompt_dim), nn.Dropout(0.0)
        )
        self.sam_encodes = 0  # how many SAM-2 image encodings ran (one per image, not per [SEG])

    # --- named parts -------------------------------------------------------------------------

    @property
    def vision_tower(self) -> nn.Module:
        return self.internvl.model.vision_tower

    @property
    def projector(self) -> nn.Module:
        return self.internvl.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.internvl.model.language_model

    @property
    def lm_head(self) -> nn.Module:
        return self.internvl.lm_head

    @property
    def device(self) -> torch.device:
        return self.seg_head[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.seg_head[0].weight.dtype

    # --- vision ------------------------------------------------------------------------------

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles (T, 3, S, S), normalised -> projected visual tokens (T, N, H), N = tokens_per_side**2."""
        out = self.internvl.model.get_image_features(
            pixel_values=pixel_values.to(self.device, self.vision_dtype),
            vision_feature_layer=self.internvl.config.vision_feature_layer,
            vision_feature_select_strategy=self.internvl.config.vision_feature_select_strategy,
        )
        return out.pooler_output

    @property
    def vision_dtype(self) -> torch.dtype:
        return self.vision_tower.embeddings.patch_embeddings.projection.weight.dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (1, L) -> input embeddings (1, L, H)."""
        return self.language_model.get_input_embeddings()(input_ids.to(self.device))

    def lm(self, inputs_embeds: torch.Tensor, cache=None):
        """Run the language model on (1, L, H) embeddings; returns (last hidden (1, L, H), logits (1, L, V), cache).

        The hidden state is the last layer's output after the final norm, as ``output_hidden_states[-1]``.
        """
        out = self.language_model(inputs_embeds=inputs_embeds, cache=cache, use_cache=True)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype if self.lm_head.weight.dtype.is_floating_point
                                        else hidden.dtype))
        return hidden, logits.float(), out.cache

    # --- grounding ---------------------------------------------------------------------------

    def sam_pixels(self, image: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (H, W, 3) -> (1, 3, S, S) in ``dtype``: PIL bicubic square resize to ``sam_image_size``,
        /255, ImageNet mean/std -- as the release computes it: each step in ``dtype`` (bf16 arithmetic for
        a bf16 model), with mean/std built in bf16 even for fp32 runs (``sam_norm_bf16``)."""
        from PIL import Image

        side = self.config.sam_image_size
        resized = np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC))
        constants = torch.bfloat16 if self.config.sam_norm_bf16 else torch.float32
        mean = torch.tensor(IMAGENET_MEAN, dtype=constants)[:, None, None]
        std = torch.tensor(IMAGENET_STD, dtype=constants)[:, None, None]
        pixels = torch.from_numpy(resized.copy()).permute(2, 0, 1).to(dtype) / 255.0
        pixels -= mean  # in place, as the release does: the result keeps ``dtype``
        pixels /= std
        return pixels[None]

    @torch.no_grad()
    def sam_encode(self, images: list[np.ndarray]) -> list[SamImage]:
        """Encode images (uint8 (H, W, 3) each) with SAM-2's image encoder, batched. Once per image."""
        sam_dtype = self.sam2.mask_decoder.iou_token.weight.dtype
        pixels = torch.cat([self.sam_pixels(im, sam_dtype) for im in images]).to(self.device)
        with self.sam_autocast():
            feats = self.sam2.get_image_embeddings(pixels)
        positional = self.sam2.get_image_wide_positional_embeddings()
        self.sam_encodes += len(images)
        return [
            SamImage([f[i : i + 1] for f in feats], positional, (int(im.shape[0]), int(im.shape[1])))
            for i, im in enumerate(images)
        ]

    def decode_candidates(self, image: SamImage, seg_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[SEG] hidden states (N, H) -> SAM-2's three candidate mask logits (N, 3, h4, w4) and predicted IoUs (N, 3).

        Each prompt token from the seg head is appended to the sparse embedding of the empty point
        (label -1); the dense embedding is the no-mask embedding. Training scores every candidate.
        """
        sam_dtype = self.sam2.mask_decoder.iou_token.weight.dtype
        prompt = self.seg_head(seg_hidden.to(self.dtype)).to(sam_dtype)  # (N, D)
        n = prompt.shape[0]
        points = torch.zeros(1, n, 1, 2, device=self.device, dtype=sam_dtype)
        labels = -torch.ones(1, n, 1, device=self.device, dtype=torch.int32)
        with self.sam_autocast():
            sparse, dense = self.sam2.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                                     input_masks=None)
            sparse = torch.cat([sparse, prompt[None, :, None, :].to(sparse.dtype)], dim=2)  # (1, N, 2, D)
            masks, iou, _, _ = self.sam2.mask_decoder(
                image_embeddings=image.embeddings[-1],
                image_positional_embeddings=image.positional,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
                high_resolution_features=image.embeddings[:-1],
            )
        return masks[0], iou[0]

    def sam_autocast(self):
        """The release runs SAM-2 (encoder and decoder) under bf16 autocast on CUDA, whatever the model's
        dtype; on CPU its autocast is disabled and so is this one."""
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def decode_masks(self, image: SamImage, seg_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[SEG] hidden states (N, H) -> the candidate with the best predicted IoU: logits (N, h4, w4), IoUs (N,)."""
        masks, iou = self.decode_candidates(image, seg_hidden)
        best = iou.argmax(dim=-1)  # (N,)
        rows = torch.arange(masks.shape[0], device=best.device)
        return masks[rows, best], iou[rows, best]

    def upsample_logits(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """:func:`upsample_logits` at this model's SAM-2 input side."""
        return upsample_logits(logits, size, self.config.sam_image_size)

    def masks_from_logits(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """:func:`masks_from_logits` at this model's SAM-2 input side."""
        return masks_from_logits(logits, size, self.config.sam_image_size)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], video_side: int) -> torch.Tensor:
    """Low-res logits (N, h, w) -> float logits (N, H, W) as the release makes them: bilinear to SAM-2's
    square input side ``video_side`` (1024, the video resolution its predictor returns), then bilinear
    to ``size``. Inference and the training loss share it."""
    out = logits[:, None].float()
    for step in ((video_side, video_side), tuple(size)):
        if tuple(out.shape[-2:]) != step:
            out = F.interpolate(out, size=step, mode="bilinear", align_corners=False)
    return out[:, 0]


def masks_from_logits(logits: torch.Tensor, size: tuple[int, int], video_side: int) -> np.ndarray:
    """Low-res logits (N, h, w) -> bool masks (N, H, W): :func:`upsample_logits`, sigmoid > 0.5."""
    return (upsample_logits(logits, size, video_side).sigmoid() > 0.5).cpu().numpy()
