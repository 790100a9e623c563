"""A georeferenced boolean mask: what every backend produces and every measure consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tscope.geo.grid import Grid


@dataclass
class Mask:
    """``data`` marks the class; ``valid`` marks pixels that count (not nodata, not cloud).

    Both are bool arrays of ``grid.shape``. The mask takes ownership of ``data`` and clears it
    outside ``valid`` in place, so ``counted`` needs no copy (a tile-sized mask is 120 MB).
    """

    data: np.ndarray
    valid: np.ndarray
    grid: Grid
    label: str
    frame: str = "t1"
    source: str = ""

    def __post_init__(self) -> None:
        if self.data.shape != self.grid.shape or self.valid.shape != self.grid.shape:
            raise ValueError(
                f"mask {self.label}: data {self.data.shape} / valid {self.valid.shape} do not match"
                f" grid {self.grid.shape}"
            )
        if self.data.dtype != bool or self.valid.dtype != bool:
            raise ValueError(f"mask {self.label}: data and valid must be bool arrays")
        np.logical_and(self.data, self.valid, out=self.data)

    @property
    def counted(self) -> np.ndarray:
        """Class pixels that count (``data``, already cleared outside ``valid``)."""
        return self.data
