"""The interleaved generation loop of TerraScope (paper, Algorithm 1) over a KV cache.

prefill(prompt with visual tokens) -> greedy step ... on ``[SEG]``: its last-layer hidden state ->
seg head -> SAM-2 mask on the frame it refers to -> region tokens (visual tokens under the mask) fed
as input embeddings -> continue. SAM-2 encodes each image at most once, on its first ``[SEG]``.

Frame selection for several images: the last ``Image: t<i>`` (or ``Image <i>``) written since the
previous ``[SEG]`` picks image i; without one the release's alternation applies (k-th [SEG] -> image
k mod n). With ``sar`` set (optical + SAR), masks are always on the optical image and region tokens
come per position from the more question-relevant modality (:mod:`tscope.model.fusion`).

:func:`recompute` replays a finished generation without cache in one forward pass; tests use it to
prove the cached loop exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from tscope.model.architecture import SamImage, TerraScopeModel
from tscope.model.fusion import fuse_region
from tscope.model.images import TileLayout, tile_image
from tscope.model.regions import select_region_tokens

_FRAME = re.compile(r"image\s*:?\s*t?_?(\d+)", re.IGNORECASE)


@dataclass
class PreparedImage:
    """An image ready for the loop: visual tokens (N, H), their layout, the pixels SAM-2 will see."""

    pixels: np.ndarray
    tokens: torch.Tensor
    layout: TileLayout
    sam: SamImage | None = None


@dataclass
class Generation:
    """What one interleaved generation produced. ``token_ids`` excludes region tokens."""

    text: str
    token_ids: list[int]
    masks: list[np.ndarray] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    regions: list[np.ndarray] = field(default_factory=list)
    region_sar: list[np.ndarray] = field(default_factory=list)
    seg_steps: list[int] = field(default_factory=list)
    forced_seg: bool = False
    prompt_ids: torch.Tensor | None = None
    question_span: tuple[int, int] = (0, 0)


class Tokens:
    """Special-token ids resolved by name through the tokenizer (never hard-coded)."""

    def __init__(self, tokenizer, names):
        self.tokenizer = tokenizer

        def resolve(name: str) -> int:
            tid = tokenizer.convert_tokens_to_ids(name)
            if tid is None or tid == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(tid) != name:
                raise ValueError(f"the tokenizer has no {name!r} token")
            return int(tid)

        self.seg = resolve(names.seg)
        self.region = resolve(names.region)
        self.image_context = resolve(names.image_context)
        self.image_start = resolve(names.image_start)
        self.image_end = resolve(names.image_end)
        self.stop = {resolve(n) for n in names.stop if n in tokenizer.get_vocab()}
        if not self.stop:
            raise ValueError(f"the tokenizer has none of the stop tokens {names.stop}")
        self.names = names


def prepare_images(model: TerraScopeModel, images: list[np.ndarray]) -> list[PreparedImage]:
    """uint8 (H, W, 3) images -> visual tokens; all tiles of all images go through the vision tower at once."""
    cfg = model.config
    tiled = [tile_image(im, cfg.image_size, cfg.tokens_per_side, cfg.max_tiles, cfg.use_thumbnail) for im in images]
    pixels = torch.from_numpy(np.concatenate([t for t, _ in tiled]))
    with torch.no_grad():
        tokens = model.image_tokens(pixels)  # (sum T, N, H)
    out, start = [], 0
    for image, (tiles, layout) in zip(images, tiled, strict=True):
        n = tiles.shape[0]
        out.append(PreparedImage(image, tokens[start:start + n].reshape(-1, tokens.shape[-1]), layout))
        start += n
    return out


def build_prompt(tokenizer, tokens: Tokens, system_prompt: str, question: str,
                 layouts: list[TileLayout]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Qwen chat prompt ids (1, L) with one ``<img><IMG_CONTEXT>*N</img>`` block per image, and the
    (start, end) span of the question's tokens."""
    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    ids = enc(f"{tokens.names.im_start}user\n{system_prompt}")
    for layout in layouts:
        ids += [tokens.image_start] + [tokens.image_context] * layout.tokens + [tokens.image_end] + enc("\n")
    start = len(ids)
    ids += enc(question)
    span = (start, len(ids))
    ids += enc(f"{tokens.names.im_end}\n{tokens.names.im_start}assistant\n")
    return torch.tensor([ids]), span


