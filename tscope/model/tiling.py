"""Scene scale: cut a scene into overlapping model inputs, and stitch tile masks back seamlessly.

Tiles are ``size`` x ``size`` windows of the scene grid stepping by ``size - overlap``; the last
row/column is shifted back so every tile is full-size when the scene allows. Stitching gives each
scene pixel to exactly one tile -- the one whose *core* (the tile minus half the overlap on every
side that has a neighbour) contains it -- so overlaps never double count and seams fall mid-overlap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rasterio.windows import Window

from tscope.geo.preview import Preview
from tscope.geo.scene import Scene
from tscope.model.fusion import sar_db, sar_to_rgb, stretch_to_uint8
from tscope.model.images import choose_grid

RGB = ("red", "green", "blue")


def _starts(length: int, size: int, overlap: int) -> list[int]:
    if length <= size:
        return [0]
    step = max(1, size - overlap)
    starts = list(range(0, length - size + 1, step))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def tile_windows(width: int, height: int, size: int, overlap: int) -> list[Window]:
    """Row-major windows covering a ``width`` x ``height`` grid."""
    if overlap < 0 or overlap >= size:
        raise ValueError(f"tile overlap must be in [0, {size}), got {overlap}")
    return [Window(c, r, min(size, width - c), min(size, height - r))
            for r in _starts(height, size, overlap) for c in _starts(width, size, overlap)]


def core_slices(window: Window, windows: Sequence[Window]) -> tuple[slice, slice]:
    """(rows, cols) slices *inside* ``window`` of the pixels it owns when stitching."""
    c0, r0 = int(window.col_off), int(window.row_off)
    c1, r1 = c0 + int(window.width), r0 + int(window.height)

    def cut(lo: int, hi: int, axis_lo: list[int], axis_hi: list[int]) -> tuple[int, int]:
        # Own from the midpoint of the overlap with the previous tile to the midpoint with the next.
        prev = [h for lo2, h in zip(axis_lo, axis_hi, strict=True) if lo2 < lo < h]
        nxt = [lo2 for lo2, h in zip(axis_lo, axis_hi, strict=True) if lo < lo2 < hi]
        start = (lo + max(prev)) // 2 if prev else lo
        end = (min(nxt) + hi) // 2 if nxt else hi
        return start, end

    same_row = [w for w in windows if int(w.row_off) == r0]
    same_col = [w for w in windows if int(w.col_off) == c0]
    cs, ce = cut(c0, c1, [int(w.col_off) for w in same_row], [int(w.col_off + w.width) for w in same_row])
    rs, re_ = cut(r0, r1, [int(w.row_off) for w in same_col], [int(w.row_off + w.height) for w in same_col])
    return slice(rs - r0, re_ - r0), slice(cs - c0, ce - c0)


def stitch(shape: tuple[int, int], windows: Sequence[Window], tiles: dict[int, np.ndarray]) -> np.ndarray:
    """Tile masks {window index: bool (h, w)} -> one bool mask of ``shape``; tiles absent stay False."""
    out = np.zeros(shape, dtype=bool)
    for i, window in enumerate(windows):
        if i not in tiles:
            continue
        rows, cols = core_slices(window, windows)
        r0, c0 = int(window.row_off), int(window.col_off)
        out[r0 + rows.start:r0 + rows.stop, c0 + cols.start:c0 + cols.stop] = tiles[i][rows, cols]
    return out


def stretch_limits(preview: Preview, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Scene-wide 2-98% limits per band (from the scene's preview), so every tile is stretched alike."""
    data = {name: preview.band(name) for name in names}
    out = {}
    for name, band in data.items():
        if name in ("vv", "vh"):
            band = sar_db(band)
        finite = band[np.isfinite(band)]
        out[name] = tuple(float(v) for v in np.percentile(finite, [2, 98])) if finite.size else (0.0, 1.0)
    if {"vv", "vh"} <= set(names):
        mean = (sar_db(data["vv"]) + sar_db(data["vh"])) / 2
        finite = mean[np.isfinite(mean)]
        out["mean"] = tuple(float(v) for v in np.percentile(finite, [2, 98])) if finite.size else (0.0, 1.0)
    return out


def scene_kind(scene: Scene) -> str:
    """``optical`` (has red/green/blue), ``sar`` (has vv and vh) or ``unsupported``."""
    if all(scene.has(b) for b in RGB):
        return "optical"
    if scene.has("vv") and scene.has("vh"):
        return "sar"
    return "unsupported"


def read_rgb(scene: Scene, window: Window, limits: dict) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (h, w, 3) model input of ``window`` and its valid mask: true colour, or SAR's VH/VV/mean."""
    if scene_kind(scene) == "optical":
        bands, valid = scene.read(list(RGB), window)
        rgb = np.stack([stretch_to_uint8(bands[b], None, limits[b]) for b in RGB], axis=-1)
        return rgb, valid
    bands, valid = scene.read(["vh", "vv"], window)
    return sar_to_rgb(bands["vh"], bands["vv"], limits, valid), valid


def fits_model_input(width: int, height: int, n_images: int, image_size: int, max_tiles: int) -> bool:
    """Whether the model sees an image of this size without downsampling: one image is tiled onto the
    grid of at most ``max_tiles`` tiles chosen for its aspect ratio; each image of several is one tile."""
    if n_images > 1:
        return max(width, height) <= image_size
    cols, rows = choose_grid(width, height, image_size, 1, max_tiles)
    return width <= cols * image_size and height <= rows * image_size


def overview_factor(grid_width: int, grid_height: int, n_images: int, image_size: int, max_tiles: int) -> int:
    """The smallest integer decimation after which a scene fits one model input (1: it fits as it is)."""
    factor = 1
    while not fits_model_input(max(1, grid_width // factor), max(1, grid_height // factor), n_images, image_size,
                               max_tiles):
        factor += 1
    return factor


def read_rgb_overview(preview: Preview, limits: dict, sar: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (h, w, 3) model input of the whole scene from its ``preview`` (each pixel the mean of the valid
    pixels of its cell) and its valid mask (cells with a valid pixel): true colour, or SAR's VH/VV/mean
    (also for an optical scene's SAR bands with ``sar``)."""
    sar = sar or not set(RGB) <= set(preview.names)
    names = ["vh", "vv"] if sar else list(RGB)
    data = np.stack([preview.band(name) for name in names])
    valid = preview.valid & np.isfinite(data).all(axis=0)
    if not sar:
        rgb = np.stack([stretch_to_uint8(band, None, limits[name]) for name, band in zip(names, data, strict=True)],
                       axis=-1)
        return rgb, valid
    return sar_to_rgb(data[0], data[1], limits, valid), valid


def upsample_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool (h, w) on a decimated grid -> bool ``shape`` on the full grid (each pixel takes its cell)."""
    rows = np.minimum((np.arange(shape[0]) * mask.shape[0]) // shape[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * mask.shape[1]) // shape[1], mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]
