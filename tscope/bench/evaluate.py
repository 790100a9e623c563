"""Evaluate an answerer on a TerraScope-Bench parquet: option accuracy and mask IoU, resumably.

An *answerer* is anything with TerraScope's ``chat(images, prompt) -> output`` where ``images`` is
a list of uint8 (H, W, 3) arrays (pre, post for pairs), ``prompt`` the official prompt
(:func:`tscope.bench.answers.format_prompt`) and ``output`` has ``text`` (str), ``masks`` (list of
bool arrays) and ``frames`` (list of int, the image each mask belongs to). The spectral baseline is
wrapped as one (:class:`SpectralAnswerer`) that reads the georeferenced source when a row has one,
else the row's own image (a plain image: measures in pixels, so ground-unit options cannot be picked).

Each scored sample is one JSON line of ``results.jsonl``, appended and flushed as soon as it is
scored; a rerun skips samples already there (a torn last line is dropped), so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tscope.bench.answers import extract_letter, format_prompt
from tscope.bench.schema import BenchSample, abbreviation, read_bench
from tscope.data import image as images
from tscope.data import rle
from tscope.errors import InputError, RuntimeFailure, TscopeError
from tscope.geo.writers import write_text
from tscope.reason.backend import Progress


@dataclass
class ModelOutput:
    """What an answerer returns for one sample (the same fields as the TerraScope backend's)."""

    text: str
    masks: list[np.ndarray] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)


class Answerer(Protocol):
    def chat(self, images: list[np.ndarray], prompt: str) -> Any: ...


@dataclass
class Unanswerable(Exception):
    """The answerer cannot answer this sample; it counts as wrong with ``reason``."""

    reason: str


# --- the spectral baseline ---------------------------------------------------------------------

JPEG_MAGIC = b"\xff\xd8\xff"
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


def candidate_number(text: str) -> float | None:
    match = _NUMBER.search(text.replace(",", ""))
    return float(match.group(0)) if match else None


def closest_letter(value: float, candidates: dict[str, str]) -> str:
    """The option whose number is closest to ``value`` (ties: the first letter)."""
    scored = [(abs(n - value), k) for k, t in candidates.items() if (n := candidate_number(t)) is not None]
    if not scored:
        raise Unanswerable("no numeric options to compare with")
    return min(scored)[1]


def text_letter(word: str, candidates: dict[str, str]) -> str:
    for key, text in candidates.items():
        if text.strip().lower() == word.lower():
            return key
    raise Unanswerable(f"no option reads {word!r}")


