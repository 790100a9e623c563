"""The interleaved generation loop of TerraScope over a KV cache, as the released inference code runs it.

``predict_forward_with_grounding`` (one image) and ``predict_forward_with_grounding_multi`` (several)
of the release are the specification:

* prompt: ``<|im_start|>user\\n{text}<|im_end|>\\n<|im_start|>assistant\\n`` where every ``<image>`` of
  ``text`` becomes the image blocks ``<img><IMG_CONTEXT>*N</img>`` (joined by newlines), tokenised in
  one piece; one image is dynamically tiled, each of several images is one tile (:mod:`images`);
* greedy decoding; on ``[SEG]`` its last-layer hidden state -> seg head -> SAM-2 mask (on every image
  of a multi-image prompt, all returned at the first image's size, as the release does) -> region
  tokens of the image the [SEG] refers to (:mod:`regions`) fed as input embeddings -> continue;
* stop on the tokenizer's eos token or the release's stop ids, after ``max_new_tokens`` generated ids
  (region tokens count, as in the release) or after ``max_segs`` ``[SEG]`` (release: 20 iterations).

SAM-2 encodes each image at most once. With ``sar`` (optical + SAR, which the release trains but has no
inference path for) the prompt holds the optical and the SAR image as a pair, masks are decoded on the
optical image, and each region token comes from the modality the training code's query selection
picks (:mod:`fusion`), the query being the text tokens present at the ``[SEG]``.

:func:`recompute` replays a finished generation without cache in one forward pass; tests use it to
prove the cached loop exact.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tscope.model.architecture import SamImage, TerraScopeModel
from tscope.model.fusion import fuse_region
from tscope.model.images import TileLayout, model_tiles
from tscope.model.prompt import IMAGE
from tscope.model.regions import select_region_tokens

_FRAME = re.compile(r"image\s*:?\s*t?_?(\d+)", re.IGNORECASE)

# ``override(n, greedy_id) -> id`` may replace the greedy choice of generated token n (region tokens
# not counted); tests and benchmarks use it to fix the [SEG] schedule and the output length.
Override = Callable[[int, int], int]


@dataclass
class PreparedImage:
    """An image ready for the loop: visual tokens (N, H), their layout, the pixels SAM-2 will see."""

    pixels: np.ndarray
    tokens: torch.Tensor
    layout: TileLayout
    sam: SamImage | None = None


@dataclass
class Generation:
    """What one interleaved generation produced.

    ``token_ids``: the generated ids without region tokens (a final stop token included, as the
    release records it); ``all_ids``: with the ``<REGION>`` ids after each [SEG], as the release
    returns them. Per [SEG] k: ``masks[k]`` bool (H, W) on the image it refers to (``frames[k]``),
    ``frame_masks[k]`` (n_images, H, W) its masks on every image of a multi-image prompt, ``regions[k]``
    the visual-token indices fed back (in feed order), ``region_sar[k]`` 1 where SAR was chosen,
    ``seg_steps[k]`` its index in ``token_ids``, ``seg_hidden[k]`` its last-layer hidden state (H,).
    ``stop``: why generation ended (``eos``, ``stop-id``, ``max_new_tokens``, ``max_segs``).
    """

    text: str
    token_ids: list[int]
    all_ids: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    frame_masks: list[np.ndarray] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    regions: list[np.ndarray] = field(default_factory=list)
    region_sar: list[np.ndarray] = field(default_factory=list)
    seg_steps: list[int] = field(default_factory=list)
    seg_hidden: list[torch.Tensor] = field(default_factory=list)
    stop: str = ""
    prompt_ids: torch.Tensor | None = None


class Tokens:
    """Special-token ids resolved through the tokenizer, and the stop ids of a prompt with ``n_images``."""

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
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token")
        self.eos = int(tokenizer.eos_token_id)
        self.names = names

    def stop_ids(self, n_images: int, vocab_size: int) -> set[int]:
        """The eos id and the release's stop ids for one image / several (those the model can emit)."""
        release = self.names.release_stop_single if n_images == 1 else self.names.release_stop_pair
        return {self.eos} | {i for i in release if i < vocab_size}


# The release's optical+SAR training data (SAR_RGB_Dataset) puts its system text, a triple-quoted string
# ending in a newline and 8 spaces of source indentation, right before the image blocks: the released
# weights saw optical+SAR prompts only in that form.
SAR_IMAGE_PREFIX = " " * 8


def build_prompt(tokenizer, names, text: str, layouts: list[TileLayout], image_prefix: str = "") -> torch.Tensor:
    """Prompt ids (1, L): ``text`` with its ``<image>`` replaced by ``image_prefix`` and the image blocks,
    in the chat template (``image_prefix``: :data:`SAR_IMAGE_PREFIX` for optical + SAR)."""
    if IMAGE not in text:
        raise ValueError(f"the prompt text has no {IMAGE} placeholder")
    blocks = "\n".join(f"{names.image_start}{names.image_context * layout.tokens}{names.image_end}"
                       for layout in layouts)
    body = text.replace(IMAGE, image_prefix + blocks)
    full = f"{names.im_start}user\n{body}{names.im_end}\n{names.im_start}assistant\n"
    return torch.tensor([tokenizer.encode(full)])


