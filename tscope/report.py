"""Everything ``tscope ask`` writes for one question, from one Trace.

``OUT/answer.md`` (with ``quicklook.png``), ``OUT/masks/<step>.tif`` (COG), ``OUT/masks.geojson``
and ``OUT/answer.json``. ``answer.json`` is written last, so its presence marks a complete run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from tscope.errors import InputError
from tscope.geo import writers
from tscope.geo.scene import Scene
from tscope.reason.trace import Trace

QUICKLOOK_SIDE = 1024
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240)]


def default_out_dir(scene_path: str | Path, question: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", question.lower()).strip("-")[:48].rstrip("-") or "question"
    return Path(f"{Path(scene_path).stem}_{slug}")


def prepare_out_dir(out: Path, overwrite: bool) -> Path:
    """Check ``out`` can take the outputs before any work, creating nothing, so a bad --out fails fast."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if (out / "answer.json").exists() and not overwrite:
        raise InputError(f"{out} already holds an answer; pass --overwrite to replace it")
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to --out {out}: {ancestor} is not a writable folder")
    return out


def remove_previous_outputs(out: Path) -> None:
    """Delete what an earlier ``ask`` wrote in ``out`` (and nothing else)."""
    for name in ("answer.json", "answer.md", "masks.geojson", "quicklook.png", "quicklook_t1.png",
                 "quicklook_t2.png"):
        (out / name).unlink(missing_ok=True)
    if (out / "masks").is_dir():
        for tif in (out / "masks").glob("*.tif"):
            tif.unlink()


def stretch(band: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A 2-98 % percentile stretch of ``band`` to uint8 over its valid, finite pixels (invalid -> 0)."""
    valid = np.isfinite(band) if valid is None else valid & np.isfinite(band)
    values = band[valid]
    if not values.size:
        return np.zeros(band.shape, np.uint8)
    lo, hi = np.percentile(values, [2, 98])
    scaled = (band - lo) / (hi - lo if hi > lo else 1.0)
    out = (np.clip(np.nan_to_num(scaled), 0, 1) * 255).round().astype(np.uint8)
    out[~valid] = 0
    return out


def quicklook(scene: Scene, trace: Trace, frame: str) -> Image.Image:
    """The scene (true colour where it can) with the frame's masks overlaid, at most 1024 px a side."""
    if all(scene.has(b) for b in ("red", "green", "blue")):
        bands = scene.read_overview(["red", "green", "blue"], QUICKLOOK_SIDE)
        rgb = np.stack([stretch(b) for b in bands], axis=-1)
    else:
        name = "vv" if scene.has("vv") else scene.bands[0]
        band = scene.read_overview([name], QUICKLOOK_SIDE)[0]
        if name in ("vv", "vh", "hh", "hv"):
            with np.errstate(divide="ignore", invalid="ignore"):
                band = 10 * np.log10(band)
        grey = stretch(band)
        rgb = np.stack([grey] * 3, axis=-1)
    out = rgb.astype(np.float32)
    h, w = rgb.shape[:2]
    for i, (_, mask) in enumerate(trace.masks.items()):
        if mask.frame != frame:
            continue
        rows = (np.arange(h) * mask.grid.height / h).astype(int)
        cols = (np.arange(w) * mask.grid.width / w).astype(int)
        small = mask.counted[np.ix_(rows, cols)]
        colour = np.array(COLOURS[i % len(COLOURS)], np.float32)
        out[small] = 0.45 * colour + 0.55 * out[small]
    return Image.fromarray(out.astype(np.uint8))


def _markdown(trace: Trace, quicklooks: list[str], legend: list[tuple[str, str, tuple]]) -> str:
    lines = [f"# {trace.question}", "", f"**Answer:** {trace.answer}", ""]
    if trace.model_answer is not None and trace.model_answer != trace.answer:
        lines += [f"**The model's own answer:** {trace.model_answer}", ""]
    if trace.choice is not None:
        lines += [f"**Chosen option:** {trace.choice}", ""]
    for name in quicklooks:
        lines += [f"![quicklook]({name})", ""]
    if legend:
        lines += ["| colour | mask | class | frame |", "|---|---|---|---|"]
        for mask_id, file, colour in legend:
            mask = trace.masks[mask_id]
            hexc = "#{:02x}{:02x}{:02x}".format(*colour)
            lines.append(f"| {hexc} | [{mask_id}]({file}) | {mask.label} | {mask.frame} |")
        lines.append("")
    lines += ["## Reasoning", ""]
    for i, step in enumerate(trace.steps, start=1):
        link = f" → [`{step.mask}`]({trace.outputs.get('mask:' + step.mask, '')})" if step.mask else ""
        lines.append(f"{i}. {step.text}{link}")
    lines += ["", "## Numbers", "", "| name | value | unit |", "|---|---|---|"]
    for key, number in trace.numbers.items():
        value = f"{number.value:,.4f}" if isinstance(number.value, float) else str(number.value)
        lines.append(f"| {key} | {value} | {number.unit} |")
    if trace.tiles:
        lines += ["", "## Tiles", "", "| tile | window | answer |", "|---|---|---|"]
        for tile in trace.tiles:
            lines.append(f"| {tile.get('id')} | {tile.get('window')} | {tile.get('answer', '')} |")
        checks = [(tile.get("id"), c) for tile in trace.tiles for c in tile.get("checks", [])]
        if checks:
            lines += ["", "| tile | asked | answer | mask |", "|---|---|---|---|"]
            lines += [f"| {i} | {c['asked']} | {c['answer']} | {'yes' if c['masks'] else 'no'} |" for i, c in checks]
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in trace.notes]
    lines += ["", "## Scenes", ""]
    for scene in trace.scenes:
        lines.append(f"- {scene['frame']}: `{scene['path']}`, {scene['width']} x {scene['height']} px,"
                     f" {scene['crs']}, bands {', '.join(scene['bands'])} (from {scene['band_source']})")
    lines += ["", f"Backend: `{trace.backend}`. Outputs: `answer.json`, `masks.geojson`, `masks/*.tif`.", ""]
    return "\n".join(lines)


