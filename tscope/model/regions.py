"""Region tokens: which visual tokens a ``[SEG]`` mask selects to feed back into generation.

The default reproduces the released inference code (``_get_visual_tokens_from_mask_accurate`` for one
dynamically tiled image, ``_get_visual_tokens_from_mask_multi_simple`` for each image of a pair, which
is the same procedure on a 1x1 tile layout):

1. the mask (H, W) is resized with PIL NEAREST to the tiled image size (cols x 448, rows x 448), then
   again to the token grid (cols x side, rows x side), both times thresholded at 127 of 255;
2. selected tokens are listed tile by tile, row-major inside each tile (the order of the visual tokens);
3. above the cap, :func:`spatial_uniform_sample` keeps one token per cell of a ceil(sqrt(cap))^2 grid
   over the bounding box of the selection, in cell order -- so fewer than ``cap`` tokens can come back;
4. an empty selection gives token 0.

The paper's rule (``rule="coverage"``) selects a token when the mask covers more than a threshold of the
image pixels under it; the cap and sampling are the same. The returned order is the order in which the
tokens are fed to the language model, so it is part of the specification.
"""

from __future__ import annotations

import math

import numpy as np

from tscope.model.config import RegionConfig
from tscope.model.images import TileLayout


def _pil_nearest(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """bool (H, W) -> bool (height, width) as the release does it: uint8 0/255, PIL NEAREST, > 127."""
    from PIL import Image

    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    return np.asarray(resized) > 127


def coverage_grid(mask: np.ndarray, grid_shape: tuple[int, int], threshold: float) -> np.ndarray:
    """bool (H, W) -> bool (rows, cols): tokens whose share of covered image pixels exceeds ``threshold``."""
    h, w = mask.shape
    gr, gc = grid_shape
    r_edges = np.round(np.linspace(0, h, gr + 1)).astype(int)
    c_edges = np.round(np.linspace(0, w, gc + 1)).astype(int)
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r0, r1 = r_edges[:-1, None], r_edges[1:, None]
    c0, c1 = c_edges[None, :-1], c_edges[None, 1:]
    covered = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    area = np.maximum((r1 - r0) * (c1 - c0), 1)
    return covered / area > threshold


def token_grid(mask: np.ndarray, layout: TileLayout, image_size: int, config: RegionConfig) -> np.ndarray:
    """bool (H, W) mask on the image -> bool (rows x side, cols x side) on the token grid by ``config.rule``."""
    gr, gc = layout.grid_shape
    if config.rule == "release":
        tiled = _pil_nearest(mask, layout.cols * image_size, layout.rows * image_size)
        return _pil_nearest(tiled, gc, gr)
    return coverage_grid(mask, (gr, gc), config.coverage_threshold)


def tile_major(grid: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Indices of the set cells of ``grid`` in visual-token order (tile by tile, row-major in a tile)."""
    rows, cols = np.nonzero(grid)
    index = layout.token_index(rows, cols)
    return np.sort(index)


def spatial_uniform_sample(index: np.ndarray, grid: np.ndarray, layout: TileLayout, cap: int) -> np.ndarray:
    """At most ``cap`` of the token ``index`` (in token order): the release's ``_spatial_uniform_sample``.

    A ``g x g`` grid (g = ceil(sqrt(cap))) of float-bounded cells covers the bounding box of ``grid``;
    cells are visited row by row and each non-empty one contributes its token nearest to the cell
    centre (the first in token order on ties), until ``cap`` tokens are kept.
    """
    rows, cols = layout.grid_position(index)
    set_rows, set_cols = np.nonzero(grid)
    if len(set_rows) == 0:
        return index[:cap]
    min_row, max_row = int(set_rows.min()), int(set_rows.max())
    min_col, max_col = int(set_cols.min()), int(set_cols.max())
    cells = math.ceil(math.sqrt(cap))
    row_step = max(1, (max_row - min_row + 1) / cells)
    col_step = max(1, (max_col - min_col + 1) / cells)
    kept: list[int] = []
    for i in range(cells):
        r_lo, r_hi = min_row + i * row_step, min_row + (i + 1) * row_step
        for j in range(cells):
            c_lo, c_hi = min_col + j * col_step, min_col + (j + 1) * col_step
            inside = (rows >= r_lo) & (rows < r_hi) & (cols >= c_lo) & (cols < c_hi)
            if inside.any():
                centre_r, centre_c = (r_lo + r_hi) / 2, (c_lo + c_hi) / 2
                dist = (rows[inside] - centre_r) ** 2 + (cols[inside] - centre_c) ** 2
                kept.append(int(index[inside][np.argmin(dist)]))
            if len(kept) >= cap:
                return np.asarray(kept[:cap])
    return np.asarray(kept)


def select_region_tokens(mask: np.ndarray, layout: TileLayout, image_size: int,
                         config: RegionConfig | None = None) -> np.ndarray:
    """bool (H, W) mask on the image -> indices into the image's visual tokens (K,), 1 <= K <= cap, in feed order.

    ``layout`` is the image's tiling (a 1x1 layout for each image of a pair, as the release feeds pairs)
    and ``image_size`` the tile side in pixels (448).
    """
    config = config or RegionConfig()
    grid = token_grid(np.asarray(mask, dtype=bool), layout, image_size, config)
    index = tile_major(grid, layout)
    if len(index) > config.max_tokens:
        index = spatial_uniform_sample(index, grid, layout, config.max_tokens)
    if len(index) == 0:
        return np.array([0])
    return index
