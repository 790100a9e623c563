"""The picture the model sees: an 8-bit RGB rendering of a scene's grid, and image chips.

Rendering follows the quicklooks: true colour from red/green/blue (else panchromatic, else VV in
dB, as grey), each band stretched between its 2nd and 98th percentile over valid pixels. The PNG
has exactly the grid's pixels, so masks on the grid are masks on the image.
"""

from __future__ import annotations

import io

import numpy as np
from affine import Affine
from PIL import Image
from rasterio.windows import Window

from tscope.errors import InputError
from tscope.geo.grid import Grid
from tscope.geo.scene import Scene
from tscope.report import stretch

MAX_SIDE = 4096


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """``scene`` on its grid as (uint8 (H, W, 3) RGB, valid bool (H, W))."""
    grid = scene.grid
    if max(grid.width, grid.height) > MAX_SIDE:
        raise InputError(f"{scene.path.name}: {grid.width} x {grid.height} px is too large for one sample;"
                         f" cut it into chips (--chip) of at most {MAX_SIDE} px")
    window = Window(0, 0, grid.width, grid.height)
    if all(scene.has(b) for b in ("red", "green", "blue")):
        bands, valid = scene.read(["red", "green", "blue"], window)
        rgb = np.stack([stretch(bands[b], valid) for b in ("red", "green", "blue")], axis=-1)
        return rgb, valid
    name = next((b for b in ("pan", "vv", "hh") if scene.has(b)), scene.bands[0])
    bands, valid = scene.read([name], window)
    band = bands[name]
    if name in ("vv", "hh"):
        with np.errstate(divide="ignore", invalid="ignore"):
            band = 10 * np.log10(band)
    grey = stretch(band, valid & np.isfinite(band))
    return np.stack([grey] * 3, axis=-1), valid


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def png_array(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, 3)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def chips(grid: Grid, size: int | None) -> list[tuple[str, Grid]]:
    """``(chip_id, grid)`` of ``size`` x ``size`` chips tiling ``grid`` (the whole grid when it fits).

    Partial chips at the right and bottom edges are kept when at least half a chip on each side:
    smaller slivers make degenerate samples.
    """
    if not size or (grid.width <= size and grid.height <= size):
        return [("", grid)]
    out = []
    for row in range(0, grid.height, size):
        for col in range(0, grid.width, size):
            w, h = min(size, grid.width - col), min(size, grid.height - row)
            if w < size // 2 or h < size // 2:
                continue
            out.append((f"r{row}c{col}", Grid(grid.crs, grid.transform @ Affine.translation(col, row), w, h)))
    return out