class SpectralAnswerer:
    """The spectral backend as a bench answerer: question -> Query -> masks -> measures -> option."""

    name = "spectral"

    def __init__(self, bench_dir: Path, **options: Any):
        from tscope.reason.spectral import SpectralBackend

        self.bench_dir = bench_dir
        self.backend = SpectralBackend(**options)

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.bench_dir / path

    def answer(self, sample: BenchSample) -> tuple[str, dict[tuple[str, str], np.ndarray]]:
        """(response text, predicted masks by (class, frame)); raises :class:`Unanswerable`."""
        from affine import Affine
        from pyproj import CRS

        from tscope.geo.grid import Grid
        from tscope.geo.scene import open_scenes
        from tscope.reason import measures
        from tscope.reason.query import AREA_UNITS, parse_query

        n_images = 2 if (sample.post_source if sample.source else sample.post_image) else 1
        try:
            query = parse_query(sample.question, n_scenes=n_images)
        except InputError as exc:
            raise Unanswerable(f"question not understood: {exc}") from None
        if query.task == "change":
            raise Unanswerable("the spectral backend measures class area change, not per-building damage")
        with tempfile.TemporaryDirectory(prefix="tscope-bench-") as tmp:
            if sample.source:
                paths = [self._path(sample.source)] + ([self._path(sample.post_source)] if sample.post_source else [])
                missing = [str(p) for p in paths if not p.exists()]
                if missing:
                    raise Unanswerable(f"source not found: {', '.join(missing)}")
            else:
                # No georeferenced source (the official release): answer from the row's image itself, as
                # `tscope ask` answers a PNG. Fixed file names: the row's own path is never used on disk.
                paths = []
                for i, data in enumerate([sample.image] + ([sample.post_image] if sample.post_image else [])):
                    suffix = ".jpg" if data.startswith(JPEG_MAGIC) else ".png"
                    paths.append(Path(tmp) / f"t{i + 1}{suffix}")
                    paths[-1].write_bytes(data)
            try:
                scenes = open_scenes(paths)
                if sample.grid and sample.source:
                    g = sample.grid
                    grid = Grid(CRS.from_wkt(g["crs"]), Affine(*g["transform"]), int(g["width"]), int(g["height"]))
                    scenes = [s.aligned_to(grid) for s in scenes]
                if scenes[0].grid.units == "px" and (query.task in ("area", "distance") or query.min_area_m2):
                    raise Unanswerable("no ground size (a plain image without a georeferenced source) for options"
                                       " in ground units")
                masks, _ = self.backend.masks_for(scenes[0], query.classes)
            except TscopeError as exc:
                raise Unanswerable(f"spectral backend: {exc}") from None
        a = masks[query.classes[0]]
        b = masks[query.classes[1]] if len(query.classes) > 1 else None
        task = query.task
        if task == "coverage":
            value = measures.coverage(a).percent
            think, letter = f"coverage {value:.2f}%", closest_letter(value, sample.candidates)
        elif task == "area":
            unit = query.unit or "m2"
            value = measures.area_m2(a) / AREA_UNITS[unit]
            think, letter = f"area {value:.3f} {unit}", closest_letter(value, sample.candidates)
        elif task == "distance":
            value = measures.distance(a, b).metres
            if not math.isfinite(value):
                raise Unanswerable("a class of the question is absent from the spectral masks")
            value /= 1000.0 if query.unit == "km" else 1.0
            think, letter = f"distance {value:.1f}", closest_letter(value, sample.candidates)
        elif task == "count":
            value = measures.count(a, query.min_area_m2).count
            think, letter = f"count {value}", closest_letter(value, sample.candidates)
        elif task == "compare":
            from tscope.data.labels import display_name

            larger = measures.compare(a, b).larger
            think, letter = f"larger: {larger}", text_letter(display_name(larger), sample.candidates)
        elif task == "adjacency":
            borders = measures.adjacency(a, b).borders
            think, letter = f"borders: {borders}", text_letter("Yes" if borders else "No", sample.candidates)
        elif task == "existence":
            present = measures.existence(a, query.min_area_m2).present
            think, letter = f"present: {present}", text_letter("Yes" if present else "No", sample.candidates)
        else:
            raise Unanswerable(f"no option mapping for a {task} question")
        predicted = {(cls, "t1"): m.counted for cls, m in masks.items()}
        return f"<think>{think}</think><answer>{letter}</answer>", predicted


# --- scoring -----------------------------------------------------------------------------------


def iou(a: np.ndarray, b: np.ndarray) -> float | None:
    """Intersection over union of two bool masks; None when both are empty."""
    union = np.count_nonzero(a | b)
    return None if union == 0 else float(np.count_nonzero(a & b)) / union


def _fit(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == shape:
        return mask
    from PIL import Image

    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)) > 127


def sample_iou(sample: BenchSample, by_label: dict[tuple[str, str], np.ndarray] | None = None,
               unordered: Sequence[tuple[np.ndarray, str]] | None = None) -> float | None:
    """Mean IoU over the sample's ground-truth masks (those with a non-empty union).

    ``by_label``: predictions keyed by (class, frame), matched by name (spectral). ``unordered``:
    (mask, frame) pairs from a model, each ground-truth mask taking its best IoU among the
    predictions of its frame. A ground-truth mask with no prediction scores 0 unless it is empty.
    """
    scores = []
    for gt in sample.gt_masks:
        truth = rle.decode(gt.rle)
        if by_label is not None:
            pred = by_label.get((gt.label, gt.frame))
            candidates = [pred] if pred is not None else []
        else:
            candidates = [m for m, frame in (unordered or []) if frame == gt.frame]
        values = [v for m in candidates if (v := iou(_fit(m, truth.shape), truth)) is not None]
        if values:
            scores.append(max(values))
        elif truth.any():
            scores.append(0.0)
    return float(np.mean(scores)) if scores else None


