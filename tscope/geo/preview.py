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

from tscope.geo.cells import cell_sums
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

    def _cell_sums(self, values: np.ndarray, row_off: int, col_off: int, dtype: type) -> np.ndarray:
        """Sums of ``values`` (a window at ``row_off, col_off``) per cell the window touches."""
        f = self.factor
        top, left = row_off % f, col_off % f
        h, w = values.shape
        if top or left or (top + h) % f or (left + w) % f:
            # A window that starts or ends inside a cell: pad it with zeros to whole cells.
            padded = np.zeros((math.ceil((top + h) / f) * f, math.ceil((left + w) / f) * f), values.dtype)
            padded[top : top + h, left : left + w] = values
            values = padded
        return cell_sums(values, f, dtype)

    def add(self, window: Window, bands: dict[str, np.ndarray], valid: np.ndarray) -> None:
        """Accumulate one window of the pass (``bands`` holds at least ``names``; ``valid`` its mask).

        Windows may straddle cells and may overlap: a mean of sums and counts is the same either way.
        """
        r0, c0 = int(window.row_off), int(window.col_off)
        counts = self._cell_sums(valid.view(np.uint8), r0, c0, np.int32)
        every = valid.all()  # most windows: no copy zeroing invalid pixels
        sums = [self._cell_sums(bands[name] if every else np.where(valid, bands[name], np.float32(0)), r0, c0,
                                np.float32) for name in self.names]
        cells = (slice(r0 // self.factor, r0 // self.factor + counts.shape[0]),
                 slice(c0 // self.factor, c0 // self.factor + counts.shape[1]))
        with self._lock:
            self._counts[cells] += counts
            for i, part in enumerate(sums):
                self._sums[(i, *cells)] += part

    def coarsened(self, k: int, names: Sequence[str] | None = None) -> Preview:
        """``names`` (default all) on cells of ``k`` x ``k`` of this preview's cells: the same means a pass
        would have given with ``factor * k``, without a second set of sums per window."""
        out = Preview(self.grid, names or self.names, factor=self.factor * k)
        rows, cols = self.shape
        padded = (math.ceil(rows / k) * k, math.ceil(cols / k) * k)

        def cells(values: np.ndarray) -> np.ndarray:
            grown = np.zeros(padded, values.dtype)
            grown[:rows, :cols] = values
            return grown.reshape(padded[0] // k, k, padded[1] // k, k).sum(axis=(1, 3))

        with self._lock:
            out._counts[...] = cells(self._counts)
            for i, name in enumerate(out.names):
                out._sums[i] = cells(self._sums[self.names.index(name)])
        return out

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
    with scene.reading():
        for window in scene.windows(block):
            bands, valid = scene.read(preview.names, window)
            preview.add(window, bands, valid)
    return preview
