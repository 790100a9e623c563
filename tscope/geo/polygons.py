"""Class masks as RFC 7946 polygons: lon/lat WGS84, cut at the antimeridian, bounded in size.

A mask is traced pixel-exact (4-connected, the connectivity every measure uses) on its own grid, so
each polygon is one region that :func:`tscope.reason.measures.count` counts. The output is bounded
by what a GIS can draw: when the traced rings would exceed ``max_vertices`` corners the mask is
traced on a grid coarsened by the majority of each cell (doubling the cell until it fits), and only
the ``max_features`` largest regions are kept. Tracing time is bounded too: masks of more than
``MAX_TRACE_PIXELS`` pixels start from cells that bring them under it. The caller reports all of it.

Rings are reprojected to EPSG:4326, cut at the antimeridian and closed round a pole by the
``antimeridian`` package (RFC 7946 §3.1.9), rounded to ``PRECISION_DEG`` (about 1 cm) with
``shapely.set_precision`` (any ring the rounding spoils is repaired), and wound counter-clockwise
(§3.1.6). Each feature's area is the geodesic area of the ring as written, so a GIS recomputes the
same number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import antimeridian
import numpy as np
import shapely
from affine import Affine
from pyproj import Geod
from rasterio.features import shapes

from tscope.geo.cells import cell_sums
from tscope.geo.mask import Mask

# About 2.5 MB of GeoJSON: enough to check the masks in a GIS; the full detail is in the COG masks.
MAX_VERTICES = 100_000
MAX_FEATURES = 5_000
# GDAL's polygoniser scans every pixel (7 s for a 10980² mask whatever its outline): larger masks
# are traced on majority cells so that at most this many cells are scanned.
MAX_TRACE_PIXELS = 4096 * 4096
PRECISION_DEG = 1e-7
STRIP = 1024
WGS84 = Geod(ellps="WGS84")


@dataclass
class Polygons:
    """The polygons of one mask, in EPSG:4326, and what was done to bound them."""

    geometries: list[shapely.Geometry]
    areas_m2: np.ndarray
    texts: list[str]  # each geometry as GeoJSON text, coordinates to PRECISION_DEG
    factor: int = 1  # side of the majority cell the mask was traced on (1 = full resolution)
    dropped: int = 0  # regions left out beyond max_features (the smallest)
    dropped_fraction: float = 0.0  # their share of the traced class area
    cut: int = 0  # polygons cut at the antimeridian or closed round a pole


def decimate(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Majority of each ``factor`` x ``factor`` cell, strip by strip (no full-size temporaries)."""
    rows, cols = pixels.shape[0] // factor, pixels.shape[1] // factor
    out = np.zeros((rows, cols), dtype=bool)
    dtype = np.uint16 if factor <= 255 else np.uint32
    strip = max(1, 4096 // factor)
    for r in range(0, rows, strip):
        r1 = min(rows, r + strip)
        block = pixels[r * factor : r1 * factor, : cols * factor].view(np.uint8)
        out[r:r1] = cell_sums(block, factor, dtype) * 2 >= factor * factor
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
    factor = max(1, math.ceil(math.sqrt(grid.width * grid.height / MAX_TRACE_PIXELS)))
    pixels = decimate(mask.counted, factor) if factor > 1 else mask.counted
    while corner_count(pixels) > max_vertices and min(pixels.shape) > 1:
        factor *= 2
        pixels = decimate(mask.counted, factor)
    native = _trace(pixels, grid.transform @ Affine.scale(factor))
    if not native:
        return Polygons([], np.empty(0), [], factor)
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

    geometries = shapely.transform(np.asarray(native, dtype=object), reproject)
    cut = 0
    bounds = shapely.bounds(geometries)
    # Only a ring spanning more than 180° of longitude can jump across the antimeridian.
    for i in np.nonzero(bounds[:, 2] - bounds[:, 0] > 180)[0]:
        if _crosses(geometries[i]):
            # Cut at ±180° (and closed along the pole when the ring goes round one): RFC 7946 §3.1.9.
            geometries[i] = antimeridian.fix_polygon(geometries[i], great_circle=False)
            cut += 1
    # Pointwise rounding (set_precision's default snaps through a full overlay, seconds per mask);
    # the few rings it could spoil are repaired below.
    geometries = shapely.set_precision(geometries, PRECISION_DEG, mode="pointwise")
    invalid = ~shapely.is_valid(geometries)
    if invalid.any():
        geometries[invalid] = [_polygonal(g) for g in shapely.make_valid(geometries[invalid])]
    # Projections such as polar stereographic reverse the winding of the traced rings.
    geometries = shapely.orient_polygons(geometries, exterior_cw=False)
    geometries = geometries[~shapely.is_empty(geometries)]
    texts, areas = _texts_and_areas(geometries)
    return Polygons(list(geometries), areas, texts, factor, dropped, dropped_fraction, cut)


def _texts_and_areas(geometries: np.ndarray) -> tuple[list[str], np.ndarray]:
    """GeoJSON geometry texts (7 decimals) and geodesic areas (m²) of lon/lat (multi)polygons.

    Everything is read from one ragged coordinate array: per-geometry coordinate access costs more
    than the polygonising. Areas are ``Geod.polygon_area_perimeter`` of every ring on WGS84, signed
    by winding (exteriors counter-clockwise, holes clockwise), summed per geometry.
    """
    if not len(geometries):
        return [], np.empty(0)
    kind, coords, offsets = shapely.to_ragged_array(geometries)
    if kind == shapely.GeometryType.POLYGON:
        rings, parts = offsets
        per_geometry = np.arange(len(parts))
    else:
        rings, parts, per_geometry = offsets
    lon, lat = np.ascontiguousarray(coords[:, 0]), np.ascontiguousarray(coords[:, 1])
    ring_areas = np.array([WGS84.polygon_area_perimeter(lon[a:b], lat[a:b])[0]
                           for a, b in zip(rings[:-1], rings[1:], strict=True)])
    first_ring = parts[per_geometry[:-1]]
    areas = np.add.reduceat(ring_areas, first_ring)
    points = [f"[{x:.7f},{y:.7f}]" for x, y in coords.tolist()]
    ring_texts = ["[" + ",".join(points[a:b]) + "]" for a, b in zip(rings[:-1], rings[1:], strict=True)]
    part_texts = ["[" + ",".join(ring_texts[a:b]) + "]" for a, b in zip(parts[:-1], parts[1:], strict=True)]
    texts = []
    for a, b in zip(per_geometry[:-1], per_geometry[1:], strict=True):
        if b - a == 1:
            texts.append('{"type": "Polygon", "coordinates": ' + part_texts[a] + "}")
        else:
            texts.append('{"type": "MultiPolygon", "coordinates": [' + ",".join(part_texts[a:b]) + "]}")
    return texts, areas
