"""The TerraScope backend: the VLM's [SEG] masks at scene scale, answered with the shared measures.

scene(s) -> overlapping RGB tiles (2-98% stretch of red/green/blue reflectance, or SAR's VH/VV/mean)
-> interleaved generation per tile -> each [SEG] mask, labelled with the class named just before it
and the frame it refers to (the model's frame rule), goes back onto its tile's window -> masks stitched
per (class, frame) on the scene grid -> :func:`tscope.reason.solve.solve` computes the answer from the
stitched masks with :mod:`tscope.reason.measures`. A class the question needs that a tile's answer did
not segment is checked by asking the model whether it is there; only an affirmative answer with the
model's own [SEG] gives the tile a mask. Per-tile answers and checks are reported (``trace.tiles``),
never combined into the scene answer.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tscope.errors import InputError
from tscope.geo.mask import Mask
from tscope.geo.preview import Preview
from tscope.geo.scene import Scene
from tscope.model.prompt import answer_of, extract_letter, strip_special
from tscope.reason.backend import Progress
from tscope.reason.query import Query, _class_pattern
from tscope.reason.solve import solve
from tscope.reason.trace import SEG, Number, Trace

if TYPE_CHECKING:
    from tscope.model.batched import BatchDecoder, Request
    from tscope.model.interleave import Generation



@dataclass
class SceneInputs:
    """What every path of the backend reads from the scenes: scenes by frame, the frames asked about,
    the first scene, whether it carries optical + SAR, and the scene-wide stretch limits."""

    by_frame: dict[str, Scene]
    frames: list[str]
    first: Scene
    fusion: bool
    limits: dict[str, dict]
    sar_limits: dict | None
    previews: dict[str, Preview]  # per frame, averaged over cells of the overview's decimation factor

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Within the block, tiles are read through one kept handle per scene (:meth:`Scene.reading`), not
        by opening each scene's file anew for every tile."""
        with contextlib.ExitStack() as kept:
            for scene in {id(s): s for s in (*self.by_frame.values(), self.first)}.values():
                kept.enter_context(scene.reading())
            yield


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


def _clean(text: str) -> str:
    return " ".join(strip_special(text).replace("<think>", " ").replace("</think>", " ").split())


_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def disagreement(query: Query, numbers: dict[str, Number], said: str) -> str | None:
    """A note when the model's own answer contradicts the measured one: yes/no for existence and
    adjacency, the percentage for coverage (more than 5 points apart), the count for counting."""
    if query.task in ("existence", "adjacency"):
        key = "present" if query.task == "existence" else "borders"
        match = _YES_NO.match(said)
        if match and key in numbers and (match.group(1).lower() == "yes") != bool(numbers[key].value):
            return f"it disagrees with the measured answer ({key}: {numbers[key].value})"
        return None
    key = {"coverage": "coverage_percent", "count": "count"}.get(query.task)
    found = _NUMBER.search(said)
    if key and found and key in numbers:
        said_value, measured = float(found.group()), float(numbers[key].value)
        if abs(said_value - measured) > (5.0 if query.task == "coverage" else 0.0):
            return f"it disagrees with the measured {key} {measured:g}"
    return None


