"""Previews: a scene's bands averaged onto a small grid while the masks are being computed.

The quicklook, and anything else that needs the whole scene at a glance (the model's stretch
limits), comes from a :class:`Preview` filled window by window by the pass that reads the scene
anyway: re-reading a 10980² file without overviews to draw a 1024-px picture costs several times
the analysis itself. Each preview pixel is the mean of the valid pixels of its ``factor`` x
``factor`` cell (nodata never blends into the picture); a cell without one is invalid.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
from rasterio.windows import Window

from tscope.geo.grid import Grid
from tscope.geo.scene import Scene

PREVIEW_SIDE = 1024


def preview_bands(bands: Sequence[str]) -> list[str]:
    """What a picture of a scene shows: true colour when it can, else VV (or HH), else its first band."""
    if {"red", "green", "blue"} <= set(bands):
        return ["red", "green", "blue"]
    return [next((b for b in ("vv", "hh") if b in bands), bands[0])]


class Preview:
    """``names`` of a scene on ``grid``, averaged over cells of ``factor`` x ``factor`` pixels."""

    def __init__(self, grid: Grid, names: Sequence[str], max_side: int = PREVIEW_SIDE, factor: int | None = None):
        self.grid = grid
        self.names = list(names)
        self.factor = factor or max(1, math.ceil(max(grid.width, grid.height) / max_side))
        self.shape = (math.ceil(grid.height / self.factor), math.ceil(grid.width / self.factor))
        self._sums = np.zeros((len(self.names), *self.shape), np.float32)
        self._counts = np.zeros(self.shape, np.int32)
        self._lock = threading.Lock()  # passes add windows from several threads; cells may be shared

    def _cells(self, start: int, length: int) -> tuple[np.ndarray, slice]:
        """Offsets (inside a window from ``start``) where its cells begin, and the cells' slice."""
        first, last = start // self.factor, (start + length - 1) // self.factor
        offsets = np.maximum(np.arange(first, last + 1) * self.factor - start, 0)
        return offsets, slice(first, last + 1)

    def add(self, window: Window, bands: dict[str, np.ndarray], valid: np.ndarray) -> None:
        """Accumulate one window of the pass (``bands`` holds at least ``names``; ``valid`` its mask).

        Windows may straddle cells and may overlap: a mean of sums and counts is the same either way.
        """
        rows, row_cells = self._cells(int(window.row_off), int(window.height))
        cols, col_cells = self._cells(int(window.col_off), int(window.width))
        counts = np.add.reduceat(np.add.reduceat(valid.astype(np.int32), rows, axis=0), cols, axis=1)
        sums = [np.add.reduceat(np.add.reduceat(np.where(valid, bands[name], np.float32(0)), rows, axis=0),
                                cols, axis=1) for name in self.names]
        with self._lock:
            self._counts[row_cells, col_cells] += counts
            for i, part in enumerate(sums):
                self._sums[i, row_cells, col_cells] += part

    @property
    def valid(self) -> np.ndarray:
        return self._counts > 0

    def band(self, name: str) -> np.ndarray:
        """Mean of ``name`` per cell (NaN where the cell has no valid pixel)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self._sums[self.names.index(name)] / self._counts
        out[~self.valid] = np.nan
        return out


def scene_preview(scene: Scene, names: Sequence[str] | None = None, block: int = 1024,
                  factor: int | None = None) -> Preview:
    """A preview of ``scene`` (cells of ``factor`` pixels, default: at most PREVIEW_SIDE cells a side)
    from a pass of its own, for callers with no pass to share."""
    preview = Preview(scene.grid, names or preview_bands(scene.bands), factor=factor)
    for window in scene.grid.windows(block):
        bands, valid = scene.read(preview.names, window)
        preview.add(window, bands, valid)
    return preview