def write_outputs(trace: Trace, scenes: Sequence[Scene], out: Path) -> dict[str, str]:
    """Write all outputs of ``trace`` into ``out`` (prepared by :func:`prepare_out_dir`).

    Outputs of an earlier answer in ``out`` are removed first, ``answer.json`` (the completion
    marker) before anything else, so the folder never mixes two answers.
    """
    remove_previous_outputs(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    legend = []
    layers = []
    # COG encoding runs in GDAL without the GIL: write the rasters (one at a time, to bound memory)
    # while Python builds the polygons.
    with ThreadPoolExecutor(max_workers=1) as pool:
        cogs = []
        for i, (mask_id, mask) in enumerate(trace.masks.items()):
            rel = f"masks/{mask_id}.tif"
            cogs.append(pool.submit(writers.write_mask_cog, out / rel, mask))
            trace.outputs[f"mask:{mask_id}"] = rel
            legend.append((mask_id, rel, COLOURS[i % len(COLOURS)]))
            layers.append((mask, {"class": mask.label, "step": mask_id, "frame": mask.frame}))
        factors = writers.write_geojson_features(out / "masks.geojson", layers)
        for future in cogs:
            future.result()
    coarse = {k: f for k, f in factors.items() if f > 1}
    if coarse:
        trace.notes.append(
            "masks.geojson: large masks vectorised on a coarser grid (majority of each cell) to stay bounded: "
            + ", ".join(f"{k} {f}x{f} px" for k, f in coarse.items()) + "; the GeoTIFF masks are full resolution"
        )
    trace.outputs["geojson"] = "masks.geojson"
    quicklooks = []
    for scene in scenes:
        name = "quicklook.png" if len(scenes) == 1 else f"quicklook_{scene.frame}.png"
        image = quicklook(scene, trace, scene.frame)
        with writers.atomic_path(out / name) as tmp:
            image.save(tmp, format="PNG")
        quicklooks.append(name)
    trace.outputs["quicklook"] = ",".join(quicklooks)
    trace.outputs["report"] = "answer.md"
    trace.outputs["json"] = "answer.json"
    writers.write_text(out / "answer.md", _markdown(trace, quicklooks, legend))
    writers.write_json(out / "answer.json", trace.to_dict())
    return trace.outputs