def score(sample: BenchSample, answerer: Any) -> dict:
    """Ask one sample and score it: a results.jsonl record."""
    record = {"id": sample.id, "row": sample.row, "task_type": sample.task_type, "question": sample.question,
              "gt_answer": sample.answer, "predicted_answer": None, "correct": False, "response": "",
              "extraction": "none", "iou": None, "reason": None}
    try:
        if isinstance(answerer, SpectralAnswerer):
            response, predicted = answerer.answer(sample)
            record["iou"] = sample_iou(sample, by_label=predicted) if sample.gt_masks else None
        else:
            pictures = [images.png_array(sample.image)]
            if sample.post_image is not None:
                pictures.append(images.png_array(sample.post_image))
            try:
                output = answerer.chat(pictures, format_prompt(sample.question, sample.candidates))
            except TscopeError:
                raise
            except Exception as exc:  # noqa: BLE001 - any model failure: stop, the scored rows are kept
                raise RuntimeFailure(f"row {sample.row} ({sample.id}): the answerer failed: {exc}"
                                     " (rerun to resume after the last scored sample)") from exc
            response = str(getattr(output, "text", output) or "")
            masks = list(getattr(output, "masks", None) or [])
            frames = list(getattr(output, "frames", None) or [0] * len(masks))
            if sample.gt_masks:
                record["iou"] = sample_iou(sample, unordered=[(m, f"t{int(f) + 1}") for m, f in zip(masks, frames,
                                                                                                     strict=False)])
    except Unanswerable as exc:
        record["reason"] = exc.reason
        return record
    letter, how = extract_letter(response, "".join(sample.candidates))
    record.update(response=response, predicted_answer=letter, extraction=how, correct=letter == sample.answer)
    if letter is None:
        record["reason"] = "no option letter in the response"
    return record


# --- the resumable loop ------------------------------------------------------------------------


def load_results(path: Path) -> list[dict]:
    """Scored records of ``path``; a torn (unparseable) line, left by an interrupted run, is dropped."""
    if not path.exists():
        return []
    records, torn = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn = True
    if torn:
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return records


def select(samples: list[BenchSample], tasks: Sequence[str] | None, limit: int | None) -> list[BenchSample]:
    """Samples of ``tasks`` (task types or their abbreviations, e.g. CA,BRD), at most ``limit``."""
    if tasks:
        wanted = {t.strip() for t in tasks if t.strip()}
        known = {s.task_type for s in samples} | {abbreviation(s.task_type) for s in samples}
        unknown = wanted - known
        if unknown:
            raise InputError(f"--tasks: no sample of {', '.join(sorted(unknown))} in the bench;"
                             f" it has {', '.join(sorted({s.task_type for s in samples}))}")
        samples = [s for s in samples if s.task_type in wanted or abbreviation(s.task_type) in wanted]
    return samples[:limit] if limit else samples


def fingerprint(sample: BenchSample, answerer: Any) -> str:
    """What a results record was computed from: the sample's content and the answerer's name."""
    digest = hashlib.sha256()
    digest.update(json.dumps([sample.question, sample.candidates, sample.answer, sample.task_type,
                              getattr(answerer, "name", type(answerer).__name__)]).encode())
    digest.update(sample.image)
    digest.update(sample.post_image or b"")
    return digest.hexdigest()[:16]


def evaluate(bench: str | Path, answerer: Any, results: str | Path, *, tasks: Sequence[str] | None = None,
             limit: int | None = None, progress: Progress | None = None) -> list[dict]:
    """Score every selected sample not yet in ``results`` (JSON lines); returns all selected records."""
    samples = select(read_bench(bench), tasks, limit)
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise InputError(f"{bench}: sample ids repeat; resumable evaluation needs unique ids")
    marks = {s.id: fingerprint(s, answerer) for s in samples}
    # A record is reused only for the same sample (question, options, answer, images) and the same
    # answerer: rebuilding the bench with another seed keeps the ids but not the questions.
    done = {r["id"]: r for r in load_results(results) if marks.get(r["id"]) == r.get("fingerprint")}
    todo = [s for s in samples if s.id not in done]
    out = None
    try:
        for i, sample in enumerate(todo):
            record = score(sample, answerer) | {"fingerprint": marks[sample.id]}
            # Opened at the first record: a run that scores nothing leaves no empty file behind.
            out = out or open(results, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
            # One write per record, flushed and synced: a crash loses at most the line being written.
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            done[sample.id] = record
            if progress:
                progress(i + 1, len(todo))
    finally:
        if out is not None:
            out.close()
    return [done[s.id] for s in samples]
