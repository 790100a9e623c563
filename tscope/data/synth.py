"""Terra-CoT synthesis: questions, pixel-grounded chains of thought and answers from ground-truth masks.

For each image (or image chip) the ground truth becomes class masks on the image's grid
(:mod:`tscope.data.labels`); each L1 task picks classes that pass the filters, computes its number
with :mod:`tscope.reason.measures`, and phrases question, chain of thought and answer
(:mod:`tscope.data.templates`). Samples are written in the official training format:

* single image (read by TerraScope's ``GranDfGCGDataset``): ``{"image", "conversations": [{"from":
  "human", "value": "<image>\\n…"}, {"from": "gpt", "value": "<think>…[SEG]…</think><answer>…</answer>"}],
  "masks": [[rle], …], "labels": […]}`` with one mask group per ``[SEG]``, in order;
* pre/post pair (``VideoCoTDataset``): ``pre_image`` and ``post_image`` instead of ``image``, the
  pre-image masks first, then the post-image ones, as that loader splits them.

Extra keys (``id``, ``task``, ``answer_value``, ``source``) are ignored by those loaders.
Everything is deterministic given the seed: each image draws from its own ``random.Random``.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tscope.data import image as images
from tscope.data import rle, templates
from tscope.data.labels import (
    BUILDING,
    ClassTable,
    display_name,
    footprint_masks,
    label_masks,
    load_class_table,
    read_footprints,
    read_labels,
)
from tscope.data.templates import SEG
from tscope.errors import InputError
from tscope.geo import writers
from tscope.geo.mask import Mask
from tscope.geo.scene import ReadOptions, Scene, open_scenes
from tscope.reason import measures
from tscope.reason.query import vocabulary

log = logging.getLogger("tscope")

TASKS = ("existence", "counting", "localisation", "area", "coverage", "boundary", "distance", "damage")
PAIR_TASKS = ("damage",)

# Filters: a class is usable for a question when it is neither a speck nor the whole image.
MIN_PIXELS = 16
MIN_COVERAGE = 0.5
MAX_COVERAGE = 95.0
MAX_COUNT = 30


@dataclass
class GroundTruth:
    """What one image (or chip) holds: its scenes on one grid, rendered images and class masks."""

    key: str
    scenes: list[Scene]
    rgb: list[np.ndarray]
    masks: dict[str, Mask]
    post_masks: dict[str, Mask] = field(default_factory=dict)


@dataclass
class Sources:
    """Where ground truth comes from: a label raster with its class table, and/or footprints."""

    labels: Path | None = None
    table: ClassTable | None = None
    footprints: Path | None = None

    @classmethod
    def open(cls, labels: str | Path | None, classes: str | Path | None = None,
             footprints: str | Path | None = None) -> Sources:
        if labels is None and footprints is None:
            raise InputError("give ground truth: --labels LABELS.tif and/or --footprints FOOTPRINTS.json")
        table = load_class_table(labels, classes) if labels is not None else None
        return cls(Path(labels) if labels else None, table, Path(footprints) if footprints else None)


def ground_truth(paths: Sequence[str | Path], sources: Sources, chip: int | None = None,
                 read_options: ReadOptions | None = None) -> list[GroundTruth]:
    """Open one image (or a pre/post pair), cut it into chips and build every chip's masks.

    Label masks live on the (first) image; footprints burn into ``built_up`` on it, and into one
    mask per damage level on the post image of a pair (damage is seen after the event).
    """
    scenes = open_scenes(paths, read_options)
    footprints = read_footprints(sources.footprints) if sources.footprints else None
    out = []
    stem = "_".join(Path(p).stem for p in paths)
    unlabelled = 0
    for chip_id, grid in images.chips(scenes[0].grid, chip):
        chip_scenes = [s.aligned_to(grid) for s in scenes]
        rendered = [images.render(s) for s in chip_scenes]
        valid = np.logical_and.reduce([v for _, v in rendered])
        masks: dict[str, Mask] = {}
        post: dict[str, Mask] = {}
        if sources.labels is not None:
            labels, label_valid = read_labels(sources.labels, grid)
            if not label_valid.any():
                # No ground truth here: "is there any wetland? No" would be an invented answer.
                unlabelled += 1
                continue
            by_class = label_masks(labels, label_valid & valid, sources.table, grid,
                                   source=f"label raster {sources.labels.name}")
            # Only classes the question parser knows become questions (so any backend can be asked
            # them); others (e.g. tundra) still bound the valid area through the table.
            masks.update({c: m for c, m in by_class.items() if c in vocabulary()})
        if footprints is not None:
            fps, crs = footprints
            src = f"footprints {sources.footprints.name}"
            burnt = footprint_masks(fps, crs, grid, valid, frame="t1", source=src)
            masks[BUILDING] = burnt[BUILDING]
            if len(chip_scenes) == 2:
                post = {k: Mask(m.data, m.valid, grid, m.label, "t2", src)
                        for k, m in burnt.items() if k != BUILDING}
        key = stem + (f"_{chip_id}" if chip_id else "")
        out.append(GroundTruth(key, chip_scenes, [rgb for rgb, _ in rendered], masks, post))
    if unlabelled and not out:
        raise InputError(f"--labels {sources.labels}: the label raster does not overlap {', '.join(map(str, paths))}")
    if unlabelled:
        log.warning("%s: %d chip(s) outside the label raster skipped", stem, unlabelled)
    return out


def unique_key(gt: GroundTruth, used: set[str]) -> GroundTruth:
    """Give ``gt`` a key not in ``used`` (two inputs may share a file name): ids and PNG names stay unique."""
    key, n = gt.key, 2
    while key in used:
        key, n = f"{gt.key}_{n}", n + 1
    used.add(key)
    gt.key = key
    return gt


def usable(mask: Mask) -> bool:
    """Not degenerate: enough pixels, and neither a sliver nor (almost) the whole valid area."""
    if np.count_nonzero(mask.counted) < MIN_PIXELS:
        return False
    pct = measures.coverage(mask).percent
    return MIN_COVERAGE <= pct <= MAX_COVERAGE


@dataclass
class Draft:
    """One question with its reasoning: the ``[SEG]`` masks in order, the gpt text and the value."""

    task: str
    question: str
    answer: str
    steps: list[str]
    masks: list[Mask]
    value: float | int | bool | str

    @property
    def text(self) -> str:
        return templates.think(self.steps, self.answer)


def _existence(gt: GroundTruth, rng: random.Random) -> list[Draft]:
    present = [c for c, m in gt.masks.items() if usable(m)]
    absent = [c for c, m in gt.masks.items() if not m.counted.any()]
    drafts = []
    for cls in [rng.choice(present)] if present else []:
        r = measures.existence(gt.masks[cls])
        name = display_name(cls)
        steps = [f"To check for {name}, I segment the {name} {SEG}.",
                 f"The segmented {name} forms {r.regions} region{'s' if r.regions != 1 else ''} of at least"
                 f" {r.min_area_m2:.0f} m², the largest covering"
                 f" {templates.fmt_area(r.largest_m2, templates.area_unit(r.largest_m2))},"
                 f" so {name} is present."]
        drafts.append(Draft("existence", templates.question("existence", rng, name), "Yes", steps,
                            [gt.masks[cls]], True))
    for cls in [rng.choice(absent)] if absent else []:
        r = measures.existence(gt.masks[cls])
        name = display_name(cls)
        steps = [f"To check for {name}, I segment the {name} {SEG}.",
                 f"The segmentation finds no {name} region of at least {r.min_area_m2:.0f} m², so there is none."]
        drafts.append(Draft("existence", templates.question("existence", rng, name), "No", steps,
                            [gt.masks[cls]], False))
    return drafts


def _counting(gt: GroundTruth, rng: random.Random) -> list[Draft]:
    counts = {c: measures.count(m) for c, m in gt.masks.items() if usable(m)}
    eligible = [c for c, r in counts.items() if 1 <= r.count <= MAX_COUNT]
    if not eligible:
        return []
    cls = rng.choice(eligible)
    r, name = counts[cls], display_name(cls)
    sizes = ", ".join(templates.fmt_area(a, templates.area_unit(a)) for a in r.region_areas_m2[:3])
    steps = [templates.segment_step(name),
             f"Counting separate regions of at least {r.min_area_m2:.0f} m² in the mask gives {r.count}"
             f" (largest: {sizes})."]
    return [Draft("counting", templates.question("counting", rng, name), str(r.count), steps, [gt.masks[cls]],
                  r.count)]


def _localisation(gt: GroundTruth, rng: random.Random) -> list[Draft]:
    eligible = [c for c, m in gt.masks.items() if usable(m)]
    if not eligible:
        return []
    cls = rng.choice(eligible)
    r, name = measures.locate(gt.masks[cls]), display_name(cls)
    where = "the centre" if r.position == "centre" else f"the {r.position} part"
    steps = [templates.segment_step(name),
             f"The area-weighted centre of the mask lies at {_latlon(r.centroid)},"
             f" which is {where} of the image."]
    answer = "Centre" if r.position == "centre" else f"{r.position.capitalize()} part"
    return [Draft("localisation", templates.question("localisation", rng, name), answer, steps, [gt.masks[cls]],
                  r.position)]


def _latlon(lonlat: tuple[float, float]) -> str:
    lon, lat = lonlat
    return f"{abs(lat):.5f}° {'N' if lat >= 0 else 'S'}, {abs(lon):.5f}° {'E' if lon >= 0 else 'W'}"


def _area(gt: GroundTruth, rng: random.Random) -> list[Draft]:
    eligible = [c for c, m in gt.masks.items() if usable(m)]
    if not eligible:
        return []
    cls = rng.choice(eligible)
    name, area = display_name(cls), measures.area_m2(gt.masks[cls])
    unit = templates.area_unit(area)
    px, py = gt.masks[cls].grid.pixel_size_m()
    pixels = int(np.count_nonzero(gt.masks[cls].counted))
    steps = [templates.segment_step(name),
             f"The mask has {pixels} pixels of about {px:.2f} m x {py:.2f} m, so the {name} covers"
             f" {area:.0f} m²" + (f", that is {templates.fmt_area(area, unit)}." if unit != "m2" else ".")]
    return [Draft("area", templates.question("area", rng, name, unit=unit), templates.fmt_area(area, unit), steps,
                  [gt.masks[cls]], round(area, 3))]


def _coverage(gt: GroundTruth, rng: random.Random) -> list[Draft]:
    eligible = [c for c, m in gt.masks.items() if usable(m)]
    if not eligible:
        return []
    cls = rng.choice(eligible)
    name, r = display_name(cls), measures.coverage(gt.masks[cls])
    steps = [templates.segment_step(name),
             f"The {name} covers {r.area_m2:.0f} m² of the {r.valid_area_m2:.0f} m² of valid image area:"
             f" {r.area_m2:.0f} / {r.valid_area_m2:.0f} = {templates.fmt_pct(r.percent)}."]
    return [Draft("coverage", templates.question("coverage", rng, name), templates.fmt_pct(r.percent), steps,
                  [gt.masks[cls]], round(r.percent, 4))]


def _pairs(gt: GroundTruth) -> list[tuple[str, str]]:
    names = [c for c, m in gt.masks.items() if usable(m)]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]


def _boundary(gt: GroundTruth, rng: random.Random) -> list[Draft]:
    pairs = _pairs(gt)
    if not pairs:
        return []
    touching = {p: measures.adjacency(gt.masks[p[0]], gt.masks[p[1]]).borders for p in pairs}
    wanted = rng.random() < 0.5
    a, b = rng.choice([p for p in pairs if touching[p] == wanted] or pairs)
    if rng.random() < 0.5:
        a, b = b, a
    r = measures.adjacency(gt.masks[a], gt.masks[b])
    na, nb = display_name(a), display_name(b)
    steps = [templates.segment_step(na), templates.segment_step(nb)]
    if r.borders:
        steps.append(f"The masks share about {r.shared_boundary_m:.0f} m of boundary, so the {na} borders the {nb}.")
    else:
        d = measures.distance(gt.masks[a], gt.masks[b])
        steps.append(f"The two masks share no pixel edge; the closest they come is {templates.fmt_m(d.metres)}.")
    return [Draft("boundary", templates.question("boundary", rng, na, nb), "Yes" if r.borders else "No", steps,
                  [gt.masks[a], gt.masks[b]], r.borders)]


def _distance(gt: GroundTruth, rng: random.Random) -> list[Draft]:
    pairs = []
    for a, b in _pairs(gt):
        d = measures.distance(gt.masks[a], gt.masks[b])
        if math.isfinite(d.metres) and d.metres > 0:
            pairs.append((a, b, d))
    if not pairs:
        return []
    a, b, d = rng.choice(pairs)
    na, nb = display_name(a), display_name(b)
    steps = [templates.segment_step(na), templates.segment_step(nb),
             f"The nearest edges of the two masks are {d.metres:.1f} m apart."]
    return [Draft("distance", templates.question("distance", rng, na, nb), templates.fmt_m(d.metres), steps,
                  [gt.masks[a], gt.masks[b]], round(d.metres, 3))]


def _damage(gt: GroundTruth, rng: random.Random) -> list[Draft]:
    destroyed = gt.post_masks.get("destroyed")
    if destroyed is None or BUILDING not in gt.masks:
        return []
    total, lost = measures.count(gt.masks[BUILDING]), measures.count(destroyed)
    if total.count == 0:
        return []
    post = Mask(destroyed.data, destroyed.valid, destroyed.grid, "destroyed", "t2", destroyed.source)
    steps = [templates.segment_step("buildings", "pre-event"),
             f"There are {total.count} buildings before the event.",
             templates.segment_step("destroyed buildings", "post-event"),
             f"{lost.count} of the {total.count} buildings are destroyed after the event."]
    return [Draft("damage", templates.question("damage", rng), str(lost.count), steps, [gt.masks[BUILDING], post],
                  lost.count)]


BUILDERS: dict[str, Callable[[GroundTruth, random.Random], list[Draft]]] = {
    "existence": _existence, "counting": _counting, "localisation": _localisation, "area": _area,
    "coverage": _coverage, "boundary": _boundary, "distance": _distance, "damage": _damage,
}


def parse_tasks(spec: str | Sequence[str] | None, known: Sequence[str]) -> list[str]:
    if spec is None:
        return list(known)
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    bad = [t for t in names if t not in known]
    if bad or not names:
        raise InputError(f"unknown task(s) {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
    return names


def drafts_for(gt: GroundTruth, tasks: Sequence[str], seed: int) -> list[Draft]:
    """Every task's drafts for one image, deterministic given ``seed`` and the image key."""
    rng = random.Random(f"{seed}:{gt.key}")
    out = []
    for task in tasks:
        if (task in PAIR_TASKS) != (len(gt.scenes) == 2):
            continue
        out.extend(BUILDERS[task](gt, rng))
    return out


