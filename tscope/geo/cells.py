"""Sums over square cells of a raster: what previews (means per cell) and majority-coarsened masks share."""

from __future__ import annotations

import numpy as np


def cell_sums(values: np.ndarray, factor: int, dtype: type) -> np.ndarray:
    """Sums of ``values`` (rows, cols, both multiples of ``factor``) over ``factor`` x ``factor`` cells.

    Strided adds, one per row and column of a cell, in ``dtype``: each pixel is touched about twice,
    where a reshaped sum over two axes or ``np.add.reduceat`` along rows costs several times more
    (as much as reading the window).
    """
    rows = values[0::factor].astype(dtype)
    for k in range(1, factor):
        rows += values[k::factor]
    out = rows[:, 0::factor].copy()
    for k in range(1, factor):
        out += rows[:, k::factor]
    return out