def prompt_embeddings(model: TerraScopeModel, ids: torch.Tensor, tokens: Tokens,
                      images: list[PreparedImage]) -> torch.Tensor:
    """(1, L) ids -> (1, L, H) embeddings with visual tokens at the ``<IMG_CONTEXT>`` places, in image order."""
    embeds = model.embed(ids).clone()
    where = (ids[0] == tokens.image_context).nonzero()[:, 0]
    visual = torch.cat([im.tokens for im in images]).to(embeds.dtype)
    if len(where) != visual.shape[0]:
        raise ValueError(f"prompt has {len(where)} image-context tokens for {visual.shape[0]} visual tokens")
    embeds[0, where.to(embeds.device)] = visual
    return embeds


def choose_frame(text_since_last_seg: str, seg_count: int, n_images: int) -> int:
    """The image a ``[SEG]`` refers to: the last "Image: t<i>" before it, else the release's alternation."""
    if n_images == 1:
        return 0
    found = _FRAME.findall(text_since_last_seg)
    if found:
        index = int(found[-1]) - 1
        if 0 <= index < n_images:
            return index
    return seg_count % n_images


class _Loop:
    def __init__(self, model, tokens, images, sar, question_embeds):
        self.model, self.tokens, self.images, self.sar = model, tokens, images, sar
        self.question = question_embeds

    def seg(self, hidden: torch.Tensor, frame: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor, np.ndarray]:
        """[SEG] hidden (H,) -> mask on the frame, region token indices, their embeddings (K, H), SAR flags."""
        image = self.images[frame]
        if image.sam is None:
            image.sam = self.model.sam_encode([image.pixels])[0]
        logits, _ = self.model.decode_masks(image.sam, hidden[None])
        mask = self.model.masks_from_logits(logits, image.sam.size)[0]
        index = select_region_tokens(mask, image.layout, self.model.config.region)
        if self.sar is not None and frame == 0:
            emb, flags = fuse_region(image.tokens, self.sar.tokens, self.question, index)
        else:
            emb, flags = image.tokens[torch.as_tensor(index)], np.zeros(len(index), np.uint8)
        return mask, index, emb, flags


@torch.no_grad()
def generate(model: TerraScopeModel, tokenizer, images: list[np.ndarray], question: str,
             max_new_tokens: int | None = None, sar: np.ndarray | None = None, force_seg: bool = False,
             prepared: list[PreparedImage] | None = None, override=None) -> Generation:
    """Greedy interleaved generation for ``question`` about ``images`` (uint8 (H, W, 3) each).

    ``sar``: a SAR rendering of ``images[0]`` (same size) for optical+SAR token selection.
    ``force_seg``: if the answer has no ``[SEG]``, feed one at the end so a mask is produced (used for
    the referring fallback prompt). ``prepared`` skips the vision tower for images already encoded.
    ``override(step, greedy_token) -> token`` replaces the greedy choice (benchmarks use it to fix the
    number of generated tokens and [SEG]s).
    """
    cfg = model.config
    tokens = Tokens(tokenizer, cfg.tokens)
    all_images = list(images) + ([sar] if sar is not None else [])
    prepared = prepared or prepare_images(model, all_images)
    optical, sar_image = (prepared[:-1], prepared[-1]) if sar is not None else (prepared, None)
    ids, span = build_prompt(tokenizer, tokens, cfg.system_prompt, question, [p.layout for p in prepared])
    embeds = prompt_embeddings(model, ids, tokens, prepared)
    loop = _Loop(model, tokens, optical, sar_image, embeds[0, span[0]:span[1]])
    _, logits, cache = model.lm(embeds)
    out = Generation(text="", token_ids=[], prompt_ids=ids, question_span=span)
    since_seg: list[int] = []
    limit = max_new_tokens or cfg.max_new_tokens
    for step in range(limit):
        nxt = int(logits[0, -1].argmax())
        if override is not None:
            nxt = override(step, nxt)
        if nxt in tokens.stop:
            break
        hidden, logits, cache = _feed_token(model, nxt, cache, out)
        if nxt == tokens.seg:
            logits, cache = _on_seg(loop, tokenizer, hidden, since_seg, out, cache)
            since_seg = []
        else:
            since_seg.append(nxt)
    if force_seg and not out.masks:
        hidden, logits, cache = _feed_token(model, tokens.seg, cache, out)
        _on_seg(loop, tokenizer, hidden, since_seg, out, cache)
        out.forced_seg = True
    out.text = tokenizer.decode(out.token_ids, skip_special_tokens=False)
    return out


