"""Class masks as RFC 7946 polygons: lon/lat WGS84, cut at the antimeridian, bounded in size.

A mask is traced pixel-exact (4-connected, the connectivity every measure uses) on its own grid, so
each polygon is one region that :func:`tscope.reason.measures.count` counts. The output is bounded
by what a GIS can draw, not by raster width: when the traced rings would exceed ``max_vertices``
corners the mask is traced on a grid coarsened by the majority of each cell (doubling the cell until
it fits), and only the ``max_features`` largest regions are kept. The caller reports both.

Rings are reprojected to EPSG:4326, cut at the antimeridian and closed round a pole by the
``antimeridian`` package (RFC 7946 §3.1.9), wound counter-clockwise (§3.1.6), and rounded to
``PRECISION_DEG`` (about 1 cm) with ``shapely.set_precision``, which keeps them valid. Each
feature's area is the geodesic area of the ring as written, so a GIS recomputes the same number.
"""

from __future__ import annotations

from dataclasses import dataclass

import antimeridian
import numpy as np
import shapely
from affine import Affine
from pyproj import Geod
from rasterio.features import shapes

from tscope.geo.mask import Mask

MAX_VERTICES = 200_000
MAX_FEATURES = 10_000
PRECISION_DEG = 1e-7
STRIP = 1024
WGS84 = Geod(ellps="WGS84")


@dataclass
class Polygons:
    """The polygons of one mask, in EPSG:4326, and what was done to bound them."""

    geometries: list[shapely.Geometry]
    areas_m2: np.ndarray
    factor: int = 1  # side of the majority cell the mask was traced on (1 = full resolution)
    dropped: int = 0  # regions left out beyond max_features (the smallest)
    dropped_fraction: float = 0.0  # their share of the traced class area
    cut: int = 0  # polygons cut at the antimeridian or closed round a pole


def decimate(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Majority of each ``factor`` x ``factor`` cell, strip by strip (no full-size temporaries)."""
    rows, cols = pixels.shape[0] // factor, pixels.shape[1] // factor
    out = np.zeros((rows, cols), dtype=bool)
    strip = max(1, 4096 // factor)
    for r in range(0, rows, strip):
        r1 = min(rows, r + strip)
        block = pixels[r * factor : r1 * factor, : cols * factor]
        counts = block.reshape(r1 - r, factor, cols, factor).sum(axis=(1, 3), dtype=np.int32)
        out[r:r1] = counts * 2 >= factor * factor
    return out


def corner_count(pixels: np.ndarray) -> int:
    """How many ring vertices tracing ``pixels`` 4-connected gives: the corners of its outline.

    A pixel corner is a ring vertex when an odd number of the four pixels round it are set, or two
    diagonal ones (4-connected tracing turns there twice). Counted strip by strip.
    """
    total = 0
    h, w = pixels.shape
    for v0 in range(0, h + 1, STRIP):
        v1 = min(h + 1, v0 + STRIP)
        # Vertex rows v0..v1-1 lie between pixel rows v-1 and v; outside the image is not the class.
        block = np.zeros((v1 - v0 + 1, w + 2), bool)
        lo, hi = max(0, v0 - 1), min(h, v1)
        block[lo - (v0 - 1) : hi - (v0 - 1), 1:-1] = pixels[lo:hi]
        a, b, c, d = block[:-1, :-1], block[:-1, 1:], block[1:, :-1], block[1:, 1:]
        odd = a ^ b ^ c ^ d
        diagonal = (a == d) & (b == c) & (a != b)
        total += int(np.count_nonzero(odd)) + 2 * int(np.count_nonzero(diagonal))
    return total


def _trace(pixels: np.ndarray, transform: Affine) -> list[shapely.Polygon]:
    """Pixel-exact 4-connected polygons of ``pixels`` in the grid's CRS, built in one vectorised call."""
    coords: list = []
    ring_offsets = [0]
    polygon_offsets = [0]
    for geom, _ in shapes(pixels.view(np.uint8), mask=pixels, transform=transform, connectivity=4):
        for ring in geom["coordinates"]:
            coords.extend(ring)
            ring_offsets.append(len(coords))
        polygon_offsets.append(len(ring_offsets) - 1)
    if not coords:
        return []
    return list(shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, np.asarray(coords, dtype=np.float64),
        (np.asarray(ring_offsets), np.asarray(polygon_offsets)),
    ))


