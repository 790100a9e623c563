"""Region tokens: which visual tokens a ``[SEG]`` mask selects to feed back into generation.

Two rules put a mask (H, W) onto the image's token grid (:class:`~tscope.model.images.TileLayout`):

* ``nearest`` (the release): nearest-neighbour resize of the mask to the token grid; a token is
  selected where the resized mask is set;
* ``coverage`` (the paper): a token is selected when the mask covers more than ``threshold`` of the
  image pixels under it.

Above ``max_tokens`` the selection is thinned by spatially uniform sampling: the bounding box of the
selected tokens is cut into a near-square grid of cells and in each cell the selected token closest
to the cell centre is kept, so the kept tokens spread over the whole region. An empty selection falls
back to the token under the mask's centroid (or the first token when the mask is empty), so every
``[SEG]`` contributes at least one region token, as in the release.
"""

from __future__ import annotations

import math

import numpy as np

from tscope.model.config import RegionConfig
from tscope.model.images import TileLayout


def mask_on_grid(mask: np.ndarray, grid_shape: tuple[int, int], rule: str = "nearest",
                 threshold: float = 0.5) -> np.ndarray:
    """bool (H, W) -> bool (rows, cols) on the token grid by ``rule``."""
    h, w = mask.shape
    gr, gc = grid_shape
    if rule == "nearest":
        # torch's F.interpolate(mode="nearest") index rule: floor(dst * src / dst_size).
        rows = np.minimum((np.arange(gr) * h / gr).astype(int), h - 1)
        cols = np.minimum((np.arange(gc) * w / gc).astype(int), w - 1)
        return mask[np.ix_(rows, cols)].astype(bool)
    if rule == "coverage":
        r_edges = np.round(np.linspace(0, h, gr + 1)).astype(int)
        c_edges = np.round(np.linspace(0, w, gc + 1)).astype(int)
        integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        r0, r1 = r_edges[:-1, None], r_edges[1:, None]
        c0, c1 = c_edges[None, :-1], c_edges[None, 1:]
        covered = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        area = np.maximum((r1 - r0) * (c1 - c0), 1)
        return covered / area > threshold
    raise ValueError(f"unknown region rule {rule!r}; use 'nearest' or 'coverage'")


def uniform_sample(rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Indices of at most ``k`` of the points (rows, cols) spread uniformly over their bounding box."""
    n = len(rows)
    if n <= k:
        return np.arange(n)
    r0, r1 = rows.min(), rows.max() + 1
    c0, c1 = cols.min(), cols.max() + 1
    height, width = r1 - r0, c1 - c0
    # A cell grid with about k cells shaped like the box; grow it until it has at least k non-empty cells.
    gy = max(1, round(math.sqrt(k * height / width)))
    gx = max(1, math.ceil(k / gy))
    while True:
        cell_r = np.minimum(((rows - r0) * gy) // height, gy - 1)
        cell_c = np.minimum(((cols - c0) * gx) // width, gx - 1)
        cells = cell_r * gx + cell_c
        if len(np.unique(cells)) >= k or (gy >= height and gx >= width):
            break
        gy, gx = min(height, gy + 1), min(width, gx + 1)
    centre_r = r0 + (cell_r + 0.5) * height / gy
    centre_c = c0 + (cell_c + 0.5) * width / gx
    dist = (rows + 0.5 - centre_r) ** 2 + (cols + 0.5 - centre_c) ** 2
    order = np.lexsort((dist, cells))  # by cell, nearest to its centre first
    first = order[np.r_[True, cells[order][1:] != cells[order][:-1]]]
    if len(first) > k:
        # More non-empty cells than k: keep cells spread evenly along the raster order of cells.
        first = first[np.round(np.linspace(0, len(first) - 1, k)).astype(int)]
    return np.sort(first)


def select_region_tokens(mask: np.ndarray, layout: TileLayout, config: RegionConfig | None = None) -> np.ndarray:
    """bool (H, W) mask on the image -> sorted indices into the image's visual tokens (K,), 1 <= K <= cap."""
    config = config or RegionConfig()
    on_grid = mask_on_grid(mask, layout.grid_shape, config.rule, config.coverage_threshold)
    rows, cols = np.nonzero(on_grid)
    if len(rows) == 0:
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            return np.array([0])
        gr, gc = layout.grid_shape
        r = min(int(ys.mean() * gr / mask.shape[0]), gr - 1)
        c = min(int(xs.mean() * gc / mask.shape[1]), gc - 1)
        return layout.token_index(np.array([r]), np.array([c]))
    if len(rows) > config.max_tokens:
        if config.sampling == "uniform":
            keep = uniform_sample(rows, cols, config.max_tokens)
        elif config.sampling == "first":
            keep = np.arange(config.max_tokens)
        else:
            raise ValueError(f"unknown region sampling {config.sampling!r}; use 'uniform' or 'first'")
        rows, cols = rows[keep], cols[keep]
    return np.sort(layout.token_index(rows, cols))
