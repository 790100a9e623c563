"""The one implementation of every measure tscope reports, on georeferenced boolean masks.

Every backend, the data synthesis and the benchmark call these functions; nothing else computes an
area, a coverage or a distance. Units are ground units: square metres and metres, geodesic on
geographic CRSs (see :mod:`tscope.geo.grid`). Only pixels that are both in the class and valid
(``Mask.counted``) ever count; percentages are of the valid area.

Work is done block by block over the grid, so temporaries stay at one block's size; labelling and
nearest-edge search hold at most one int32 label image or the boundary pixels of a mask.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tscope.geo.grid import Grid
from tscope.geo.mask import Mask

COMPASS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")
DEFAULT_MIN_PIXELS = 4
CONNECTIVITY = ndimage.generate_binary_structure(2, 1)  # 4-connected, as masks.geojson is traced
REGION_STRIP = 256  # rows labelled at once: 11 MB of int32 labels across a 10980-px tile


def _same_grid(*masks: Mask) -> Grid:
    grid = masks[0].grid
    for other in masks[1:]:
        if other.grid != grid:
            raise ValueError(f"masks {masks[0].label} and {other.label} are on different grids")
    return grid


def _area(grid: Grid, pixels: np.ndarray) -> float:
    total = 0.0
    for window in grid.windows():
        rows = slice(int(window.row_off), int(window.row_off + window.height))
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        block = pixels[rows, cols]
        if not block.any():
            continue
        area = grid.pixel_area(window)
        if area.shape == (1, 1):
            total += float(area[0, 0]) * int(np.count_nonzero(block))
        else:
            total += float(np.sum(np.count_nonzero(block, axis=1)[:, None] * area))
    return total


def area_m2(mask: Mask) -> float:
    """Ground area of the class, in m²."""
    return _area(mask.grid, mask.counted)


def valid_area_m2(mask: Mask) -> float:
    return _area(mask.grid, mask.valid)


@dataclass
class Result:
    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Coverage(Result):
    percent: float
    area_m2: float
    valid_area_m2: float


def coverage(mask: Mask) -> Coverage:
    """Share of the valid area covered by the class (percent)."""
    valid = valid_area_m2(mask)
    area = area_m2(mask)
    return Coverage(percent=100.0 * area / valid if valid else float("nan"), area_m2=area, valid_area_m2=valid)


@dataclass
class Comparison(Result):
    area_a_m2: float
    area_b_m2: float
    larger: str
    ratio: float


def compare(a: Mask, b: Mask) -> Comparison:
    """Which of two classes covers more ground (``larger`` is ``"tie"`` when equal), and the ratio."""
    _same_grid(a, b)
    area_a, area_b = area_m2(a), area_m2(b)
    larger = "tie" if area_a == area_b else (a.label if area_a > area_b else b.label)
    small = min(area_a, area_b)
    ratio = max(area_a, area_b) / small if small else math.inf
    return Comparison(area_a_m2=area_a, area_b_m2=area_b, larger=larger, ratio=ratio)


@dataclass
class Adjacency(Result):
    borders: bool
    shared_boundary_m: float


# Crofton's formula (the length of a curve is the measure of the lines that cross it, weighted by
# how often they do) discretised on the pixel lattice, as in Lehmann & Legland (2012), "Efficient
# N-dimensional surface estimation using Crofton formula and run-length encoding", Insight Journal:
# the lines are the rows, columns and both diagonals through pixel centres, and a line crosses the
# shared boundary wherever a pixel of one class is followed by one of the other along it. Counting
# pixel edges instead measures the staircase (+41 % on a 45° edge). With four directions the raw
# estimate of a straight edge at angle φ is (π/8) Σ|sin(φ - θ)| of its length, 0.948 at 0° and 45° to
# 1.026 at 22.5°; CROFTON_SCALE centres that range, so straight edges at any angle are within ±4 %
# and a circle (the mean over angles) +1.3 %.
CROFTON_STEPS = ((0, 1), (1, 0), (1, 1), (1, -1))
CROFTON_SCALE = 2 / (math.pi / 8 * (1 + math.sqrt(2)) + math.pi / 4 * (math.sin(math.pi / 8) + math.cos(math.pi / 8)))
STRIP = 1024


def _crossings(pa: np.ndarray, pb: np.ndarray, dr: int, dc: int, r0: int, r1: int) -> int:
    """Pixels of rows ``r0:r1`` in one class whose neighbour ``(dr, dc)`` away is in the other."""
    h, w = pa.shape
    r1 = min(r1, h - dr)
    if r1 <= r0:
        return 0
    first, second = slice(max(0, -dc), w - max(0, dc)), slice(max(0, dc), w - max(0, -dc))
    ab = np.count_nonzero(pa[r0:r1, first] & pb[r0 + dr : r1 + dr, second])
    ba = np.count_nonzero(pb[r0:r1, first] & pa[r0 + dr : r1 + dr, second])
    return int(ab + ba)


def _crofton_weights(px: float, py: float) -> list[tuple[float, float]]:
    """(angular weight, line spacing in m) of each of CROFTON_STEPS for pixels ``px`` x ``py`` m."""
    angles = [math.atan2(dr * py, dc * px) % math.pi for dr, dc in CROFTON_STEPS]
    order = sorted(range(len(angles)), key=angles.__getitem__)
    weights = [0.0] * len(angles)
    for k, i in enumerate(order):
        # Each direction stands for the arc of directions closer to it than to its neighbours.
        before = angles[order[k - 1]] - (math.pi if k == 0 else 0)
        after = angles[order[(k + 1) % len(order)]] + (math.pi if k == len(order) - 1 else 0)
        weights[i] = (after - before) / 2
    return [(weights[i], px * py / math.hypot(dc * px, dr * py)) for i, (dr, dc) in enumerate(CROFTON_STEPS)]


def adjacency(a: Mask, b: Mask) -> Adjacency:
    """Whether the classes share a pixel edge, and the ground length of their shared boundary (m).

    The length is the Crofton estimate above, strip by strip with the pixel size on the ground at
    each strip (it varies with latitude on geographic and Web Mercator grids).
    """
    grid = _same_grid(a, b)
    pa, pb = a.counted, b.counted
    borders = False
    length = 0.0
    for r0 in range(0, grid.height, STRIP):
        r1 = min(grid.height, r0 + STRIP)
        counts = [_crossings(pa, pb, dr, dc, r0, r1) for dr, dc in CROFTON_STEPS]
        if not any(counts):
            continue
        borders = borders or bool(counts[0] or counts[1])
        px, py = grid.pixel_size_m(grid.width / 2, (r0 + r1) / 2)
        length += 0.5 * sum(w * n * s for (w, s), n in zip(_crofton_weights(px, py), counts, strict=True))
    return Adjacency(borders=borders, shared_boundary_m=float(length * CROFTON_SCALE) if borders else 0.0)


@dataclass
class Distance(Result):
    metres: float
    point_a: tuple[float, float] | None
    point_b: tuple[float, float] | None


def _edge_pixels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of class pixels with a 4-neighbour outside the class (or the image)."""
    inner = np.zeros_like(pixels)
    # Shifted ANDs: a pixel is inner when its four neighbours are in the class (image border: not).
    inner[1:-1, 1:-1] = pixels[:-2, 1:-1] & pixels[2:, 1:-1] & pixels[1:-1, :-2] & pixels[1:-1, 2:]
    return np.nonzero(pixels & ~inner)


