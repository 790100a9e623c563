"""Teacher forcing: one training sample -> the interleaved sequence the model sees, and its losses.

The sequence is the inference prompt (:func:`tscope.model.interleave.build_prompt` on
:func:`~tscope.model.interleave.user_text`: system text, the image blocks -- one image dynamically
tiled, each image of a pair or of optical + SAR one tile, as the release feeds them -- the question, the
assistant header) followed by the ground-truth gpt turn and ``<|im_end|>``. Right after every ``[SEG]``
the visual tokens under that ``[SEG]``'s *ground-truth* mask are inserted as input embeddings (selected
by the model's region rule, :func:`tscope.model.regions.select_region_tokens`, as at inference; for
optical+SAR samples each position takes the modality the release's query selection picks,
:func:`tscope.model.fusion.fuse_region`, the query being every text token of the sequence). Labels
are ``-100`` on the prompt, image and region positions, so only the gpt turn (and its ``<|im_end|>``)
is predicted. Each ``[SEG]``'s last-layer hidden state goes through the seg head to SAM-2's mask
decoder on the image of its frame; the mask loss compares SAM-2's candidates with the ground truth
(:meth:`TerraScopeModel.decode_candidates`, :func:`tscope.train.losses.candidate_seg_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from tscope.train.config import LossRecipe
from tscope.train.dataset import Sample
from tscope.train.losses import IGNORE, candidate_seg_loss, lm_loss, mask_iou


class TooLong(ValueError):
    """The sample's sequence exceeds ``max_length``; the trainer skips it."""


@dataclass
class TeacherInputs:
    """``embeds`` (1, L, H) input embeddings; ``labels`` (L,) token ids or -100; ``seg_positions``: index
    of each [SEG] in the sequence; ``region_spans``: (start, end) of the region tokens after each [SEG];
    ``region_index``: the visual-token indices inserted per [SEG]; ``frames``: the image per [SEG]."""

    embeds: torch.Tensor
    labels: torch.Tensor
    seg_positions: list[int]
    region_spans: list[tuple[int, int]]
    region_index: list[np.ndarray]
    frames: list[int]
    region_sar: list[np.ndarray] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class SequencePlan:
    """What a sample's sequence will hold, known before any model compute: the tiled images and their
    layouts, the prompt ids (1, P), the answer ids, the visual-token indices inserted after each [SEG],
    and the total ``length``."""

    tiled: list
    prompt_ids: torch.Tensor
    answer_ids: list[int]
    region_index: list[np.ndarray]
    length: int


def plan_sequence(model, tokenizer, sample: Sample, max_length: int | None = None) -> SequencePlan:
    """Tokenise and tile ``sample`` (no model forward); raises :class:`TooLong` beyond ``max_length``."""
    from tscope.model.images import model_tiles
    from tscope.model.interleave import SAR_IMAGE_PREFIX, Tokens, build_prompt
    from tscope.model.prompt import user_text
    from tscope.model.regions import select_region_tokens

    cfg = model.config
    tokens = Tokens(tokenizer, cfg.tokens)
    pictures = list(sample.images) + ([sample.sar] if sample.sar is not None else [])
    tiled = model_tiles(pictures, cfg.image_size, cfg.tokens_per_side, cfg.max_tiles, cfg.use_thumbnail)
    layouts = [layout for _, layout in tiled]
    prompt_ids = build_prompt(tokenizer, cfg.tokens, user_text(sample.question, cfg.system_prompt), layouts,
                              SAR_IMAGE_PREFIX if sample.sar is not None else "")
    answer_ids = tokenizer.encode(sample.answer + cfg.tokens.im_end, add_special_tokens=False)
    n_seg = answer_ids.count(tokens.seg)
    if n_seg != len(sample.masks):
        raise ValueError(f"sample {sample.id}: the tokenizer finds {n_seg} [SEG] for {len(sample.masks)} masks")
    total = prompt_ids.shape[1] + len(answer_ids)
    region_index = []
    for k, mask in enumerate(sample.masks):
        region_index.append(select_region_tokens(mask, layouts[sample.frames[k]], cfg.image_size, cfg.region))
    total += sum(len(i) for i in region_index)
    if max_length and total > max_length:
        raise TooLong(f"sample {sample.id}: {total} tokens > max_length {max_length}")
    return SequencePlan(tiled, prompt_ids, answer_ids, region_index, total)


