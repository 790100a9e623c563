"""Everything ``tscope ask`` writes for one question, from one Trace.

``OUT/answer.md`` (with ``quicklook.png``), ``OUT/masks/<step>.tif`` (COG), ``OUT/masks.geojson``
and ``OUT/answer.json``. ``answer.json`` is written last, so its presence marks a complete run.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from tscope.errors import InputError
from tscope.geo import writers
from tscope.geo.polygons import MAX_FEATURES, MAX_TRACE_PIXELS, MAX_VERTICES, PRECISION_DEG, Polygons
from tscope.geo.preview import Preview, preview_bands, scene_preview
from tscope.geo.scene import Scene
from tscope.geo.writers import sweep_partials
from tscope.reason.trace import Trace

# One colour per class, the same in every frame: saturated hues that natural scenes do not have
# (magenta, yellow, cyan, orange...), so a mask stays visible on grass, water or bare soil.
CLASS_COLOURS = [(255, 0, 255), (255, 230, 0), (0, 230, 255), (255, 120, 0), (160, 60, 255), (255, 0, 80)]
NODATA_COLOUR = (40, 40, 40)
EXCLUDED_COLOUR = (150, 150, 150)
MIN_SIDE = 512
FONT_SIZE = 14


def default_out_dir(scene_path: str | Path, question: str) -> Path:
    words = [w for w in re.sub(r"[^a-z0-9]+", " ", question.lower()).split()]
    slug = ""
    for word in words:  # whole words only, at most 48 characters
        if len(slug) + len(word) + bool(slug) > 48:
            break
        slug = f"{slug}-{word}" if slug else word
    slug = slug or (words[0][:48] if words else "question")
    return Path(f"{Path(scene_path).stem}_{slug}")


FIXED_OUTPUTS = ("answer.json", "item.json", "answer.md", "masks.geojson", "quicklook.png", "quicklook_t1.png",
                 "quicklook_t2.png")
# Written before any output and removed after answer.json: what a killed run may have left behind.
PENDING = ".tscope-pending.json"


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
    _refuse_foreign(out, FIXED_OUTPUTS)
    return out


def _inside(out: Path, rel: object) -> str | None:
    """``rel`` as a path relative to ``out`` if it names a file directly in ``out`` or ``out/masks``."""
    if not isinstance(rel, str) or not rel:
        return None
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts or not (len(parts) == 1 or (len(parts) == 2 and parts[0] == "masks")):
        return None
    return rel


def owned_outputs(out: Path) -> set[str]:
    """Files in ``out`` that tscope can prove it wrote: listed by its answer.json or its pending record."""
    owned: set[str] = set()
    try:
        answer = json.loads((out / "answer.json").read_text(encoding="utf-8"))
        outputs = answer.get("outputs", {})
        names = [v for k, v in outputs.items() if k in ("geojson", "report", "json", "stac_item")]
        names += str(outputs.get("quicklook", "")).split(",")
        names += [m.get("file") for m in answer.get("masks", {}).values()]
        owned |= {n for n in names if _inside(out, n)}
    except (OSError, ValueError, AttributeError):
        pass
    try:
        owned |= {n for n in json.loads((out / PENDING).read_text(encoding="utf-8")) if _inside(out, n)}
    except (OSError, ValueError, TypeError):
        pass
    if (out / "answer.json").is_file():
        owned.add("answer.json")
    return owned


def _refuse_foreign(out: Path, names: Sequence[str]) -> None:
    """InputError if writing ``names`` in ``out`` would replace a file tscope did not write."""
    if (out / "masks").is_symlink() or ((out / "masks").exists() and not (out / "masks").is_dir()):
        raise InputError(f"{out / 'masks'} is not a folder (a link or a file): tscope writes its masks only into"
                         " a real masks/ folder; move it or choose another --out")
    owned = owned_outputs(out)
    foreign = [n for n in names if (out / n).exists() or (out / n).is_symlink()]
    foreign = [n for n in foreign if n not in owned or (out / n).is_symlink()]
    if foreign:
        raise InputError(f"{out / foreign[0]} exists and was not written by tscope; move it or choose another"
                         " --out (tscope never replaces files it did not write)")


def _remove_owned(out: Path, owned: set[str]) -> None:
    """Delete what an earlier ``ask`` wrote in ``out`` (and nothing else); answer.json first."""
    for rel in sorted(owned, key=lambda n: n != "answer.json"):
        path = out / rel
        if path.is_file() and not path.is_symlink():
            path.unlink()


def stretch(band: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A 2-98 % percentile stretch of ``band`` to uint8 over its valid, finite pixels (invalid -> 0)."""
    valid = np.isfinite(band) if valid is None else valid & np.isfinite(band)
    values = band[valid]
    if not values.size:
        return np.zeros(band.shape, np.uint8)
    # A quarter of a million samples fix the 2nd and 98th percentiles well enough for a picture.
    lo, hi = np.percentile(values[:: max(1, values.size // 250_000)], [2, 98])
    scaled = (band - lo) / (hi - lo if hi > lo else 1.0)
    out = (np.clip(np.nan_to_num(scaled), 0, 1) * 255).round().astype(np.uint8)
    out[~valid] = 0
    return out


def class_colours(trace: Trace) -> dict[str, tuple[int, int, int]]:
    """Colour of each class of the trace, in the order the classes first appear (frames share them)."""
    labels = list(dict.fromkeys(mask.label for mask in trace.masks.values()))
    return {label: CLASS_COLOURS[i % len(CLASS_COLOURS)] for i, label in enumerate(labels)}


def _background(preview: Preview) -> np.ndarray:
    """The preview as uint8 RGB: true colour (or grey, SAR in dB), stretched over valid cells only."""
    valid = preview.valid
    names = preview_bands(preview.names)
    if len(names) == 3:
        rgb = np.stack([stretch(preview.band(name), valid) for name in names], axis=-1)
    else:
        band = preview.band(names[0])
        if names[0] in ("vv", "vh", "hh", "hv"):
            with np.errstate(divide="ignore", invalid="ignore"):
                band = 10 * np.log10(band)
        rgb = np.repeat(stretch(band, valid)[..., None], 3, axis=-1)
    rgb[~valid] = NODATA_COLOUR
    return rgb


def _nice_length(metres: float) -> float:
    """The largest 1, 2 or 5 x 10^n metres not above ``metres``."""
    power = 10 ** math.floor(math.log10(metres))
    return max(m * power for m in (1, 2, 5) if m * power <= metres)


def _footer(width: int, entries: list[tuple[str, tuple[int, int, int]]], metres_per_px: float,
            title: str) -> Image.Image:
    """A white strip under the map: the legend (swatch + name per entry) and a scale bar."""
    font = ImageFont.load_default(size=FONT_SIZE)
    line = FONT_SIZE + 8
    bar_m = _nice_length(metres_per_px * width / 4)
    bar_px = round(bar_m / metres_per_px)
    bar_label = f"{bar_m / 1000:g} km" if bar_m >= 1000 else f"{bar_m:g} m"
    # Lay the legend out in rows left of the scale bar.
    rows: list[list[tuple[str, tuple[int, int, int]]]] = [[]]
    x, room = 8, width - bar_px - 24
    for text, colour in [(title, None), *entries]:
        need = (0 if colour is None else 18) + int(font.getlength(text)) + 16
        if rows[-1] and x + need > room:
            rows.append([])
            x = 8
        rows[-1].append((text, colour))
        x += need
    # The scale bar takes two lines (bar, then its label), the legend as many as it needs.
    footer = Image.new("RGB", (width, line * max(2, len(rows)) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(footer)
    for r, row in enumerate(rows):
        x, y = 8, 4 + r * line
        for text, colour in row:
            if colour is not None:
                draw.rectangle([x, y + 2, x + 12, y + 14], fill=colour, outline=(0, 0, 0))
                x += 18
            draw.text((x, y), text, fill=(0, 0, 0), font=font)
            x += int(font.getlength(text)) + 16
    x1, y = width - 8, 4 + line // 2
    draw.rectangle([x1 - bar_px, y - 2, x1, y + 2], fill=(0, 0, 0))
    draw.line([x1 - bar_px, y - 6, x1 - bar_px, y + 6], fill=(0, 0, 0), width=2)
    draw.line([x1, y - 6, x1, y + 6], fill=(0, 0, 0), width=2)
    draw.text((x1 - bar_px // 2 - font.getlength(bar_label) / 2, y + 6), bar_label, fill=(0, 0, 0), font=font)
    return footer


def quicklook(scene: Scene, trace: Trace, frame: str) -> Image.Image:
    """The frame's scene with its masks: filled and outlined in their class colours, cells that do not
    count hatched, small scenes enlarged (nearest) to at least ``MIN_SIDE`` px, legend and scale bar
    under the map. The picture comes from the preview the masks' pass made (a pass of its own only
    for backends that make none)."""
    preview = trace.previews.get(frame) or scene_preview(scene)
    rgb = _background(preview).astype(np.float32)
    h, w = preview.shape
    # Each preview cell shows the masks at its centre pixel.
    rows = np.minimum(np.arange(h) * preview.factor + preview.factor // 2, scene.grid.height - 1)
    cols = np.minimum(np.arange(w) * preview.factor + preview.factor // 2, scene.grid.width - 1)
    zoom = max(1, math.ceil(MIN_SIDE / max(h, w)))

    def enlarge(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, zoom, axis=0), zoom, axis=1)

    rgb = enlarge(rgb)
    colours = class_colours(trace)
    masks = [m for m in trace.masks.values() if m.frame == frame]
    excluded = np.zeros(rgb.shape[:2], bool)
    outlines = []
    for mask in masks:
        small = enlarge(mask.counted[np.ix_(rows, cols)])
        excluded |= enlarge(preview.valid & ~mask.valid[np.ix_(rows, cols)])
        colour = np.array(colours[mask.label], np.float32)
        rgb[small] = 0.3 * colour + 0.7 * rgb[small]
        edge = small & ~ndimage.binary_erosion(small, iterations=2 if zoom > 1 or max(h, w) >= MIN_SIDE else 1,
                                               border_value=1)
        outlines.append((edge, colour))
    if excluded.any():
        # Cloud (valid data that does not count): diagonal hatching, so the scene stays visible under it.
        yy, xx = np.indices(excluded.shape, sparse=True)
        rgb[excluded & ((yy + xx) % 8 < 2)] = EXCLUDED_COLOUR
    for edge, colour in outlines:
        rgb[edge] = colour
    image = Image.fromarray(rgb.round().astype(np.uint8))
    entries = [(mask.label.replace("_", " "), colours[mask.label]) for mask in masks]
    if excluded.any():
        entries.append(("not counted (cloud)", EXCLUDED_COLOUR))
    if not preview.valid.all():
        entries.append(("nodata", NODATA_COLOUR))
    metres_per_px = scene.grid.pixel_size_m()[0] * preview.factor / zoom
    title = frame if len(trace.previews) > 1 or frame != "t1" else "legend:"
    footer = _footer(image.width, entries, metres_per_px, title)
    out = Image.new("RGB", (image.width, image.height + footer.height), (255, 255, 255))
    out.paste(image, (0, 0))
    out.paste(footer, (0, image.height))
    return out


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
        value = f"{number.value:,.4f}" if isinstance(number.value, float) else \
            "null (see notes)" if number.value is None else str(number.value)
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
                     f" {scene['crs'] or 'plain image (no CRS)'}, bands {', '.join(scene['bands'])}"
                     f" (from {scene['band_source']})")
    vectors = ", `masks.geojson`" if "geojson" in trace.outputs else ""
    lines += ["", f"Backend: `{trace.backend}`. Outputs: `answer.json`{vectors}, `masks/*.tif`.", ""]
    return "\n".join(lines)


def _vector_notes(written: dict[str, Polygons]) -> list[str]:
    """What masks.geojson simplifies, per step, so nobody mistakes it for the full-resolution masks."""
    notes = [f"masks.geojson: coordinates rounded to {PRECISION_DEG:g}° (about 1 cm); each feature's area_m2 is"
             " the geodesic area of its ring as written; regions are 4-connected, as counted"]
    for step, polygons in written.items():
        if polygons.factor > 1:
            notes.append(f"masks.geojson: {step} traced on {polygons.factor}x{polygons.factor}-pixel majority cells"
                         f" (at most {MAX_TRACE_PIXELS:,} cells scanned and {MAX_VERTICES:,} vertices written);"
                         " the GeoTIFF mask and every number are full resolution")
        if polygons.dropped:
            notes.append(f"masks.geojson: {step} keeps its {MAX_FEATURES:,} largest regions; {polygons.dropped:,}"
                         f" smaller ones ({100 * polygons.dropped_fraction:.1f}% of its area) are only in the GeoTIFF")
        if polygons.cut:
            notes.append(f"masks.geojson: {step}: {polygons.cut} polygon(s) cut at the antimeridian or closed round"
                         " a pole (RFC 7946 §3.1.9)")
    return notes


def write_outputs(trace: Trace, scenes: Sequence[Scene], out: Path) -> dict[str, str]:
    """Write all outputs of ``trace`` into ``out`` (prepared by :func:`prepare_out_dir`).

    Outputs of an earlier answer in ``out`` are removed first, ``answer.json`` (the completion
    marker) before anything else, so the folder never mixes two answers. Only files tscope can prove
    it wrote are removed or replaced; a failed or interrupted run removes what it wrote itself.
    """
    masks = {mask_id: f"masks/{mask_id}.tif" for mask_id in trace.masks}
    targets = [*FIXED_OUTPUTS, *masks.values()]
    _refuse_foreign(out, targets)
    sweep_partials(out)
    sweep_partials(out / "masks")
    with writers.rollback_on_failure() as made:
        made.mkdir(out / "masks")
        owned = owned_outputs(out)
        made.add(writers.write_json(out / PENDING, sorted(owned | set(targets))))
        _remove_owned(out, owned)
        _write_all(trace, scenes, out, masks, made)
        (out / PENDING).unlink()
    return trace.outputs


def _write_all(trace: Trace, scenes: Sequence[Scene], out: Path, masks: dict[str, str],
               made: writers.Outputs) -> None:
    legend = []
    layers = []
    colours = class_colours(trace)
    # COG encoding runs in GDAL without the GIL: write the rasters (one at a time, to bound memory)
    # while Python builds the polygons and draws the quicklook.
    with ThreadPoolExecutor(max_workers=1) as pool:
        jobs = []
        for mask_id, mask in trace.masks.items():
            rel = masks[mask_id]
            jobs.append((made.add(out / rel), mask_id, mask))
            trace.outputs[f"mask:{mask_id}"] = rel
            legend.append((mask_id, rel, colours[mask.label]))
            layers.append((mask, {"class": mask.label, "step": mask_id, "frame": mask.frame}))
        cogs = [pool.submit(writers.write_mask_cog, path, mask) for path, _, mask in jobs]
        # GeoJSON is lon/lat by definition (RFC 7946): a plain image has none, so its masks stay rasters.
        georeferenced = scenes[0].grid.crs is not None
        try:
            written = (writers.write_geojson_features(made.add(out / "masks.geojson"), layers)
                       if georeferenced else {})
            quicklooks = []
            for scene in scenes:
                name = "quicklook.png" if len(scenes) == 1 else f"quicklook_{scene.frame}.png"
                image = quicklook(scene, trace, scene.frame)
                with writers.atomic_path(made.add(out / name)) as tmp:
                    image.save(tmp, format="PNG", compress_level=1)  # 5x faster than the default, ~20 % larger
                quicklooks.append(name)
            # Then, beside the writer thread, write the masks it has not started and measure each mask's
            # area for answer.json.
            for future, (path, _, mask) in zip(cogs, jobs, strict=True):
                if future.cancel():
                    writers.write_mask_cog(path, mask)
            for _, mask_id, _ in jobs:
                trace.mask_area(mask_id)
        finally:
            for future in cogs:
                if not future.cancel():
                    future.exception()  # wait: the writer thread must be done before a rollback
        for future in cogs:
            if not future.cancelled():
                future.result()
    if georeferenced:
        trace.notes.extend(_vector_notes(written))
        trace.outputs["geojson"] = "masks.geojson"
    else:
        trace.notes.append("plain image (no georeferencing): no masks.geojson; masks/*.tif are on the image's pixels")
    trace.outputs["quicklook"] = ",".join(quicklooks)
    trace.outputs["report"] = "answer.md"
    trace.outputs["json"] = "answer.json"
    trace.outputs["stac_item"] = "item.json"
    writers.write_text(made.add(out / "answer.md"), _markdown(trace, quicklooks, legend))
    from tscope.stac.records import answer_item

    item = answer_item(trace, scenes, out, [s["path"] for s in trace.scenes])
    writers.write_json(made.add(out / "item.json"), item.to_dict(include_self_link=False, transform_hrefs=False))
    writers.write_json(made.add(out / "answer.json"), trace.to_dict())