def _feed_token(model, token: int, cache, out: Generation):
    hidden, logits, cache = model.lm(model.embed(torch.tensor([[token]])), cache)
    out.token_ids.append(token)
    return hidden[0, -1], logits, cache


def _on_seg(loop: _Loop, tokenizer, hidden, since_seg, out: Generation, cache):
    frame = choose_frame(tokenizer.decode(since_seg, skip_special_tokens=True), len(out.masks), len(loop.images))
    mask, index, emb, flags = loop.seg(hidden, frame)
    out.seg_steps.append(len(out.token_ids) - 1)
    out.masks.append(mask)
    out.frames.append(frame)
    out.regions.append(index)
    out.region_sar.append(flags)
    _, logits, cache = loop.model.lm(emb[None].to(loop.model.dtype), cache)
    return logits, cache


@torch.no_grad()
def recompute(model: TerraScopeModel, tokenizer, images: list[np.ndarray], question: str, gen: Generation,
              sar: np.ndarray | None = None) -> tuple[list[int], list[np.ndarray]]:
    """Replay ``gen`` without a cache: one forward over prompt + generated tokens + region tokens.

    Returns the greedy prediction at each generated position and the masks decoded from the [SEG]
    positions' hidden states; for an exact loop they equal ``gen.token_ids`` and ``gen.masks``.
    """
    tokens = Tokens(tokenizer, model.config.tokens)
    prepared = prepare_images(model, list(images) + ([sar] if sar is not None else []))
    optical = prepared[:-1] if sar is not None else prepared
    embeds = prompt_embeddings(model, gen.prompt_ids, tokens, prepared)
    pieces = [embeds[0]]
    positions = []  # index in the full sequence of each generated token
    cursor = embeds.shape[1]
    seg_i = 0
    for token in gen.token_ids:
        pieces.append(model.embed(torch.tensor([[token]]))[0])
        positions.append(cursor)
        cursor += 1
        if token == tokens.seg and seg_i < len(gen.regions):
            frame, index = gen.frames[seg_i], gen.regions[seg_i]
            image = optical[frame]
            if sar is not None and frame == 0:
                emb, _ = fuse_region(image.tokens, prepared[-1].tokens,
                                     embeds[0, gen.question_span[0]:gen.question_span[1]], index)
            else:
                emb = image.tokens[torch.as_tensor(index)]
            pieces.append(emb.to(embeds.dtype))
            cursor += len(index)
            seg_i += 1
    full = torch.cat(pieces)[None]
    hidden, logits, _ = model.lm(full)
    predicted = [int(logits[0, p - 1].argmax()) if i == 0 or gen.token_ids[i - 1] != tokens.seg
                 else None for i, p in enumerate(positions)]
    # After a [SEG] the next token is predicted from the last region token, not from [SEG] itself.
    ends = iter([positions[s] + len(gen.regions[k]) for k, s in enumerate(gen.seg_steps)])
    for i in range(len(positions)):
        if predicted[i] is None:
            predicted[i] = int(logits[0, next(ends)].argmax())
    masks = []
    for k, step in enumerate(gen.seg_steps):
        image = optical[gen.frames[k]]
        sam = model.sam_encode([image.pixels])[0]
        logit, _ = model.decode_masks(sam, hidden[0, positions[step]][None])
        masks.append(model.masks_from_logits(logit, sam.size)[0])
    return predicted, masks
