"""Batched interleaved generation: many prompts decode together over one KV cache.

:func:`tscope.model.interleave.generate` (one prompt, the released inference loop) is the
specification; :class:`BatchDecoder` runs the same per-sequence state machine for up to
``batch_size`` sequences at once and gives, in fp32, the same tokens, stop reasons, regions, frames and
masks (tests/test_batched.py).

Layout. The cache is one rectangular tensor per layer, (B, heads, T, d), with a validity mask (B, T):
at every forward each sequence feeds its own chunk -- one token, or after a ``[SEG]`` the region tokens
of its mask -- left-padded to the widest chunk of the step, so the last column is every sequence's
newest input. Padded slots are never attended to (an explicit 4-D mask), and positions are explicit
per sequence (the number of real tokens before it), so each sequence sees exactly what it would see
alone. Padding piles up in the cache as sequences take region steps; when it outweighs the real
tokens the cache is repacked (each row's real keys moved together), which changes no position. With
``region_chunk=k`` a sequence feeds at most k region tokens per step, so the chunks stay narrow;
feeding them over several steps is the same causal computation.

Continuous batching: finished sequences leave at once and new prompts join between steps -- their
images go through the vision tower together, prompts of equal length are prefilled together (no
padding: each prompt's prefill attends to exactly its own tokens, as in the single-prompt loop), and
their caches are appended to the batch's. SAM-2 encodes an image the first time a ``[SEG]`` needs it, batched over the
sequences that reach their first ``[SEG]`` at the same step, and never twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from tscope.model.architecture import TerraScopeModel
from tscope.model.interleave import (
    SAR_IMAGE_PREFIX,
    Generation,
    Override,
    PreparedImage,
    Tokens,
    _Loop,
    build_prompt,
    prepare_batch,
    prompt_embeddings,
    text_positions,
)


@dataclass
class Request:
    """One prompt: what :func:`tscope.model.interleave.generate` takes, plus a completion callback.

    ``done(request, generation)`` runs when the sequence finishes; it may :meth:`BatchDecoder.submit`
    follow-up prompts (they join the running batch). After admission ``prepared`` holds the images'
    visual tokens (and their SAM-2 encodings once a [SEG] needed them), for a follow-up to reuse.
    """

    images: list[np.ndarray]
    text: str
    sar: np.ndarray | None = None
    max_new_tokens: int | None = None
    prepared: list[PreparedImage] | None = None
    override: Override | None = None
    done: Callable[[Request, Generation], None] | None = None
    tag: object = None
    result: Generation | None = field(default=None, repr=False)


class _Row:
    """One sequence of the batch: its loop state, what it feeds next, its next position."""

    def __init__(self, request: Request, loop: _Loop, stop: set[int], limit: int, position: int):
        self.request, self.loop, self.stop, self.limit = request, loop, stop, limit
        self.position = position  # real tokens so far = the position of the next one fed
        self.pending: torch.Tensor | None = None  # (k, H) embeddings to feed at the next step
        self.fed_token: int | None = None  # the token ``pending`` holds; None for region tokens
        self.finished = False

    @property
    def out(self) -> Generation:
        return self.loop.out

    def choose(self, greedy: int) -> int:
        override = self.request.override
        return override(len(self.out.token_ids), greedy) if override is not None else greedy


class BatchDecoder:
    """Greedy interleaved generation of many prompts, ``batch_size`` sequences at a time.

    ``submit`` queues prompts; ``run(source)`` decodes them and whatever ``source`` yields (pulled
    lazily, when a slot is free, after the queued ones) until both are exhausted.
    """

    def __init__(self, model: TerraScopeModel, tokenizer, batch_size: int = 8, region_chunk: int | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        # Region tokens fed per step: None = all at once (the step's chunk is padded to the widest row;
        # as many forwards as the single-prompt loop, and a GPU decode step costs about the same for 1 or
        # 8 tokens a row); k = at most k per step (narrower steps, k-times more of them per [SEG]: it
        # pays on a CPU only when [SEG]s are rare, as each forward has a fixed cost).
        if region_chunk is not None and region_chunk < 1:
            raise ValueError("region_chunk must be None or at least 1")
        self.region_chunk = region_chunk
        self.tokens = Tokens(tokenizer, model.config.tokens)
        self.queue: deque[Request] = deque()
        self.rows: list[_Row] = []
        self.cache = None
        self.valid: torch.Tensor | None = None  # bool (B, T): which cache slots hold real tokens
        self.forwards = 0  # language-model forward passes, prefills included (benchmarks report it)
        self.repacks = 0
        self.prompts = 0  # sequences admitted
        self.widest = 0  # the most sequences decoded in one forward
        # Repack when the padded slots exceed both ``repack_waste`` and ``repack_ratio`` x the longest
        # row's real tokens (a repack copies the whole cache; attention over padding costs every step).
        self.repack_waste, self.repack_ratio = 64, 1.0

    def stats(self) -> dict[str, int]:
        return {"prompts": self.prompts, "widest": self.widest, "forwards": self.forwards, "repacks": self.repacks}

    def submit(self, request: Request) -> Request:
        self.queue.append(request)
        return request

    @torch.no_grad()
    def run(self, source: Iterable[Request] = ()) -> None:
        pending: Iterator[Request] | None = iter(source)
        while True:
            free = self.batch_size - len(self.rows)
            joining = []
            while len(joining) < free:
                if self.queue:
                    joining.append(self.queue.popleft())
                elif pending is not None and (nxt := next(pending, None)) is not None:
                    joining.append(nxt)
                else:
                    pending = None  # the source is exhausted
                    break
            if joining:
                self._admit(joining)  # all of them may stop at their first token
            if self.rows:
                self._step()
            elif not joining and not self.queue:
                return

    # --- joining ---------------------------------------------------------------------------

    def _admit(self, requests: list[Request]) -> None:
        model, cfg = self.model, self.model.config
        self.prompts += len(requests)
        need = [r for r in requests if r.prepared is None]
        if need:  # one vision-tower call for every newcomer's images
            groups = [list(r.images) + ([r.sar] if r.sar is not None else []) for r in need]
            for request, prepared in zip(need, prepare_batch(model, groups), strict=True):
                request.prepared = prepared
        by_length: dict[int, list[tuple[_Row, torch.Tensor]]] = {}
        for request in requests:
            prepared = request.prepared
            sar = request.sar is not None
            optical, sar_image = (prepared[:-1], prepared[-1]) if sar else (prepared, None)
            ids = build_prompt(self.tokenizer, cfg.tokens, request.text, [p.layout for p in prepared],
                               SAR_IMAGE_PREFIX if sar else "")
            embeds = prompt_embeddings(model, ids, self.tokens, prepared)
            out = Generation(text="", token_ids=[], prompt_ids=ids)
            query = embeds[0, text_positions(ids, self.tokens)]
            loop = _Loop(model, self.tokenizer, self.tokens, optical, sar_image, query, out)
            stop = self.tokens.stop_ids(len(prepared), model.lm_head.weight.shape[0])
            row = _Row(request, loop, stop, request.max_new_tokens or cfg.max_new_tokens, ids.shape[1])
            by_length.setdefault(ids.shape[1], []).append((row, embeds))
        for group in by_length.values():
            rows = [row for row, _ in group]
            # Equal lengths, so no padding: each prompt's prefill is the single-prompt loop's computation.
            out = model.language_model(inputs_embeds=torch.cat([e for _, e in group]), cache=None, use_cache=True)
            self.forwards += 1
            greedy = self._greedy(out.last_hidden_state[:, -1])
            for b, row in enumerate(rows):
                self._advance(row, row.choose(greedy[b]))
            self._embed_tokens(rows)
            keep = [b for b, row in enumerate(rows) if not row.finished]
            if keep:
                self._join([rows[b] for b in keep], out.cache, keep)
            for row in rows:
                if row.finished:
                    self._finish(row)

    def _join(self, rows: list[_Row], cache, keep: list[int]) -> None:
        """Append prefilled sequences (their own cache, all slots real) to the batch, left-padding in time."""
        layers = [(layer.keys[keep], layer.values[keep]) for layer in cache.layers]
        length = layers[0][0].shape[-2]
        valid = torch.ones(len(rows), length, dtype=torch.bool, device=layers[0][0].device)
        if self.cache is None:
            for layer, (k, v) in zip(cache.layers, layers, strict=True):
                layer.keys, layer.values = k, v
            self.cache, self.valid, self.rows = cache, valid, list(rows)
            return
        total = max(length, self.valid.shape[1])
        for layer, (k, v) in zip(self.cache.layers, layers, strict=True):
            layer.keys = torch.cat([_left_pad(layer.keys, total), _left_pad(k, total)])
            layer.values = torch.cat([_left_pad(layer.values, total), _left_pad(v, total)])
        self.valid = torch.cat([_left_pad(self.valid, total, dim=1), _left_pad(valid, total, dim=1)])
        self.rows.extend(rows)

    # --- one step --------------------------------------------------------------------------

    def _step(self) -> None:
        model, rows = self.model, self.rows
        self.widest = max(self.widest, len(rows))
        chunk = self.region_chunk or max(len(r.pending) for r in rows)
        feeds = [row.pending[:chunk] for row in rows]
        width = max(len(f) for f in feeds)
        batch, hidden_size = len(rows), rows[0].pending.shape[-1]
        device = self.valid.device
        embeds = torch.zeros(batch, width, hidden_size, dtype=model.dtype, device=device)
        positions = torch.zeros(batch, width, dtype=torch.long, device=device)
        fed = torch.zeros(batch, width, dtype=torch.bool, device=device)
        for b, (row, feed) in enumerate(zip(rows, feeds, strict=True)):
            k = len(feed)
            row.pending = row.pending[k:]  # region tokens left for the next steps
            embeds[b, width - k:] = feed.to(model.dtype)
            positions[b] = row.position  # padded slots: any position, they are never attended to
            positions[b, width - k:] = torch.arange(row.position, row.position + k, device=device)
            fed[b, width - k:] = True
            row.position += k
        past = self.valid.shape[1]
        self.valid = torch.cat([self.valid, fed], dim=1)
        slots = torch.arange(past + width, device=device)
        causal = slots[None, :] <= slots[past:, None]  # (W, T): query j sees slots up to its own
        allowed = self.valid[:, None, :] & causal[None]  # (B, W, T): real and not in the future
        mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=device)
        mask = mask.masked_fill(~allowed, torch.finfo(embeds.dtype).min)[:, None]
        out = model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                   cache=self.cache, use_cache=True)
        self.forwards += 1
        self.cache = out.cache
        last = out.last_hidden_state[:, -1]
        greedy = self._greedy(last)
        segs = []
        for b, row in enumerate(rows):
            if row.fed_token is None:  # region tokens were fed
                if len(row.pending):
                    continue  # more to feed; only the last one's logits choose the next token
                if len(row.out.masks) >= model.config.max_segs:
                    row.out.stop = "max_segs"
                    row.finished = True
                else:
                    self._advance(row, row.choose(greedy[b]))
                continue
            token = row.fed_token
            if row.loop.sar is not None:
                row.loop.query = torch.cat([row.loop.query, feeds[b].to(row.loop.query.dtype)])
            if token == self.tokens.seg:
                segs.append((b, row))
                continue
            row.loop.since_seg.append(token)
            nxt = row.choose(greedy[b])
            if len(row.out.all_ids) >= row.limit:
                row.out.stop = "max_new_tokens"
                row.finished = True
            else:
                self._advance(row, nxt)
        self._embed_tokens(rows)
        if segs:
            self._encode_for([row for _, row in segs])
            for b, row in segs:
                row.pending = row.loop.on_seg(last[b])
                row.fed_token = None
        keep = [b for b, row in enumerate(rows) if not row.finished]
        done = [row for row in rows if row.finished]
        if len(keep) < len(rows):
            self._select(keep)
        self._repack_if_sparse()
        for row in done:
            self._finish(row)

    def _advance(self, row: _Row, token: int) -> None:
        """Record the chosen token; stop on a stop id, else it is fed at the next step (the loop's top)."""
        row.out.token_ids.append(token)
        row.out.all_ids.append(token)
        if token in row.stop:
            row.out.stop = "eos" if token == self.tokens.eos else "stop-id"
            row.finished = True
            return
        row.fed_token, row.pending = token, None  # embedded with the other rows' tokens (_embed_tokens)

    def _embed_tokens(self, rows: list[_Row]) -> None:
        """One embedding lookup for every row that chose a token to feed (a lookup is exact either way)."""
        todo = [row for row in rows if not row.finished and row.pending is None]
        if todo:
            embedded = self.model.embed(torch.tensor([[row.fed_token for row in todo]]))[0]
            for i, row in enumerate(todo):
                row.pending = embedded[i:i + 1]

    def _greedy(self, hidden: torch.Tensor) -> list[int]:
        """(B, H) last hidden states -> each row's greedy token, with one device-to-host transfer."""
        head = self.model.lm_head
        dtype = head.weight.dtype if head.weight.dtype.is_floating_point else hidden.dtype
        return head(hidden.to(dtype)).float().argmax(dim=-1).tolist()

    def _encode_for(self, rows: list[_Row]) -> None:
        """SAM-2-encode, in one call, the images these rows' [SEG]s decode on that have no encoding yet."""
        todo: dict[int, PreparedImage] = {}
        for row in rows:
            for image in row.loop.images:
                if image.sam is None:
                    todo[id(image)] = image
        if todo:
            images = list(todo.values())
            for image, sam in zip(images, self.model.sam_encode([im.pixels for im in images]), strict=True):
                image.sam = sam

    def _finish(self, row: _Row) -> None:
        out = row.out
        out.text = self.tokenizer.decode(out.token_ids, skip_special_tokens=False)
        row.request.result = out
        if row.request.done is not None:
            row.request.done(row.request, out)

    # --- cache bookkeeping -----------------------------------------------------------------

    def _select(self, keep: list[int]) -> None:
        self.rows = [self.rows[b] for b in keep]
        if not keep:
            self.cache, self.valid = None, None
            return
        index = torch.tensor(keep, device=self.valid.device)
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        self.valid = self.valid[index]

    def _repack_if_sparse(self) -> None:
        """Move each row's real slots together (left-padded) once padding outweighs the real tokens."""
        if self.valid is None:
            return
        counts = self.valid.sum(dim=1)
        longest = int(counts.max())
        if self.valid.shape[1] - longest <= max(self.repack_ratio * longest, self.repack_waste):
            return
        # Stable sort puts each row's real slots last, in order; the first ``T - longest`` are dropped.
        order = torch.sort(self.valid.to(torch.int8), dim=1, stable=True).indices[:, -longest:]
        for layer in self.cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys = layer.keys.gather(2, index)
            layer.values = layer.values.gather(2, index)
        self.valid = self.valid.gather(1, order)
        self.repacks += 1


def _left_pad(x: torch.Tensor, total: int, dim: int = 2) -> torch.Tensor:
    """Pad ``x`` with zeros (False) at the start of ``dim`` up to ``total`` (cache slots that stay unattended)."""
    missing = total - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=x.dtype, device=x.device), x], dim=dim)


def generate_batch(model: TerraScopeModel, tokenizer, requests: list[Request], batch_size: int = 8) -> list[Generation]:
    """Decode ``requests`` with continuous batching; their generations, in order."""
    decoder = BatchDecoder(model, tokenizer, batch_size)
    decoder.run(requests)
    return [r.result for r in requests]