def _crosses(geometry: shapely.Geometry) -> bool:
    """Whether a lon/lat ring jumps across the antimeridian (an edge spanning more than 180°)."""
    rings = [geometry.exterior, *geometry.interiors]
    return any(np.any(np.abs(np.diff(np.asarray(ring.coords)[:, 0])) > 180) for ring in rings)


def _polygonal(geometry: shapely.Geometry) -> shapely.Geometry:
    """The polygons of a repaired geometry (make_valid may add the lines or points it collapsed)."""
    parts = [p for p in shapely.get_parts(geometry) if isinstance(p, shapely.Polygon | shapely.MultiPolygon)]
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(
        [q for p in parts for q in shapely.get_parts(p)])


def mask_polygons(mask: Mask, max_vertices: int = MAX_VERTICES, max_features: int = MAX_FEATURES) -> Polygons:
    """The class regions of ``mask`` as valid, counter-clockwise lon/lat polygons with geodesic areas."""
    grid = mask.grid
    pixels, factor = mask.counted, 1
    while corner_count(pixels) > max_vertices and min(pixels.shape) > 1:
        factor *= 2
        pixels = decimate(mask.counted, factor)
    native = _trace(pixels, grid.transform @ Affine.scale(factor))
    if not native:
        return Polygons([], np.empty(0), factor)
    dropped = max(0, len(native) - max_features)
    dropped_fraction = 0.0
    if dropped:
        planar = shapely.area(native)
        order = np.argsort(planar)[::-1]
        dropped_fraction = float(planar[order[max_features:]].sum() / planar.sum())
        native = [native[i] for i in np.sort(order[:max_features])]
    to_lonlat = grid.to_lonlat

    def reproject(xy: np.ndarray) -> np.ndarray:
        lon, lat = to_lonlat.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([lon, lat])

    lonlat = shapely.transform(np.asarray(native, dtype=object), reproject)
    cut = 0
    geometries = []
    for geometry in lonlat:
        if _crosses(geometry):
            # Cut at ±180° (and closed along the pole when the ring goes round one): RFC 7946 §3.1.9.
            geometry = antimeridian.fix_polygon(geometry, great_circle=False)
            cut += 1
        geometries.append(geometry)
    geometries = shapely.set_precision(np.asarray(geometries, dtype=object), PRECISION_DEG)
    invalid = ~shapely.is_valid(geometries)
    if invalid.any():
        geometries[invalid] = [_polygonal(g) for g in shapely.make_valid(geometries[invalid])]
    # Projections such as polar stereographic reverse the winding of the traced rings.
    geometries = shapely.orient_polygons(geometries, exterior_cw=False)
    keep = ~shapely.is_empty(geometries)
    geometries = list(geometries[keep])
    areas = np.array([WGS84.geometry_area_perimeter(g)[0] for g in geometries])
    return Polygons(geometries, areas, factor, dropped, dropped_fraction, cut)


def geojson_geometry(geometry: shapely.Geometry) -> str:
    """GeoJSON text of a (multi)polygon with coordinates at the written precision (7 decimals)."""
    def ring(coords: np.ndarray) -> str:
        return "[" + ",".join(f"[{x:.7f},{y:.7f}]" for x, y in coords.tolist()) + "]"

    def polygon(p: shapely.Polygon) -> str:
        return "[" + ",".join(ring(np.asarray(r.coords)) for r in (p.exterior, *p.interiors)) + "]"

    if isinstance(geometry, shapely.Polygon):
        return '{"type": "Polygon", "coordinates": ' + polygon(geometry) + "}"
    parts = [g for g in getattr(geometry, "geoms", []) if isinstance(g, shapely.Polygon)]
    return '{"type": "MultiPolygon", "coordinates": [' + ",".join(polygon(p) for p in parts) + "]}"