def build_inputs(model, tokenizer, sample: Sample, max_length: int | None = None,
                 plan: SequencePlan | None = None) -> TeacherInputs:
    """Sample -> :class:`TeacherInputs`. Visual tokens keep their graph (the projector may train)."""
    from tscope.model.fusion import fuse_region
    from tscope.model.interleave import Tokens, prompt_embeddings, text_positions

    plan = plan or plan_sequence(model, tokenizer, sample, max_length)
    tokens = Tokens(tokenizer, model.config.tokens)
    tiled, prompt_ids, answer_ids, region_index = plan.tiled, plan.prompt_ids, plan.answer_ids, plan.region_index
    pixels = torch.from_numpy(np.concatenate([t for t, _ in tiled]))
    visual = model.image_tokens(pixels)  # (sum T, N, H)
    per_image, start = [], 0
    for tiles, _ in tiled:
        per_image.append(visual[start:start + tiles.shape[0]].reshape(-1, visual.shape[-1]))
        start += tiles.shape[0]

    # prompt_embeddings reads only `.tokens` of each prepared image; these keep their autograd graph.
    prompt = prompt_embeddings(model, prompt_ids, tokens, [SimpleNamespace(tokens=t) for t in per_image])[0]
    answer_embeds = model.embed(torch.tensor([answer_ids]))[0]
    query = torch.cat([prompt[text_positions(prompt_ids, tokens).to(prompt.device)], answer_embeds])
    pieces = [prompt]
    labels = [torch.full((prompt.shape[0],), IGNORE, dtype=torch.long)]
    seg_positions, region_spans, region_sar = [], [], []
    cursor, seg_k, run_start = prompt.shape[0], 0, 0
    for j, tid in enumerate(answer_ids):
        if tid != tokens.seg:
            continue
        # The text up to and including this [SEG], then its region tokens.
        pieces.append(answer_embeds[run_start:j + 1])
        labels.append(torch.tensor(answer_ids[run_start:j + 1], dtype=torch.long))
        cursor += j + 1 - run_start
        seg_positions.append(cursor - 1)
        index, frame = region_index[seg_k], sample.frames[seg_k]
        if sample.sar is not None and frame == 0:
            emb, flags = fuse_region(per_image[0], per_image[-1], query, index)
        else:
            emb, flags = per_image[frame][torch.as_tensor(index, device=per_image[frame].device)], \
                np.zeros(len(index), np.uint8)
        pieces.append(emb.to(prompt.dtype))
        labels.append(torch.full((len(index),), IGNORE, dtype=torch.long))
        region_spans.append((cursor, cursor + len(index)))
        region_sar.append(flags)
        cursor += len(index)
        run_start, seg_k = j + 1, seg_k + 1
    pieces.append(answer_embeds[run_start:])
    labels.append(torch.tensor(answer_ids[run_start:], dtype=torch.long))
    return TeacherInputs(torch.cat(pieces)[None], torch.cat(labels), seg_positions, region_spans, region_index,
                         list(sample.frames), region_sar)