def _facing(pa: np.ndarray, pb: np.ndarray, dr: int, dc: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of ``pa`` and ``pb`` aligned so that ``pa[r, c]`` faces ``pb[r + dr, c + dc]``."""
    h, w = pa.shape
    a = pa[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)]
    b = pb[max(0, dr) : h - max(0, -dr), max(0, dc) : w - max(0, -dc)]
    return a, b


def _touching_pixel(pa: np.ndarray, pb: np.ndarray) -> tuple[int, int] | None:
    """(row, col) of a pixel of ``pa`` that shares an edge or a corner with ``pb`` (a 0 m gap), or None."""
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if (dr, dc) == (0, 0):
                continue
            both = np.logical_and(*_facing(pa, pb, dr, dc))
            if both.any():
                i, j = np.unravel_index(np.argmax(both), both.shape)
                return int(i) + max(0, -dr), int(j) + max(0, -dc)
    return None


def distance(a: Mask, b: Mask) -> Distance:
    """Minimum edge-to-edge ground distance between two classes (0 when they touch or overlap).

    Candidate pairs come from a k-d tree over boundary pixel centres in a local metric frame; the
    gap between two pixels is measured between their edges, and the closest pair's distance is
    the geodesic one.
    """
    from scipy.spatial import cKDTree

    grid = _same_grid(a, b)
    pa, pb = a.counted, b.counted
    if not pa.any() or not pb.any():
        return Distance(metres=float("nan"), point_a=None, point_b=None)
    if np.any(pa & pb):
        rows, cols = np.nonzero(pa & pb)
        point = grid.pixel_lonlat(cols[0] + 0.5, rows[0] + 0.5)
        return Distance(metres=0.0, point_a=point, point_b=point)
    touching = _touching_pixel(pa, pb)
    if touching is not None:
        point = grid.pixel_lonlat(touching[1] + 0.5, touching[0] + 0.5)
        return Distance(metres=0.0, point_a=point, point_b=point)
    ra, ca = _edge_pixels(pa)
    rb, cb = _edge_pixels(pb)
    xy_a = grid.metric_xy(ca, ra)
    xy_b = grid.metric_xy(cb, rb)
    tree = cKDTree(xy_b)
    k = min(8, len(xy_b))
    dist, idx = tree.query(xy_a, k=k)
    dist, idx = dist.reshape(len(xy_a), k), idx.reshape(len(xy_a), k)
    px, py = grid.pixel_size_m()
    delta = np.abs(xy_a[:, None, :] - xy_b[idx])
    gap = np.hypot(np.maximum(delta[..., 0] - px, 0), np.maximum(delta[..., 1] - py, 0))
    i, j = np.unravel_index(np.argmin(gap), gap.shape)
    ib = idx[i, j]
    if gap[i, j] == 0:
        metres = 0.0
    else:
        # Geodesic distance between the facing pixel edges: move each centre half a pixel towards
        # the other along each axis where they are apart.
        ac, ar = float(ca[i]) + 0.5, float(ra[i]) + 0.5
        bc, br = float(cb[ib]) + 0.5, float(rb[ib]) + 0.5
        step_c = np.sign(bc - ac) * 0.5 if abs(bc - ac) >= 1 else 0.0
        step_r = np.sign(br - ar) * 0.5 if abs(br - ar) >= 1 else 0.0
        if step_c == 0:
            ac = bc = (ac + bc) / 2
        if step_r == 0:
            ar = br = (ar + br) / 2
        metres = grid.geodesic_distance((ac + step_c, ar + step_r), (bc - step_c, br - step_r))
    point_a = grid.pixel_lonlat(ca[i] + 0.5, ra[i] + 0.5)
    point_b = grid.pixel_lonlat(cb[ib] + 0.5, rb[ib] + 0.5)
    return Distance(metres=float(metres), point_a=point_a, point_b=point_b)


@dataclass
class Count(Result):
    count: int
    min_area_m2: float
    region_areas_m2: list[float]


def _region_areas(mask: Mask) -> np.ndarray:
    """Area in m² of each 4-connected region of the class (in no particular order).

    4-connectivity, the one ``masks.geojson`` is traced with (8-connected pixel shapes give rings
    that touch themselves), so each counted region is one polygon a GIS can check. Labelled in strips
    of rows, whose labels are joined where they touch across a strip boundary (scipy's connected
    components of that graph): a label image of a whole 10980² tile would be 480 MB.
    """
    grid = mask.grid
    pixels = mask.counted
    parts: list[np.ndarray] = []
    edges: list[np.ndarray] = []
    above = None  # the previous strip's last row, in global labels (0: not the class)
    total = 0
    for window in grid.windows(REGION_STRIP, grid.width):
        rows = slice(int(window.row_off), int(window.row_off + window.height))
        labels, n = ndimage.label(pixels[rows], structure=CONNECTIVITY, output=np.int32)
        # Summed over the class pixels only (most of a strip is background): each one weighs its own area.
        row, col = np.divmod(np.flatnonzero(pixels[rows]), labels.shape[1])
        weights = np.broadcast_to(grid.pixel_area(window), labels.shape)[row, col]
        parts.append(np.bincount(labels[row, col] - 1, weights=weights, minlength=n))
        first = np.where(labels[0] > 0, labels[0] + total, 0)
        if above is not None:
            touching = (above > 0) & (first > 0)
            edges.append(np.stack([above[touching], first[touching]]) - 1)
        above = np.where(labels[-1] > 0, labels[-1] + total, 0)
        total += n
    areas = np.concatenate(parts) if parts else np.empty(0)
    if not total:
        return areas
    joined = np.concatenate(edges, axis=1) if edges else np.empty((2, 0), np.int64)
    graph = coo_matrix((np.ones(joined.shape[1], np.int8), (joined[0], joined[1])), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    return np.bincount(component, weights=areas)


def default_min_area(grid: Grid) -> float:
    """Regions smaller than this many pixels are noise, not objects (used when a question gives none).

    In pixels of the grid's smallest ground area, so that every region of DEFAULT_MIN_PIXELS pixels
    counts wherever it lies (pixel areas vary slightly with the projection's scale).
    """
    smallest = min(float(np.min(grid.pixel_area(window))) for window in grid.windows())
    return DEFAULT_MIN_PIXELS * smallest


def count(mask: Mask, min_area: float | None = None) -> Count:
    """Connected regions (4-connectivity) of the class with at least ``min_area`` m²."""
    min_area = default_min_area(mask.grid) if min_area is None else min_area
    areas = _region_areas(mask)
    kept = sorted((float(a) for a in areas if a >= min_area * (1 - 1e-9)), reverse=True)
    return Count(count=len(kept), min_area_m2=float(min_area), region_areas_m2=kept)


@dataclass
class Existence(Result):
    present: bool
    regions: int
    largest_m2: float
    min_area_m2: float


def existence(mask: Mask, min_area: float | None = None) -> Existence:
    """Whether the class is present: at least one region of ``min_area`` m²."""
    counted = count(mask, min_area)
    largest = counted.region_areas_m2[0] if counted.region_areas_m2 else 0.0
    return Existence(present=counted.count > 0, regions=counted.count, largest_m2=largest,
                     min_area_m2=counted.min_area_m2)


@dataclass
class Location(Result):
    position: str
    centroid: tuple[float, float] | None
    bbox: tuple[float, float, float, float] | None
    relative_to: str | None = None
    direction: str | None = None
    bearing_deg: float | None = None


def _centroid_px(mask: Mask) -> tuple[float, float] | None:
    grid = mask.grid
    total = sx = sy = 0.0
    pixels = mask.counted
    for window in grid.windows():
        r0, c0 = int(window.row_off), int(window.col_off)
        block = pixels[r0 : r0 + int(window.height), c0 : c0 + int(window.width)]
        rows, cols = np.nonzero(block)
        if not rows.size:
            continue
        area = np.broadcast_to(grid.pixel_area(window), block.shape)[rows, cols]
        total += area.sum()
        sx += float(np.sum((cols + c0 + 0.5) * area))
        sy += float(np.sum((rows + r0 + 0.5) * area))
    if total == 0:
        return None
    return sx / total, sy / total


def _position_word(col: float, row: float, width: int, height: int) -> str:
    third_x = min(2, int(3 * col / width))
    third_y = min(2, int(3 * row / height))
    vertical = ("north", "", "south")[third_y]
    horizontal = ("west", "", "east")[third_x]
    if not vertical and not horizontal:
        return "centre"
    return "-".join(p for p in (vertical, horizontal) if p)


def _compass(bearing: float) -> str:
    return COMPASS[int(((bearing % 360) + 22.5) // 45) % 8]


def locate(mask: Mask, relative_to: Mask | None = None) -> Location:
    """Where the class lies: its area-weighted centroid as a part of the image (north-west ...
    centre ... south-east, for north-up grids), its lon/lat bounding box, and optionally the compass
    direction from another class's centroid."""
    grid = mask.grid
    centre = _centroid_px(mask)
    if centre is None:
        return Location(position="absent", centroid=None, bbox=None)
    rows, cols = np.nonzero(np.any(mask.counted, axis=1))[0], np.nonzero(np.any(mask.counted, axis=0))[0]
    corners = [grid.pixel_lonlat(c, r) for c in (cols[0], cols[-1] + 1) for r in (rows[0], rows[-1] + 1)]
    lons, lats = [c[0] for c in corners], [c[1] for c in corners]
    result = Location(
        position=_position_word(centre[0], centre[1], grid.width, grid.height),
        centroid=grid.pixel_lonlat(*centre),
        bbox=(min(lons), min(lats), max(lons), max(lats)),
    )
    if relative_to is not None:
        _same_grid(mask, relative_to)
        other = _centroid_px(relative_to)
        if other is not None:
            bearing = grid.bearing_deg(other, centre)
            result.relative_to = relative_to.label
            result.direction = _compass(bearing)
            result.bearing_deg = bearing
    return result


@dataclass
class Change(Result):
    area_t1_m2: float
    area_t2_m2: float
    gain_m2: float
    loss_m2: float
    net_m2: float
    percent: float
    common_valid_m2: float


def change(before: Mask, after: Mask) -> Change:
    """Gain, loss and net change of a class between two dates, over pixels valid at both."""
    grid = _same_grid(before, after)
    both = before.valid & after.valid
    t1, t2 = before.data & both, after.data & both
    area_t1, area_t2 = _area(grid, t1), _area(grid, t2)
    gain, loss = _area(grid, t2 & ~t1), _area(grid, t1 & ~t2)
    return Change(
        area_t1_m2=area_t1,
        area_t2_m2=area_t2,
        gain_m2=gain,
        loss_m2=loss,
        net_m2=gain - loss,
        percent=100.0 * (area_t2 - area_t1) / area_t1 if area_t1 else float("nan"),
        common_valid_m2=_area(grid, both),
    )