class TerraScopeBackend:
    name = "terrascope"

    def __init__(self, model: str | Path, quant: str = "none", dtype: str = "bf16", device: str = "auto",
                 tile_overlap: int = 64, scene_tile: int = 448, max_new_tokens: int | None = None,
                 batch_tiles: int = 8, tile_answers: int = 16, **kwargs):
        if kwargs:
            raise InputError(f"unknown terrascope options: {', '.join(sorted(kwargs))}")
        if scene_tile < 32:
            raise InputError(f"scene tile size must be at least 32 px, got {scene_tile}")
        if not 0 <= tile_overlap < scene_tile:
            raise InputError(f"--tile-overlap must be in [0, {scene_tile}), got {tile_overlap}")
        if batch_tiles < 1:
            raise InputError(f"--batch-tiles must be at least 1, got {batch_tiles}")
        from tscope.model.loading import load_terrascope

        loaded = load_terrascope(model, dtype=dtype, device=device, quant=quant)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.model_path, self.layout, self.quant, self.dtype = str(model), loaded.layout, quant, dtype
        self.tile_overlap, self.scene_tile = tile_overlap, scene_tile
        self.max_new_tokens = max_new_tokens
        self.batch_tiles = batch_tiles
        self.tile_answers = tile_answers

    # --- one prompt ----------------------------------------------------------------------------

    def chat(self, images: list[np.ndarray], text: str, max_new_tokens: int | None = None,
             sar: np.ndarray | None = None) -> ModelOutput:
        """One interleaved generation over uint8 (H, W, 3) ``images`` (``sar``: SAR twin of images[0]).

        ``text`` is the user turn with an ``<image>`` placeholder (as the release's scripts send it, see
        :func:`tscope.bench.answers.format_prompt`); a text without one is taken as a question and gets
        the release's system text and ``<image>`` in front (:func:`tscope.model.interleave.user_text`).
        """
        from tscope.model.interleave import generate
        from tscope.model.prompt import IMAGE, user_text

        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise InputError("chat images must be uint8 arrays of shape (H, W, 3)")
        if IMAGE not in text:
            text = user_text(text, self.model.config.system_prompt)
        gen = generate(self.model, self.tokenizer, images, text, max_new_tokens=max_new_tokens or self.max_new_tokens,
                       sar=sar)
        return ModelOutput(text=strip_special(gen.text), masks=gen.masks, frames=gen.frames)

    # --- scene scale ---------------------------------------------------------------------------

    def _inputs(self, scenes: Sequence[Scene], query: Query) -> SceneInputs:
        from tscope.geo.preview import scene_preview
        from tscope.model.tiling import RGB, overview_factor, scene_kind, stretch_limits

        by_frame = {s.frame: s for s in scenes}
        frames = list(query.frames)
        for frame in frames:
            if scene_kind(by_frame[frame]) == "unsupported":
                raise InputError(f"{by_frame[frame].path.name}: the terrascope backend needs red, green, blue"
                                 " (or vv and vh) bands; map them with --bands or --sensor")
        first = by_frame[frames[0]]
        fusion = len(frames) == 1 and scene_kind(first) == "optical" and first.has("vv") and first.has("vh")
        # One preview pass per scene, on the grid the whole scene takes as one model input: it gives the
        # tiles' stretch limits, that overview input and the quicklook; the scene is not read again for them.
        cfg = self.model.config
        factor = overview_factor(first.grid.width, first.grid.height, len(frames) + (1 if fusion else 0),
                                 cfg.image_size, cfg.max_tiles)
        shown = {f: list(RGB) if scene_kind(by_frame[f]) == "optical" else ["vh", "vv"] for f in frames}
        previews = {f: scene_preview(by_frame[f], shown[f] + (["vh", "vv"] if fusion and f == frames[0] else []),
                                     factor=factor) for f in frames}
        limits = {f: stretch_limits(previews[f], shown[f]) for f in frames}
        sar_limits = stretch_limits(previews[frames[0]], ("vh", "vv")) if fusion else None
        return SceneInputs(by_frame, frames, first, fusion, limits, sar_limits, previews)

    def reason(self, scenes: Sequence[Scene], query: Query, progress: Progress | None = None) -> Trace:
        """Answer ``query``: measurable tasks from stitched tile masks and the measures; a free-form
        question (``query.task == "free"``) by the model itself (:meth:`answer_free`)."""
        from tscope.model.batched import BatchDecoder
        from tscope.model.fusion import sar_to_rgb
        from tscope.model.tiling import read_rgb, stitch, tile_windows
        from tscope.reason.query import FREE

        trace = Trace(question=query.question, query=query, backend=self.name, scenes=[s.describe() for s in scenes])
        inputs_of = self._inputs(scenes, query)
        trace.previews = inputs_of.previews
        if query.task == FREE:
            return self.answer_free(inputs_of, query, trace, progress)
        by_frame, frames, first, fusion = inputs_of.by_frame, inputs_of.frames, inputs_of.first, inputs_of.fusion
        limits, sar_limits = inputs_of.limits, inputs_of.sar_limits
        grid = first.grid
        windows = tile_windows(grid.width, grid.height, self.scene_tile, self.tile_overlap)
        tile_masks: dict[tuple[str, str], dict[int, np.ndarray]] = {(c, f): {} for c in query.classes for f in frames}
        tile_valid: dict[str, dict[int, np.ndarray]] = {f: {} for f in frames}
        records: dict[int, dict] = {}

        def tile_done(i: int, record: dict, got: dict[tuple[str, str], list[np.ndarray]]) -> None:
            for key, mask_list in got.items():
                if mask_list:
                    tile_masks[key][i] = np.logical_or.reduce(mask_list)
            w = windows[i]
            records[i] = {"id": i, "window": [int(w.col_off), int(w.row_off), int(w.width), int(w.height)], **record}
            if progress:
                progress(len(records), len(windows))

        def tile_requests() -> Iterator[Request]:
            # Tiles are read as batch slots free up, so a scene's tiles never sit in memory all at once.
            for i, window in enumerate(windows):
                images = []
                for f in frames:
                    rgb, valid = read_rgb(by_frame[f], window, limits[f])
                    images.append(rgb)
                    tile_valid[f][i] = valid
                sar = None
                if fusion:
                    bands, _ = first.read(["vh", "vv"], window)
                    sar = sar_to_rgb(bands["vh"], bands["vv"], sar_limits)
                yield self._tile_request(decoder, images, sar, query, frames, partial(tile_done, i))

        decoder = BatchDecoder(self.model, self.tokenizer, self.batch_tiles)
        with inputs_of.reading():
            decoder.run(tile_requests())
        trace.tiles.extend(records[i] for i in sorted(records))
        decoded = decoder.stats()
        seg_total = sum(t["segs"] for t in trace.tiles)
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
        cfg = self.model.config
        trace.notes.append(f"terrascope backend: {self.model_path} ({self.layout} layout, {self.dtype},"
                           f" quant {self.quant}); {len(windows)} tile(s) of {self.scene_tile} px,"
                           f" overlap {self.tile_overlap} px; region rule {cfg.region.rule},"
                           f" cap {cfg.region.max_tokens}; frame rule {cfg.frame_rule}")
        trace.notes.append(f"decoding: {decoded['prompts']} prompt(s) in batches of up to {self.batch_tiles}"
                           f" sequences (at most {decoded['widest']} at once), {decoded['forwards']}"
                           " language-model forward passes")
        if fusion:
            trace.notes.append("optical+SAR: region tokens chosen per position by the release's query selection"
                               " (Eq. 4-5)")
        checked = sum(len(t["checks"]) for t in trace.tiles)
        if checked:
            trace.notes.append(f"{checked} class check(s) in tiles whose answer had no [SEG] for a class; a tile"
                               " got a class mask only where the model answered yes and segmented it (see Tiles)")
        trace.notes.append("the answer is computed from the stitched masks with tscope's measures,"
                           " not from the model's per-tile text")
        solve(query, masks, trace)
        self._model_answer(inputs_of, query, trace, len(windows))
        return trace

    def _overview(self, inputs: SceneInputs) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray, int]:
        """The whole scene as one model input: (images per frame, SAR twin, valid mask, decimation factor)."""
        from rasterio.windows import Window

        from tscope.model.fusion import sar_to_rgb
        from tscope.model.tiling import overview_factor, read_rgb, read_rgb_overview

        cfg = self.model.config
        grid = inputs.first.grid
        n_images = len(inputs.frames) + (1 if inputs.fusion else 0)
        factor = overview_factor(grid.width, grid.height, n_images, cfg.image_size, cfg.max_tiles)
        images, valid = [], None
        for frame in inputs.frames:
            scene = inputs.by_frame[frame]
            if factor == 1:
                rgb, ok = read_rgb(scene, Window(0, 0, grid.width, grid.height), inputs.limits[frame])
            else:
                rgb, ok = read_rgb_overview(inputs.previews[frame], inputs.limits[frame])
            images.append(rgb)
            valid = ok if valid is None else valid & ok
        sar = None
        if inputs.fusion:
            if factor == 1:
                bands, _ = inputs.first.read(["vh", "vv"], Window(0, 0, grid.width, grid.height))
                sar = sar_to_rgb(bands["vh"], bands["vv"], inputs.sar_limits)
            else:
                sar = read_rgb_overview(inputs.previews[inputs.frames[0]], inputs.sar_limits, sar=True)[0]
        return images, sar, valid, factor

    def answer_free(self, inputs: SceneInputs, query: Query, trace: Trace, progress: Progress | None = None) -> Trace:
        """A question no measure answers: the model answers it as written, on the whole scene.

        A scene that fits one model input is given at full resolution; a larger one as an overview
        decimated until it fits, its masks mapped back onto the scene grid (nearest), and -- for at
        most ``tile_answers`` scene tiles -- each tile's own answer listed under Tiles.
        """
        from tscope.model.batched import BatchDecoder, Request
        from tscope.model.interleave import generate
        from tscope.model.prompt import user_text
        from tscope.model.tiling import read_rgb, tile_windows, upsample_nearest
        from tscope.reason.query import choice_letters

        grid = inputs.first.grid
        images, sar, valid, factor = self._overview(inputs)
        text = user_text(query.question, self.model.config.system_prompt)
        gen = generate(self.model, self.tokenizer, images, text, self.max_new_tokens, sar=sar)
        previous = 0
        for k, step in enumerate(gen.seg_steps):
            words = self.tokenizer.decode(gen.token_ids[previous:step], skip_special_tokens=True)
            previous = step + 1
            mask = gen.masks[k] if factor == 1 else upsample_nearest(gen.masks[k], grid.shape)
            full_valid = valid if factor == 1 else upsample_nearest(valid, grid.shape)
            frame = inputs.frames[gen.frames[k]]
            label = class_before(words) or "segment"
            trace.add_mask(Mask(data=mask.copy(), valid=full_valid, grid=grid, label=label, frame=frame,
                                source="terrascope [SEG]"), f"{_clean(words)} {SEG}")
        tail = _clean(self.tokenizer.decode(gen.token_ids[previous:], skip_special_tokens=True))
        if tail:
            trace.say(tail)
        trace.answer = trace.model_answer = answer_of(gen.text) or _clean(strip_special(gen.text))
        letters = choice_letters(query.question)
        if letters:
            trace.choice = extract_letter(gen.text, letters)[0]
        trace.numbers["seg_tokens"] = Number(len(gen.masks))
        if factor == 1:
            trace.notes.append("free-form question: the model answered it on the whole scene at full resolution"
                               " (it fits one model input)")
        else:
            h, w = images[0].shape[:2]
            trace.notes.append(f"free-form question: the scene is larger than one model input, so the model answered"
                               f" it on an overview decimated {factor}x to {w} x {h} px; its masks are mapped back"
                               " onto the scene grid at that resolution")
            windows = tile_windows(grid.width, grid.height, self.scene_tile, self.tile_overlap)
            if len(windows) <= self.tile_answers:
                done: list[int] = []

                def answered(request: Request, gen: Generation) -> None:
                    done.append(request.tag)
                    if progress:
                        progress(len(done), len(windows))

                with inputs.reading():
                    requests = [Request([read_rgb(inputs.by_frame[f], window, inputs.limits[f])[0]
                                         for f in inputs.frames],
                                        text, max_new_tokens=self.max_new_tokens, done=answered, tag=i)
                                for i, window in enumerate(windows)]
                BatchDecoder(self.model, self.tokenizer, self.batch_tiles).run(requests)
                for i, (window, request) in enumerate(zip(windows, requests, strict=True)):
                    one = request.result
                    trace.tiles.append({"id": i, "window": [int(window.col_off), int(window.row_off),
                                                            int(window.width), int(window.height)],
                                        "answer": answer_of(one.text), "text": strip_special(one.text)[:1000],
                                        "segs": len(one.masks), "checks": []})
                trace.notes.append(f"each of the {len(windows)} scene tiles' own answers is listed under Tiles")
            else:
                trace.notes.append(f"the scene has {len(windows)} tiles of {self.scene_tile} px, more than"
                                   f" --tile-answers {self.tile_answers}: per-tile answers were not computed")
        trace.notes.append(f"terrascope backend: {self.model_path} ({self.layout} layout, {self.dtype},"
                           f" quant {self.quant}); answered by the model, no tscope measure involved")
        return trace

    def _model_answer(self, inputs: SceneInputs, query: Query, trace: Trace, n_tiles: int) -> None:
        """Put the model's own answer beside the measured one, and note when they disagree."""
        from tscope.model.interleave import generate
        from tscope.model.prompt import user_text

        if n_tiles == 1:
            said = trace.tiles[0]["answer"]
            where = "on the scene's single tile"
        else:
            images, sar, _, factor = self._overview(inputs)
            gen = generate(self.model, self.tokenizer, images, user_text(query.question,
                                                                        self.model.config.system_prompt),
                           self.max_new_tokens, sar=sar)
            said = answer_of(gen.text)
            where = "on the whole scene" + (f" decimated {factor}x" if factor > 1 else "")
        trace.model_answer = said
        verdict = disagreement(query, trace.numbers, said)
        trace.notes.append(f"the model's own answer ({where}): {said!r}" + (f"; {verdict}" if verdict else ""))

    def _tile_request(self, decoder: BatchDecoder, images: list[np.ndarray], sar: np.ndarray | None, query: Query,
                      frames: list[str], finished: Callable[[dict, dict], None]) -> Request:
        """One scene tile as decoder requests: the question, then, for each class it needs that got no
        [SEG], whether the model affirms the class is there (follow-ups join the running batch as each
        answer arrives). ``finished(record, masks per (class, frame))`` runs when the tile's last answer is in."""
        from tscope.model.batched import Request
        from tscope.model.prompt import user_text

        system = self.model.config.system_prompt
        state: dict = {"open": 1}

        def close() -> None:
            state["open"] -= 1
            if state["open"] == 0:
                finished(state["record"], state["got"])

        def answered(request: Request, gen: Generation) -> None:
            got = self._attribute(gen, frames, query.classes)
            record = {"answer": answer_of(gen.text), "text": strip_special(gen.text)[:1000], "segs": len(gen.masks),
                      "checks": []}
            state.update(record=record, got=got)
            for (cls, frame), mask_list in got.items():
                if mask_list:
                    continue
                # No [SEG] for this class: ask whether it is there at all. Only an affirmative answer with the
                # model's own [SEG] gives the tile a mask (a forced [SEG] would give SAM-2's best guess of a
                # class that may be absent, and stitched masks are OR-ed, so scene figures could only grow).
                # A pair's [SEG]s alternate between frames, so the check asks about that frame alone (prepared
                # afresh: a single image is tiled differently from an image of a pair).
                if len(frames) > 1:
                    single, single_sar, single_prepared = [images[frames.index(frame)]], None, None
                else:
                    single, single_sar, single_prepared = images, sar, request.prepared
                label = query.label(cls)
                check_text = f"Is there any {label} in the image?"
                check = {"class": cls, "frame": frame, "asked": check_text}
                record["checks"].append(check)  # in class order, whatever order the answers come in
                state["open"] += 1
                decoder.submit(Request(single, user_text(check_text, system), single_sar, self.max_new_tokens,
                                       single_prepared, done=partial(checked, check, mask_list, label)))
            close()

        def checked(check: dict, mask_list: list, label: str, request: Request, gen: Generation) -> None:
            said = answer_of(gen.text)
            affirmed = bool(re.match(r"\W*yes\b", said, re.IGNORECASE))
            masks = self._attribute(gen, [check["frame"]], [check["class"]])[(check["class"], check["frame"])] \
                if affirmed else []
            check.update(answer=said, affirmed=affirmed)
            if affirmed and not masks:
                decoder.submit(Request(request.images, user_text(f"Please segment the {label}.", system), request.sar,
                                       self.max_new_tokens, request.prepared,
                                       done=lambda _, ref: segmented(check, mask_list, list(ref.masks))))
                return
            segmented(check, mask_list, masks)

        def segmented(check: dict, mask_list: list, masks: list[np.ndarray]) -> None:
            mask_list.extend(masks)
            check["masks"] = len(masks)
            close()

        return Request(images, user_text(query.question, system), sar, self.max_new_tokens, done=answered)

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