class TeacherForcing(nn.Module):
    """The training forward as one module (so DDP/DeepSpeed wrappers see every trainable parameter).

    ``forward(sample)`` returns ``{"loss": tensor, "lm_loss", "seg_loss", "bce", "dice", "iou_mse": float,
    "iou": [IoU of the mask inference would keep, per [SEG]], "tokens", "length": int}``;
    loss = ``loss.lm_weight`` x LM + :func:`~tscope.train.losses.candidate_seg_loss` (the recipe's mask loss;
    default the release's).
    """

    def __init__(self, model, tokenizer, loss: LossRecipe | None = None, max_length: int | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.loss_recipe = loss or LossRecipe()
        self.max_length = max_length

    def plan(self, sample: Sample) -> SequencePlan:
        """Raises :class:`TooLong` before any forward, so the trainer can skip outside DDP's wrapper
        (a forward that fails inside it has already joined DDP's per-forward collectives)."""
        return plan_sequence(self.model, self.tokenizer, sample, self.max_length)

    def forward(self, sample: Sample | None, plan: SequencePlan | None = None, seed: int | None = None) -> dict:
        """``seed`` seeds the mask loss's point sampling (torch's default RNG if None): the trainer derives
        it from (recipe seed, step, sample), so a sample's points do not depend on which process or
        in which order it is forwarded."""
        model = self.model
        if sample is None:
            return self.placeholder()
        inputs = build_inputs(model, self.tokenizer, sample, self.max_length, plan)
        out = model.language_model(inputs_embeds=inputs.embeds.to(model.device), use_cache=False)
        hidden = out.last_hidden_state  # (1, L, H)
        logits = model.lm_head(hidden.to(model.lm_head.weight.dtype))[0]  # (L, V)
        lm = lm_loss(logits, inputs.labels)
        loss = self.loss_recipe.lm_weight * lm
        result = {"lm_loss": float(lm.detach()), "seg_loss": 0.0, "bce": 0.0, "dice": 0.0, "iou_mse": 0.0, "iou": [],
                  "tokens": int((inputs.labels != IGNORE).sum()), "length": inputs.length}
        if inputs.seg_positions:
            seg_total, bce, dice, iou_mse = 0.0, 0.0, 0.0, 0.0
            ious: list[float | None] = [None] * len(inputs.seg_positions)
            generator = None
            if seed is not None:
                generator = torch.Generator(device=hidden.device)
                generator.manual_seed(seed)
            for frame in sorted(set(inputs.frames)):
                ks = [k for k, f in enumerate(inputs.frames) if f == frame]
                sam = model.sam_encode([sample.images[frame]])[0]  # image encoder frozen: no graph
                seg_hidden = hidden[0, [inputs.seg_positions[k] for k in ks]]
                cands, iou_pred = model.decode_candidates(sam, seg_hidden)  # (n, 3, h, w), (n, 3)
                target = torch.from_numpy(np.stack([sample.masks[k] for k in ks])).to(cands.device)
                part, parts, kept = candidate_seg_loss(cands, iou_pred, target, model.config.sam_image_size,
                                                       self.loss_recipe, generator)
                mask_logits = cands[torch.arange(len(ks), device=kept.device), kept]
                weight = len(ks) / len(inputs.seg_positions)
                seg_total = seg_total + part * weight
                bce += parts["bce"] * weight
                dice += parts["dice"] * weight
                iou_mse += parts["iou_mse"] * weight
                for k, v in zip(ks, mask_iou(mask_logits, target, model.config.sam_image_size), strict=True):
                    ious[k] = v
            loss = loss + seg_total
            result.update(seg_loss=float(seg_total.detach()), bce=bce, dice=dice, iou_mse=iou_mse, iou=ious)
        result["loss"] = loss
        return result

    def placeholder(self) -> dict:
        """A zero loss over every trainable parameter, for a sample that cannot train (too long, or
        nothing trainable in it): its backward keeps every process's count of backward passes, and
        so DDP's gradient all-reduce and DeepSpeed's accumulation boundary, in step."""
        zero = sum((p * 0).sum() for p in self.model.parameters() if p.requires_grad)
        return {"loss": zero, "lm_loss": 0.0, "seg_loss": 0.0, "bce": 0.0, "dice": 0.0, "iou_mse": 0.0, "iou": [],
                "tokens": 0, "length": 0}