def to_record(draft: Draft, gt: GroundTruth, image_names: list[str], index: int) -> dict:
    """A draft in the official training format (see the module docstring)."""
    record: dict = {"id": f"{gt.key}_{draft.task}_{index}"}
    if len(image_names) == 2:
        record["pre_image"], record["post_image"] = image_names
    else:
        record["image"] = image_names[0]
    record["conversations"] = [
        {"from": "human", "value": "<image>\n" + draft.question},
        {"from": "gpt", "value": draft.text},
    ]
    # Pairs: the loader takes the first half of the masks for the pre image, the rest for the post
    # image; the drafts already list pre-image masks first.
    record["masks"] = [[rle.encode(m.counted)] for m in draft.masks]
    record["labels"] = [m.label for m in draft.masks]
    record["frames"] = [m.frame for m in draft.masks]
    record["task"] = draft.task
    record["answer_value"] = draft.value
    record["source"] = [str(s.path) for s in gt.scenes]
    if draft.text.count(SEG) != len(draft.masks):
        raise RuntimeError(f"{record['id']}: {draft.text.count(SEG)} [SEG] for {len(draft.masks)} masks")
    return record


def synthesise(images_in: Sequence[str | Path], out: str | Path, sources: Sources, *, post: str | Path | None = None,
               tasks: Sequence[str] | None = None, seed: int = 0, chip: int | None = None, limit: int | None = None,
               read_options: ReadOptions | None = None, progress=None) -> dict:
    """Write ``OUT/images/*.png`` and ``OUT/terra_cot.jsonl``; returns a summary (counts per task).

    With ``post``, the single image in ``images_in`` is the pre-event image of a pair.
    """
    tasks = parse_tasks(tasks, TASKS)
    out = Path(out)
    if post is not None and len(images_in) != 1:
        raise InputError("--post pairs with exactly one pre-event image")
    groups = [[images_in[0], post]] if post is not None else [[p] for p in images_in]
    # A failure or Ctrl-C removes the images this run wrote and the folders it made.
    with writers.rollback_on_failure() as made:
        made.mkdir(out / "images")
        records: list[dict] = []
        used: set[str] = set()
        for n, paths in enumerate(groups):
            for gt in ground_truth(paths, sources, chip, read_options):
                gt = unique_key(gt, used)
                drafts = drafts_for(gt, tasks, seed)
                if not drafts:
                    continue
                names = []
                for i, rgb in enumerate(gt.rgb):
                    suffix = ("_pre", "_post")[i] if len(gt.rgb) == 2 else ""
                    name = f"images/{gt.key}{suffix}.png"
                    with writers.atomic_path(made.add(out / name)) as tmp:
                        tmp.write_bytes(images.png_bytes(rgb))
                    names.append(name)
                for i, draft in enumerate(drafts):
                    records.append(to_record(draft, gt, names, i))
                    if limit and len(records) >= limit:
                        break
                if limit and len(records) >= limit:
                    break
            if progress:
                progress(n + 1, len(groups))
            if limit and len(records) >= limit:
                break
        path = out / "terra_cot.jsonl"
        writers.write_text(made.add(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    per_task: dict[str, int] = {}
    for r in records:
        per_task[r["task"]] = per_task.get(r["task"], 0) + 1
    return {"samples": len(records), "per_task": per_task, "file": str(path), "images": str(out / "images")}


def read_records(path: str | Path) -> list[dict]:
    """Parse a Terra-CoT JSON-lines file back (one dict per line)."""
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{i}: not a JSON object ({exc})") from None
    return out