def prepare_batch(model: TerraScopeModel, groups: list[list[np.ndarray]]) -> list[list[PreparedImage]]:
    """Groups of uint8 (H, W, 3) images (one prompt each) -> visual tokens, with one vision-tower call
    over every tile of every group. A group of one image is dynamically tiled, larger groups one tile each."""
    cfg = model.config
    tiled = [model_tiles(images, cfg.image_size, cfg.tokens_per_side, cfg.max_tiles, cfg.use_thumbnail)
             for images in groups]
    pixels = torch.from_numpy(np.concatenate([t for group in tiled for t, _ in group]))
    with torch.no_grad():
        tokens = model.image_tokens(pixels)  # (sum T, N, H)
    out, start = [], 0
    for images, group in zip(groups, tiled, strict=True):
        prepared = []
        for image, (tiles, layout) in zip(images, group, strict=True):
            n = tiles.shape[0]
            prepared.append(PreparedImage(image, tokens[start:start + n].reshape(-1, tokens.shape[-1]), layout))
            start += n
        out.append(prepared)
    return out


def prepare_images(model: TerraScopeModel, images: list[np.ndarray]) -> list[PreparedImage]:
    """One prompt's images -> visual tokens (see :func:`prepare_batch`)."""
    return prepare_batch(model, [images])[0]


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


def text_positions(ids: torch.Tensor, tokens: Tokens) -> torch.Tensor:
    """bool (L,): positions of (1, L) ids that are text, not ``<IMG_CONTEXT>`` or ``<REGION>`` (the
    training code's query for optical+SAR selection)."""
    return (ids[0] != tokens.image_context) & (ids[0] != tokens.region)


def choose_frame(rule: str, text_since_last_seg: str, seg_count: int, n_images: int) -> int:
    """The image a ``[SEG]`` refers to: ``alternate`` (release) k mod n; ``text`` the last "Image: t<i>"
    written since the previous [SEG], falling back to the alternation."""
    if n_images == 1:
        return 0
    if rule == "text":
        found = _FRAME.findall(text_since_last_seg)
        if found and 0 < int(found[-1]) <= n_images:
            return int(found[-1]) - 1
    return seg_count % n_images


class _Loop:
    """State of one generation: images, the text embeddings seen so far (for SAR selection), output."""

    def __init__(self, model: TerraScopeModel, tokenizer, tokens: Tokens, images: list[PreparedImage],
                 sar: PreparedImage | None, query: torch.Tensor, out: Generation):
        self.model, self.tokenizer, self.tokens = model, tokenizer, tokens
        self.images, self.sar, self.query, self.out = images, sar, query, out
        self.since_seg: list[int] = []

    def sam(self, image: PreparedImage) -> SamImage:
        if image.sam is None:
            image.sam = self.model.sam_encode([image.pixels])[0]
        return image.sam

    def on_seg(self, hidden: torch.Tensor) -> torch.Tensor:
        """[SEG] hidden (H,) -> masks, region tokens; returns the region embeddings (K, H) to feed."""
        model, out = self.model, self.out
        frame = choose_frame(model.config.frame_rule, self.tokenizer.decode(self.since_seg, skip_special_tokens=True),
                             len(out.masks), len(self.images))
        size = self.images[0].pixels.shape[:2]
        frame_masks = []
        for image in self.images:  # the release decodes the prompt on every image, at the first one's size
            logits, _ = model.decode_masks(self.sam(image), hidden[None])
            frame_masks.append(model.masks_from_logits(logits, size)[0])
        mask = frame_masks[frame]
        image = self.images[frame]
        index = select_region_tokens(mask, image.layout, model.config.image_size, model.config.region)
        if self.sar is not None:
            emb, flags = fuse_region(image.tokens, self.sar.tokens, self.query, index)
        else:
            emb, flags = image.tokens[torch.as_tensor(index)], np.zeros(len(index), np.uint8)
        out.seg_steps.append(len(out.token_ids) - 1)
        out.seg_hidden.append(hidden.float().cpu())
        out.masks.append(mask)
        out.frame_masks.append(np.stack(frame_masks))
        out.frames.append(frame)
        out.regions.append(index)
        out.region_sar.append(flags)
        out.all_ids.extend([self.tokens.region] * len(index))
        self.since_seg = []
        return emb


