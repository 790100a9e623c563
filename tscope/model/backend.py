"""The TerraScope backend: the VLM's [SEG] masks at scene scale, answered with the shared measures.

scene(s) -> overlapping RGB tiles (2-98% stretch of red/green/blue reflectance, or SAR's VH/VV/mean)
-> interleaved generation per tile -> each [SEG] mask, labelled with the class named just before it
and the frame from "Image: t<i>", goes back onto its tile's window -> masks stitched per (class,
frame) on the scene grid -> :func:`tscope.reason.solve.solve` computes the answer from the stitched
masks with :mod:`tscope.reason.measures`. Per-tile answers are only reported (``trace.tiles``), never
combined into the scene answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tscope.errors import InputError
from tscope.geo.mask import Mask
from tscope.geo.scene import Scene
from tscope.reason.backend import Progress
from tscope.reason.query import Query, _class_pattern
from tscope.reason.solve import solve
from tscope.reason.trace import SEG, Number, Trace

_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
_SPECIAL = re.compile(r"<\|[^|]*\|>|<IMG_CONTEXT>|<REGION>")


@dataclass
class ModelOutput:
    """``text``: generated text (incl. <think>/<answer>); ``masks``: bool (H, W) per [SEG] on the image
    it refers to; ``frames``: index into the input images per mask."""

    text: str
    masks: list[np.ndarray] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)


def class_before(text: str) -> str | None:
    """The vocabulary class named last in ``text`` (the words right before a [SEG]), if any."""
    pattern, lookup = _class_pattern()
    found = pattern.findall(" ".join(text.lower().replace("_", " ").split()))
    return lookup[found[-1]] if found else None


def answer_of(text: str) -> str:
    match = _ANSWER.search(text)
    return (match.group(1) if match else "").strip()


class TerraScopeBackend:
    name = "terrascope"

    def __init__(self, model: str | Path, quant: str = "none", dtype: str = "bf16", device: str = "auto",
                 tile_overlap: int = 64, scene_tile: int = 448, max_new_tokens: int | None = None,
                 batch_tiles: int = 4, **kwargs):
        if kwargs:
            raise InputError(f"unknown terrascope options: {', '.join(sorted(kwargs))}")
        if scene_tile < 32:
            raise InputError(f"scene tile size must be at least 32 px, got {scene_tile}")
        if not 0 <= tile_overlap < scene_tile:
            raise InputError(f"--tile-overlap must be in [0, {scene_tile}), got {tile_overlap}")
        from tscope.model.loading import load_terrascope

        loaded = load_terrascope(model, dtype=dtype, device=device, quant=quant)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.model_path, self.layout, self.quant, self.dtype = str(model), loaded.layout, quant, dtype
        self.tile_overlap, self.scene_tile = tile_overlap, scene_tile
        self.max_new_tokens = max_new_tokens
        self.batch_tiles = max(1, batch_tiles)

    # --- the benchmark's entry point -----------------------------------------------------------

    def chat(self, images: list[np.ndarray], prompt: str, max_new_tokens: int = 512,
             sar: np.ndarray | None = None) -> ModelOutput:
        """One interleaved generation over uint8 (H, W, 3) ``images`` (``sar``: SAR twin of images[0])."""
        from tscope.model.generate import generate

        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise InputError("chat images must be uint8 arrays of shape (H, W, 3)")
        gen = generate(self.model, self.tokenizer, images, prompt, max_new_tokens=max_new_tokens, sar=sar)
        return ModelOutput(text=_SPECIAL.sub("", gen.text), masks=gen.masks, frames=gen.frames)

    # --- scene scale ---------------------------------------------------------------------------

    def reason(self, scenes: Sequence[Scene], query: Query, progress: Progress | None = None) -> Trace:
        from tscope.model.generate import generate, prepare_images
        from tscope.model.tiling import RGB, read_rgb, scene_kind, stitch, stretch_limits, tile_windows

        trace = Trace(question=query.question, query=query, backend=self.name, scenes=[s.describe() for s in scenes])
        by_frame = {s.frame: s for s in scenes}
        frames = list(query.frames)
        for frame in frames:
            if scene_kind(by_frame[frame]) == "unsupported":
                raise InputError(f"{by_frame[frame].path.name}: the terrascope backend needs red, green, blue"
                                 " (or vv and vh) bands; map them with --bands or --sensor")
        first = by_frame[frames[0]]
        fusion = len(frames) == 1 and scene_kind(first) == "optical" and first.has("vv") and first.has("vh")
        limits = {f: stretch_limits(by_frame[f], RGB if scene_kind(by_frame[f]) == "optical" else ("vh", "vv"))
                  for f in frames}
        sar_limits = stretch_limits(first, ("vh", "vv")) if fusion else None
        grid = first.grid
        windows = tile_windows(grid.width, grid.height, self.scene_tile, self.tile_overlap)
        tile_masks: dict[tuple[str, str], dict[int, np.ndarray]] = {(c, f): {} for c in query.classes for f in frames}
        tile_valid: dict[str, dict[int, np.ndarray]] = {f: {} for f in frames}
        seg_total = forced = 0
        for start in range(0, len(windows), self.batch_tiles):
            batch = list(range(start, min(start + self.batch_tiles, len(windows))))
            inputs = {}
            for i in batch:
                images = []
                for f in frames:
                    rgb, valid = read_rgb(by_frame[f], windows[i], limits[f])
                    images.append(rgb)
                    tile_valid[f][i] = valid
                sar = None
                if fusion:
                    from tscope.model.fusion import sar_to_rgb

                    bands, _ = first.read(["vh", "vv"], windows[i])
                    sar = sar_to_rgb(bands["vh"], bands["vv"], sar_limits)
                inputs[i] = (images, sar)
            # Every image of the batch goes through the vision tower in one call.
            flat = [im for i in batch for im in inputs[i][0] + ([inputs[i][1]] if inputs[i][1] is not None else [])]
            prepared = prepare_images(self.model, flat)
            cursor = 0
            for i in batch:
                images, sar = inputs[i]
                n = len(images) + (1 if sar is not None else 0)
                mine = prepared[cursor:cursor + n]
                cursor += n
                gen = generate(self.model, self.tokenizer, images, query.question, self.max_new_tokens, sar=sar,
                               prepared=mine)
                seg_total += len(gen.masks)
                got = self._attribute(gen, frames, query.classes)
                fallbacks = []
                for (cls, frame), mask_list in got.items():
                    if not mask_list:
                        image = images[frames.index(frame)]
                        ref = generate(self.model, self.tokenizer, [image],
                                       f"Please segment the {query.label(cls)}.", self.max_new_tokens,
                                       force_seg=True)
                        mask_list.append(ref.masks[0])
                        forced += int(ref.forced_seg)
                        fallbacks.append(f"{query.label(cls)}@{frame}")
                    tile_masks[(cls, frame)][i] = np.logical_or.reduce(mask_list)
                w = windows[i]
                trace.tiles.append({
                    "id": i, "window": [int(w.col_off), int(w.row_off), int(w.width), int(w.height)],
                    "answer": answer_of(gen.text), "text": _SPECIAL.sub("", gen.text)[:1000],
                    "segs": len(gen.masks), "referring_fallback": fallbacks,
                })
                if progress:
                    progress(i + 1, len(windows))
        masks: dict[tuple[str, str], Mask] = {}
        for frame in frames:
            valid = stitch(grid.shape, windows, tile_valid[frame])
            if not valid.any():
                raise InputError(f"{by_frame[frame].path.name}: every pixel is nodata; nothing to measure")
            for cls in query.classes:
                data = stitch(grid.shape, windows, tile_masks[(cls, frame)]) & valid
                mask = Mask(data=data, valid=valid, grid=grid, label=cls, frame=frame, source="terrascope [SEG]")
                image = f"Image: {frame}. " if len(frames) > 1 else ""
                trace.add_mask(mask, f"{image}I segment the {query.label(cls)} {SEG}"
                                     f" (stitched from {len(windows)} tile{'s' if len(windows) > 1 else ''}).")
                masks[(cls, frame)] = mask
        trace.numbers["tiles"] = Number(len(windows))
        trace.numbers["seg_tokens"] = Number(seg_total)
        trace.notes.append(f"terrascope backend: {self.model_path} ({self.layout} layout, {self.dtype},"
                           f" quant {self.quant}); {len(windows)} tile(s) of {self.scene_tile} px,"
                           f" overlap {self.tile_overlap} px; region rule {self.model.config.region.rule},"
                           f" cap {self.model.config.region.max_tokens}")
        if fusion:
            trace.notes.append("optical+SAR: region tokens chosen per position by question relevance (Eq. 4-5)")
        if forced:
            trace.notes.append(f"{forced} referring prompt(s) produced no [SEG]; one was fed to get a mask")
        trace.notes.append("the answer is computed from the stitched masks with tscope's measures,"
                           " not from the model's per-tile text")
        solve(query, masks, trace)
        return trace

    def _attribute(self, gen, frames: list[str], classes: list[str]) -> dict[tuple[str, str], list[np.ndarray]]:
        """Masks per (class, frame) of one generation; a [SEG] counts for the class named right before it."""
        got: dict[tuple[str, str], list[np.ndarray]] = {(c, f): [] for c in classes for f in frames}
        previous = 0
        for k, step in enumerate(gen.seg_steps):
            words = self.tokenizer.decode(gen.token_ids[previous:step], skip_special_tokens=True)
            previous = step + 1
            cls = class_before(words)
            frame = frames[gen.frames[k]] if gen.frames[k] < len(frames) else frames[0]
            if cls in classes:
                got[(cls, frame)].append(gen.masks[k])
        return got
