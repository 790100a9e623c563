"""A pixel grid on the ground: CRS, affine transform and shape, with ground-unit geometry.

Everything that turns pixels into metres lives here, so areas and distances are computed one way:

* geographic CRSs: the exact geodesic area of each pixel on the CRS's ellipsoid (it depends only on
  the row for a north-up grid);
* projected CRSs: the nominal pixel area in metres divided by the projection's areal scale factor,
  per row at the block's centre column (so Web Mercator or UTM far from its meridian still give
  ground areas).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS, Geod, Proj, Transformer
from rasterio.windows import Window

BLOCK = 1024


@dataclass(frozen=True)
class Grid:
    """``width`` x ``height`` pixels placed on the ground by ``transform`` in ``crs``."""

    crs: Any  # rasterio or pyproj CRS; pyproj_crs gives the latter
    transform: Affine
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in the grid's CRS."""
        xs, ys = [], []
        for col, row in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height)):
            x, y = self.transform @ (col, row)
            xs.append(x)
            ys.append(y)
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def units(self) -> str:
        """Ground units of lengths ("m"); a plain image without a ground sample distance counts pixels ("px")."""
        return "m"

    @property
    def is_rectilinear(self) -> bool:
        return self.transform.b == 0 and self.transform.d == 0

    @cached_property
    def pyproj_crs(self) -> CRS:
        """The grid's CRS as a pyproj CRS (``crs`` itself may be a rasterio CRS)."""
        return CRS.from_user_input(self.crs.to_wkt() if hasattr(self.crs, "to_wkt") else self.crs)

    @cached_property
    def _metre_factor(self) -> float:
        crs = self.pyproj_crs
        if crs.is_geographic:
            return float("nan")
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return float(factor or 1.0)

    @cached_property
    def geod(self) -> Geod:
        ellps = self.pyproj_crs.ellipsoid
        if ellps is None:
            return Geod(ellps="WGS84")
        return Geod(a=ellps.semi_major_metre, b=ellps.semi_minor_metre)

    @cached_property
    def to_lonlat(self) -> Transformer:
        return Transformer.from_crs(self.pyproj_crs, CRS.from_epsg(4326), always_xy=True)

    @property
    def is_north_up(self) -> bool:
        return self.transform.b == 0 and self.transform.d == 0

    def north_up(self) -> Grid:
        """The north-up grid covering this (rotated or sheared) one at the same pixel size; itself if north-up.

        Windows and crops are defined on north-up grids only; a rotated scene is read onto this grid
        through a warped VRT, like any other alignment.
        """
        if self.is_north_up:
            return self
        t = self.transform
        res = min(math.hypot(t.a, t.d), math.hypot(t.b, t.e))
        minx, miny, maxx, maxy = self.bounds
        width, height = max(1, math.ceil((maxx - minx) / res - 1e-9)), max(1, math.ceil((maxy - miny) / res - 1e-9))
        return Grid(crs=self.crs, transform=Affine(res, 0, minx, 0, -res, maxy), width=width, height=height)

    def crop_offset(self, parent: Grid) -> tuple[int, int] | None:
        """(col, row) of this grid's origin in ``parent`` when it is a pixel-aligned crop of it.

        Same CRS and the same pixel size, rotation and orientation on both axes, origin on a pixel
        corner of ``parent``: then pixels can be copied without resampling. Otherwise None.
        """
        if self.crs != parent.crs:
            return None
        size = max(abs(parent.transform.a), abs(parent.transform.e), 1e-12)
        mine, theirs = self.transform, parent.transform
        if any(abs(x - y) > 1e-9 * size for x, y in zip((mine.a, mine.b, mine.d, mine.e),
                                                         (theirs.a, theirs.b, theirs.d, theirs.e), strict=True)):
            return None
        col, row = ~theirs @ (mine.c, mine.f)
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            return None
        return round(col), round(row)

    def windows(self, size: int = BLOCK, cols: int | None = None) -> Iterator[Window]:
        """Row-major blocks of at most ``size`` rows by ``cols`` (default ``size``) columns covering the grid."""
        cols = cols or size
        for row in range(0, self.height, size):
            for col in range(0, self.width, cols):
                yield Window(col, row, min(cols, self.width - col), min(size, self.height - row))

    def centre_lonlat(self) -> tuple[float, float]:
        x, y = self.transform @ (self.width / 2, self.height / 2)
        lon, lat = self.to_lonlat.transform(x, y)
        return float(lon), float(lat)

    # --- ground geometry -------------------------------------------------------------------------

    @cached_property
    def _row_areas_geographic(self) -> np.ndarray:
        """Geodesic area (m²) of one pixel in each row of a north-up geographic grid."""
        t = self.transform
        x0, x1 = t.c, t.c + t.a
        areas = np.empty(self.height, dtype=np.float64)
        for row in range(self.height):
            y0 = t.f + t.e * row
            y1 = y0 + t.e
            area, _ = self.geod.polygon_area_perimeter([x0, x1, x1, x0], [y0, y0, y1, y1])
            areas[row] = abs(area)
        return areas

    @cached_property
    def _row_areas_projected(self) -> dict:
        """Per-row pixel areas of the blocks measured so far (every measure walks the same blocks)."""
        return {}

    @cached_property
    def _proj(self) -> Proj:
        return Proj(self.pyproj_crs)

    def _areal_scale(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The projection's areal scale factor at pixel positions (1 where it has none)."""
        xs, ys = self.transform @ (cols, rows)
        try:
            lon, lat = self.to_lonlat.transform(np.asarray(xs, np.float64), np.asarray(ys, np.float64))
            scale = np.asarray(self._proj.get_factors(lon, lat).areal_scale, dtype=np.float64)
        except Exception:  # noqa: BLE001 - engineering or odd CRSs have no factors: use nominal
            return np.ones(np.shape(cols))
        return np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)

    def pixel_area(self, window: Window) -> np.ndarray:
        """Ground area (m²) of each pixel of ``window``, broadcastable to its (rows, cols) shape."""
        rows = int(window.height)
        if self.crs.is_geographic and self.is_rectilinear:
            r0 = int(window.row_off)
            return self._row_areas_geographic[r0 : r0 + rows, None]
        nominal = abs(self.transform.determinant)
        if self.crs.is_geographic:
            # A rotated geographic grid: approximate by the local metric at the block centre.
            lon, lat = self.transform @ (window.col_off + window.width / 2, window.row_off + rows / 2)
            dx = self.geod.line_length([lon, lon + 1e-6], [lat, lat]) / 1e-6
            dy = self.geod.line_length([lon, lon], [lat, lat + 1e-6]) / 1e-6
            return np.full((1, 1), nominal * dx * dy)
        nominal *= self._metre_factor**2
        # Per row, at the block's centre column: the scale of Web Mercator or polar grids changes
        # along the rows by several percent over a large scene; across a block's columns far less.
        key = (float(window.col_off + window.width / 2), int(window.row_off), rows)
        if key not in self._row_areas_projected:
            row_centres = np.arange(rows, dtype=np.float64) + window.row_off + 0.5
            scale = self._areal_scale(np.full(rows, key[0]), row_centres)
            self._row_areas_projected[key] = (nominal / scale)[:, None]
        return self._row_areas_projected[key]

    def pixel_size_m(self, col: float | None = None, row: float | None = None) -> tuple[float, float]:
        """Approximate (x, y) size on the ground, in metres, of the pixel at (col, row) (default: the centre)."""
        t = self.transform
        c = self.width / 2 if col is None else col
        r = self.height / 2 if row is None else row
        pts = [t @ (c, r), t @ (c + 1, r), t @ (c, r + 1)]
        lonlat = [self.to_lonlat.transform(x, y) for x, y in pts]
        dx = self.geod.line_length([lonlat[0][0], lonlat[1][0]], [lonlat[0][1], lonlat[1][1]])
        dy = self.geod.line_length([lonlat[0][0], lonlat[2][0]], [lonlat[0][1], lonlat[2][1]])
        return float(dx), float(dy)

    def metric_xy(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Pixel centres in a local metric frame (metres), shape (n, 2), for nearest-neighbour work.

        Projected CRSs use their own coordinates (in metres); geographic ones an azimuthal
        equidistant projection centred on the grid, which keeps distances true near the centre.
        """
        xs, ys = self.transform @ (cols + 0.5, rows + 0.5)
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        if self.crs.is_geographic:
            lon_c, lat_c = self.centre_lonlat()
            aeqd = CRS.from_proj4(f"+proj=aeqd +lat_0={lat_c} +lon_0={lon_c} +datum=WGS84 +units=m")
            xs, ys = Transformer.from_crs(self.pyproj_crs, aeqd, always_xy=True).transform(xs, ys)
            return np.column_stack([xs, ys])
        return np.column_stack([xs, ys]) * self._metre_factor

    def pixel_lonlat(self, col: float, row: float) -> tuple[float, float]:
        x, y = self.transform @ (col, row)
        lon, lat = self.to_lonlat.transform(x, y)
        return float(lon), float(lat)

    def geodesic_distance(self, a: tuple[float, float], b: tuple[float, float]) -> float:
        """Geodesic distance in metres between two (col, row) pixel positions."""
        lon1, lat1 = self.pixel_lonlat(*a)
        lon2, lat2 = self.pixel_lonlat(*b)
        return float(self.geod.inv(lon1, lat1, lon2, lat2)[2])

    def bearing_deg(self, a: tuple[float, float], b: tuple[float, float]) -> float:
        """Azimuth in degrees clockwise from north from pixel position ``a`` to ``b`` ((col, row) each)."""
        lon1, lat1 = self.pixel_lonlat(*a)
        lon2, lat2 = self.pixel_lonlat(*b)
        return float(self.geod.inv(lon1, lat1, lon2, lat2)[0]) % 360


@dataclass(frozen=True)
class PixelGrid(Grid):
    """A plain image (PNG, JPEG, a TIFF without georeferencing): pixels, and a ground size only if given.

    ``crs`` is None and ``transform`` the identity, so outputs line up pixel for pixel with the image.
    With ``gsd`` (metres per pixel, e.g. ``--gsd 0.5``) lengths and areas are in metres; without it a
    pixel is the unit (``units == "px"``). Positions are (col, row) in pixels; north is up.
    """

    gsd: float | None = None

    @property
    def units(self) -> str:
        return "m" if self.gsd else "px"

    @property
    def _size(self) -> float:
        return self.gsd or 1.0

    def pixel_area(self, window: Window) -> np.ndarray:
        return np.full((1, 1), self._size**2)

    def pixel_size_m(self) -> tuple[float, float]:
        return self._size, self._size

    def metric_xy(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.column_stack([(np.asarray(cols) + 0.5) * self._size, (np.asarray(rows) + 0.5) * self._size])

    def pixel_lonlat(self, col: float, row: float) -> tuple[float, float]:
        """(col, row) itself: a plain image has no longitude or latitude."""
        return float(col), float(row)

    def centre_lonlat(self) -> tuple[float, float]:
        return self.width / 2, self.height / 2

    def geodesic_distance(self, a: tuple[float, float], b: tuple[float, float]) -> float:
        return float(math.hypot(b[0] - a[0], b[1] - a[1]) * self._size)

    def bearing_deg(self, a: tuple[float, float], b: tuple[float, float]) -> float:
        # Rows grow southwards: north is -row.
        return math.degrees(math.atan2(b[0] - a[0], a[1] - b[1])) % 360
