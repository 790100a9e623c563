"""A georeferenced boolean mask: what every backend produces and every measure consumes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tscope.geo.grid import Grid


@dataclass
class Mask:
    """``data`` marks the class; ``valid`` marks pixels that count (not nodata, not cloud).

    Both are bool arrays of ``grid.shape``. Measures only ever look at ``data & valid``.
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

    @cached_property
    def counted(self) -> np.ndarray:
        """Class pixels that count: ``data & valid`` (computed once: masks are not modified)."""
        return self.data & self.valid