@torch.no_grad()
def generate(model: TerraScopeModel, tokenizer, images: list[np.ndarray], text: str,
             max_new_tokens: int | None = None, sar: np.ndarray | None = None,
             prepared: list[PreparedImage] | None = None, override: Override | None = None) -> Generation:
    """Greedy interleaved generation for the user turn ``text`` (with ``<image>``, see :func:`user_text`)
    about ``images`` (uint8 (H, W, 3) each); ``sar``: a SAR rendering of ``images[0]`` (same size).

    ``prepared`` skips the vision tower for images already encoded (``images`` then ``sar``).
    """
    cfg = model.config
    tokens = Tokens(tokenizer, cfg.tokens)
    pictures = list(images) + ([sar] if sar is not None else [])
    prepared = prepared or prepare_images(model, pictures)
    optical, sar_image = (prepared[:-1], prepared[-1]) if sar is not None else (prepared, None)
    ids = build_prompt(tokenizer, cfg.tokens, text, [p.layout for p in prepared],
                       SAR_IMAGE_PREFIX if sar is not None else "")
    embeds = prompt_embeddings(model, ids, tokens, prepared)
    out = Generation(text="", token_ids=[], prompt_ids=ids)
    query = embeds[0, text_positions(ids, tokens)]
    loop = _Loop(model, tokenizer, tokens, optical, sar_image, query, out)
    stop = tokens.stop_ids(len(prepared), model.lm_head.weight.shape[0])
    limit = max_new_tokens or cfg.max_new_tokens

    def choose(logits: torch.Tensor) -> int:
        greedy = int(logits[0, -1].argmax())
        return override(len(out.token_ids), greedy) if override is not None else greedy

    _, logits, cache = model.lm(embeds)
    nxt = choose(logits)
    while True:
        out.token_ids.append(nxt)
        out.all_ids.append(nxt)
        if nxt in stop:
            out.stop = "eos" if nxt == tokens.eos else "stop-id"
            break
        token_embed = model.embed(torch.tensor([[nxt]]))
        hidden, logits, cache = model.lm(token_embed, cache)
        if sar_image is not None:
            loop.query = torch.cat([loop.query, token_embed[0].to(loop.query.dtype)])
        if nxt == tokens.seg:
            region = loop.on_seg(hidden[0, -1])
            _, logits, cache = model.lm(region[None].to(model.dtype), cache)
            if len(out.masks) >= cfg.max_segs:
                out.stop = "max_segs"
                break
            nxt = choose(logits)
            continue
        loop.since_seg.append(nxt)
        nxt = choose(logits)
        if len(out.all_ids) >= limit:
            out.stop = "max_new_tokens"
            break
    out.text = tokenizer.decode(out.token_ids, skip_special_tokens=False)
    return out


@torch.no_grad()
def recompute(model: TerraScopeModel, tokenizer, images: list[np.ndarray], gen: Generation,
              sar: np.ndarray | None = None) -> tuple[list[int], list[np.ndarray]]:
    """Replay ``gen`` without a cache: one forward over prompt + generated tokens + region tokens.

    Returns the greedy prediction at each generated position and the masks decoded from the [SEG]
    positions' hidden states; for an exact loop they equal ``gen.token_ids`` and ``gen.masks``.
    """
    tokens = Tokens(tokenizer, model.config.tokens)
    prepared = prepare_images(model, list(images) + ([sar] if sar is not None else []))
    optical = prepared[:-1] if sar is not None else prepared
    embeds = prompt_embeddings(model, gen.prompt_ids, tokens, prepared)
    query = embeds[0, text_positions(gen.prompt_ids, tokens)]
    pieces = [embeds[0]]
    decided_at = [embeds.shape[1] - 1]  # the position whose logits chose each generated token
    cursor = embeds.shape[1]
    seg_k = 0
    for token in gen.token_ids:
        piece = model.embed(torch.tensor([[token]]))[0]
        pieces.append(piece)
        query = torch.cat([query, piece.to(query.dtype)])
        cursor += 1
        if token == tokens.seg and seg_k < len(gen.regions):
            frame, index = gen.frames[seg_k], gen.regions[seg_k]
            if sar is not None:
                emb, _ = fuse_region(optical[frame].tokens, prepared[-1].tokens, query, index)
            else:
                emb = optical[frame].tokens[torch.as_tensor(index)]
            pieces.append(emb.to(embeds.dtype))
            cursor += len(index)
            seg_k += 1
        decided_at.append(cursor - 1)
    hidden, logits, _ = model.lm(torch.cat(pieces)[None])
    predicted = [int(logits[0, p].argmax()) for p in decided_at[:len(gen.token_ids)]]
    size = optical[0].pixels.shape[:2]
    masks = []
    for k, step in enumerate(gen.seg_steps):
        seg_position = decided_at[step + 1] - (len(gen.regions[k]) if k < len(gen.regions) else 0)
        sam = model.sam_encode([optical[gen.frames[k]].pixels])[0]
        logit, _ = model.decode_masks(sam, hidden[0, seg_position][None])
        masks.append(model.masks_from_logits(logit, size)[0])
    return predicted, masks
