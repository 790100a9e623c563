"""Build TerraScope-Bench samples from ground truth: six tasks, multiple choice, masks kept.

Tasks (paper abbreviations): coverage percentage (CA), absolute area (AQ), comparative area
ranking (CR, 2 options), boundary relationship (BRD, 2 options), distance measurement (DM), building
change estimation (BCE, from pre/post footprints with damage labels). Numbers come from
:mod:`tscope.reason.measures` on the ground-truth masks; questions are phrased so that
:func:`tscope.reason.query.parse_query` reads them, so the spectral backend can answer them too.

Filters: every class must be usable (:func:`tscope.data.synth.usable`); BRD skips classes under 3 %
coverage or with more than 5 connected components (any size); CR needs areas at least 20 % apart;
DM needs classes that do not touch; BCE needs at least 10 buildings of which at least 3 destroyed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from tscope.bench.schema import LETTERS, TASK_TYPES, write_bench
from tscope.data import image as images
from tscope.data import rle
from tscope.data.labels import BUILDING, display_name
from tscope.data.synth import GroundTruth, Sources, ground_truth, parse_tasks, unique_key, usable
from tscope.geo.mask import Mask
from tscope.geo.scene import ReadOptions
from tscope.reason import measures

BRD_MIN_COVERAGE = 3.0
BRD_MAX_REGIONS = 5
CR_MIN_RATIO = 1.2
BCE_MIN_TOTAL = 10
BCE_MIN_DESTROYED = 3
# Distractors differ from the answer and from each other by at least this fraction of the larger.
MIN_RELATIVE_GAP = 0.15
FACTORS = (0.45, 0.6, 0.7, 1.3, 1.45, 1.7, 2.0)


def numeric_options(value: float, rng: random.Random, fmt: Callable[[float], str], *, integer: bool = False,
                    upper: float | None = None, min_gap: float = 0.0) -> tuple[dict[str, str], str]:
    """Four options (three distractors) around ``value``: close, but clearly distinguishable.

    Distractors are ``value`` times factors between 0.45 and 2 (or ± steps when ``value`` is near
    zero), kept when at least 15 % (and ``min_gap``) away from every other option and, when given,
    not above ``upper``. Returns (options by letter, the correct letter).
    """
    chosen = [value]

    def far(x: float) -> bool:
        return all(abs(x - y) >= max(min_gap, MIN_RELATIVE_GAP * max(abs(x), abs(y)), 1e-9) for y in chosen)

    factors = list(FACTORS)
    rng.shuffle(factors)
    step = max(abs(value) * 0.3, 1.0 if integer else min_gap or 1.0)
    pool = [value * f for f in factors] + [value + k * step for k in (2, 3, 4, 5, 6, 7, -2, -3)]
    for x in pool:
        if len(chosen) == 4:
            break
        x = float(round(x)) if integer else x
        if x <= 0 or (upper is not None and x > upper) or not far(x):
            continue
        if fmt(x) in {fmt(y) for y in chosen}:
            continue
        chosen.append(x)
    if len(chosen) < 4:
        raise ValueError(f"cannot place 3 distractors around {value}")
    order = chosen[:]
    rng.shuffle(order)
    options = {LETTERS[i]: fmt(x) for i, x in enumerate(order)}
    return options, LETTERS[order.index(value)]


def _two(first: str, second: str, correct: str, rng: random.Random) -> tuple[dict[str, str], str]:
    pair = [first, second]
    rng.shuffle(pair)
    return {"A": pair[0], "B": pair[1]}, "AB"[pair.index(correct)]


def _usable(gt: GroundTruth) -> list[str]:
    return [c for c, m in gt.masks.items() if usable(m)]


def _ca(gt, rng):
    cls = rng.choice(_usable(gt))
    pct = measures.coverage(gt.masks[cls]).percent
    options, answer = numeric_options(pct, rng, lambda x: f"{x:.1f}%", upper=100.0, min_gap=0.5)
    q = f"What percentage of the image is covered by {display_name(cls)}?"
    return q, options, answer, [gt.masks[cls]], round(pct, 4), "%"


def _aq(gt, rng):
    cls = rng.choice(_usable(gt))
    area = measures.area_m2(gt.masks[cls])
    unit, scale = ("ha", 1e4) if area >= 1e4 else ("m2", 1.0)
    fmt = (lambda x: f"{x:.2f} ha") if unit == "ha" else (lambda x: f"{x:.0f} m²")
    options, answer = numeric_options(area / scale, rng, fmt)
    words = "hectares" if unit == "ha" else "square metres"
    q = f"What is the area of {display_name(cls)} in {words}?"
    return q, options, answer, [gt.masks[cls]], round(area / scale, 6), unit


def _cr(gt, rng):
    names = _usable(gt)
    areas = {c: measures.area_m2(gt.masks[c]) for c in names}
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
             if max(areas[a], areas[b]) >= CR_MIN_RATIO * min(areas[a], areas[b])]
    a, b = rng.choice(pairs)
    r = measures.compare(gt.masks[a], gt.masks[b])
    na, nb = display_name(a), display_name(b)
    options, answer = _two(na, nb, display_name(r.larger), rng)
    q = f"Which covers a larger area, the {na} or the {nb}?"
    return q, options, answer, [gt.masks[a], gt.masks[b]], r.larger, None


def _brd(gt, rng):
    names = [c for c in _usable(gt) if measures.coverage(gt.masks[c]).percent >= BRD_MIN_COVERAGE
             and measures.count(gt.masks[c], min_area=0.0).count <= BRD_MAX_REGIONS]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    touching = {p: measures.adjacency(gt.masks[p[0]], gt.masks[p[1]]).borders for p in pairs}
    # Aim for as many "No" as "Yes" answers: draw the answer first, then a pair that has it if any.
    wanted = rng.random() < 0.5
    a, b = rng.choice([p for p in pairs if touching[p] == wanted] or pairs)
    borders = touching[(a, b)]
    options, answer = _two("Yes", "No", "Yes" if borders else "No", rng)
    q = f"Does the {display_name(a)} border the {display_name(b)}?"
    return q, options, answer, [gt.masks[a], gt.masks[b]], borders, None


def _dm(gt, rng):
    names = _usable(gt)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = measures.distance(gt.masks[a], gt.masks[b]).metres
            if math.isfinite(d) and d > 0:
                pairs.append((a, b, d))
    a, b, d = rng.choice(pairs)
    px, _ = gt.masks[a].grid.pixel_size_m()
    options, answer = numeric_options(d, rng, lambda x: f"{x:.0f} m", min_gap=2 * px)
    q = f"How far is the {display_name(a)} from the {display_name(b)}, in metres?"
    return q, options, answer, [gt.masks[a], gt.masks[b]], round(d, 3), "m"


def _bce(gt, rng):
    destroyed = gt.post_masks.get("destroyed")
    total = measures.count(gt.masks[BUILDING]).count
    lost = measures.count(destroyed).count if destroyed is not None else 0
    if total < BCE_MIN_TOTAL or lost < BCE_MIN_DESTROYED:
        raise IndexError("too few buildings")
    options, answer = numeric_options(float(lost), rng, lambda x: f"{x:.0f}", integer=True)
    q = "How many buildings were destroyed between the two images?"
    post = Mask(destroyed.data, destroyed.valid, destroyed.grid, "destroyed", "t2", destroyed.source)
    return q, options, answer, [gt.masks[BUILDING], post], lost, "buildings"


BUILDERS = {"CA": _ca, "AQ": _aq, "CR": _cr, "BRD": _brd, "DM": _dm, "BCE": _bce}
PAIR_TASKS = ("BCE",)


def _grid_json(mask: Mask) -> dict:
    g = mask.grid
    return {"crs": g.pyproj_crs.to_wkt(), "transform": list(g.transform)[:6], "width": g.width, "height": g.height}


def samples_for(gt: GroundTruth, tasks: Sequence[str], seed: int) -> list[dict]:
    """One sample per task the image supports (filters above), deterministic given ``seed``."""
    rng = random.Random(f"bench:{seed}:{gt.key}")
    rows = []
    for task in tasks:
        if (task in PAIR_TASKS) != (len(gt.scenes) == 2):
            continue
        try:
            q, options, answer, masks, value, unit = BUILDERS[task](gt, rng)
        except (IndexError, KeyError, ValueError):
            # IndexError: rng.choice over nothing eligible; KeyError: no such class; ValueError: no room
            # for distractors. Each means "this image has no sample for this task".
            continue
        pngs = [images.png_bytes(rgb) for rgb in gt.rgb]
        rows.append({
            "id": f"{gt.key}_{task}",
            "image": {"bytes": pngs[0], "path": f"{gt.key}{'_pre' if len(pngs) == 2 else ''}.png"},
            "question": q,
            "candidates": options,
            "answer": answer,
            "task_type": TASK_TYPES[task],
            "post_image": {"bytes": pngs[1], "path": f"{gt.key}_post.png"} if len(pngs) == 2 else None,
            "source": str(Path(gt.scenes[0].path).resolve()),
            "post_source": str(Path(gt.scenes[1].path).resolve()) if len(gt.scenes) == 2 else None,
            "grid": _grid_json(masks[0]),
            "gt_masks": [{"label": m.label, "frame": m.frame, "rle": rle.encode(m.counted)} for m in masks],
            "answer_value": value,
            "unit": unit,
        })
    return rows


def build_bench(images_in: Sequence[str | Path], out: str | Path, sources: Sources, *, post: str | Path | None = None,
                tasks: Sequence[str] | str | None = None, seed: int = 0, chip: int | None = None,
                limit: int | None = None, read_options: ReadOptions | None = None, progress=None) -> dict:
    """Write a bench parquet from images + ground truth; returns a summary (samples per task type)."""
    from tscope.errors import InputError

    tasks = parse_tasks(tasks, list(BUILDERS))
    if post is not None and len(images_in) != 1:
        raise InputError("--post pairs with exactly one pre-event image")
    groups = [[images_in[0], post]] if post is not None else [[p] for p in images_in]
    rows: list[dict] = []
    used: set[str] = set()
    for n, paths in enumerate(groups):
        for gt in ground_truth(paths, sources, chip, read_options):
            rows.extend(samples_for(unique_key(gt, used), tasks, seed))
        if progress:
            progress(n + 1, len(groups))
        if limit and len(rows) >= limit:
            rows = rows[:limit]
            break
    if not rows:
        raise InputError("no sample passed the filters: the images have too few usable classes for these tasks")
    write_bench(rows, out)
    per_task: dict[str, int] = {}
    for r in rows:
        per_task[r["task_type"]] = per_task.get(r["task_type"], 0) + 1
    return {"samples": len(rows), "per_task": per_task, "file": str(out)}
