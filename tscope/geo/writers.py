"""Writers for masks: Cloud-Optimised GeoTIFFs and GeoJSON polygons, always written atomically.

Every file goes to a temporary name in its destination folder and is renamed into place only when
complete, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.features import shapes
from rasterio.io import MemoryFile
from rasterio.windows import Window

from tscope.geo.grid import Grid
from tscope.geo.mask import Mask

MASK_NODATA = 255
STRIP = 1024
VECTOR_MAX_SIDE = 2048


@contextlib.contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it onto ``dst`` only if the block succeeds."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(dst: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``dst``; it replaces ``dst`` only if the block succeeds.

    A folder cannot be renamed over a non-empty one, so an existing ``dst`` is removed just before the
    rename: a crash in between leaves no ``dst`` rather than a half-written one.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(dst: str | Path, text: str) -> Path:
    with atomic_path(dst) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dst)


def write_json(dst: str | Path, obj: object) -> Path:
    return write_text(dst, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n")


def mask_to_uint8(mask: Mask, rows: slice = slice(None)) -> np.ndarray:
    """1 = class, 0 = not the class, 255 = nodata/cloud (written as the GeoTIFF's nodata)."""
    out = mask.data[rows].astype(np.uint8)
    out[~mask.valid[rows]] = MASK_NODATA
    return out


def _write_cog(dst: str | Path, grid: Grid, dtype: str, nodata: float, rows_of: Callable[[slice], np.ndarray],
               description: str | None = None, tags: dict | None = None) -> Path:
    """Write a single-band COG (deflate, 512-px tiles, internal overviews) strip by strip."""
    profile = dict(
        driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=dtype,
        crs=rasterio.crs.CRS.from_wkt(grid.crs.to_wkt()), transform=grid.transform, nodata=nodata,
        tiled=True, blockxsize=512, blockysize=512,
    )
    with MemoryFile() as memfile:
        with memfile.open(**profile) as tmp:
            # Strips, so no full-size converted copy of the array is ever made.
            for row in range(0, grid.height, STRIP):
                rows = slice(row, min(grid.height, row + STRIP))
                tmp.write(rows_of(rows), 1, window=Window(0, row, grid.width, rows.stop - row))
            if description:
                tmp.set_band_description(1, description)
            if tags:
                tmp.update_tags(1, **tags)
        with memfile.open() as src, atomic_path(dst) as out:
            # Deflate level 1 and nearest overviews: a full-tile mask takes ~2 s instead of ~10 s with
            # level 6 and mode, for files ~40% larger; both are standard for categorical COGs.
            rasterio.shutil.copy(
                src, out, driver="COG", compress="DEFLATE", level=1, overview_resampling="nearest",
                blocksize=512, num_threads="ALL_CPUS",
            )
    return Path(dst)


def write_cog(dst: str | Path, array: np.ndarray, mask: Mask, nodata: float = MASK_NODATA,
              description: str | None = None) -> Path:
    """Write a single-band array on ``mask.grid`` as a COG (deflate, 512-px tiles, internal overviews)."""
    return _write_cog(dst, mask.grid, str(array.dtype), nodata, lambda rows: array[rows], description,
                      {"CLASS": mask.label, "FRAME": mask.frame})


def write_mask_cog(dst: str | Path, mask: Mask) -> Path:
    """The mask as a uint8 COG: 1 class, 0 not, 255 nodata."""
    return _write_cog(dst, mask.grid, "uint8", MASK_NODATA, lambda rows: mask_to_uint8(mask, rows), mask.label,
                      {"CLASS": mask.label, "FRAME": mask.frame})


def _decimate(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Majority of each ``factor`` x ``factor`` cell, strip by strip (no full-size float temporaries)."""
    rows, cols = pixels.shape[0] // factor, pixels.shape[1] // factor
    out = np.zeros((rows, cols), dtype=bool)
    strip = max(1, 4096 // factor)
    for r in range(0, rows, strip):
        r1 = min(rows, r + strip)
        block = pixels[r * factor : r1 * factor, : cols * factor]
        counts = block.reshape(r1 - r, factor, cols, factor).sum(axis=(1, 3), dtype=np.int32)
        out[r:r1] = counts * 2 >= factor * factor
    return out


def _ring_areas(xy: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Signed shoelace area of each closed ring; rings are consecutive slices of ``xy`` from ``starts``."""
    x, y = xy[:, 0], xy[:, 1]
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    cross = x * y_next - x_next * y
    ends = np.append(starts[1:], len(xy)) - 1
    cross[ends] = 0.0  # the closing vertex repeats the first: no wrap-around term across rings
    return np.add.reduceat(cross, starts) / 2


def mask_polygons(mask: Mask, max_side: int = VECTOR_MAX_SIDE) -> tuple[list[str], np.ndarray, int]:
    """GeoJSON geometry texts of the class in EPSG:4326, their ground areas (m²), and the vectorising factor.

    Masks up to ``max_side`` pixels a side are vectorised at full resolution; larger ones on a grid
    coarsened by the majority of each cell, so the vector output stays bounded (a full Sentinel-2 tile
    has millions of pixel-sized specks). The GeoTIFF masks always keep full resolution. Coordinates of
    all polygons are reprojected in one call: per-polygon geometry objects cost more than the polygonising.
    """
    grid = mask.grid
    pixels = mask.counted
    factor = max(1, int(np.ceil(max(grid.width, grid.height) / max_side)))
    transform = grid.transform
    if factor > 1:
        pixels = _decimate(pixels, factor)
        transform = transform @ Affine.scale(factor)
    coords: list = []
    ring_starts: list[int] = []
    polygon_rings: list[int] = []
    # 4-connectivity: 8-connected pixel shapes produce rings that touch themselves (invalid polygons).
    for geom, _ in shapes(pixels.view(np.uint8), mask=pixels, transform=transform, connectivity=4):
        polygon_rings.append(len(geom["coordinates"]))
        for ring in geom["coordinates"]:
            ring_starts.append(len(coords))
            coords.extend(ring)
    if not coords:
        return [], np.empty(0), factor
    native = np.asarray(coords, dtype=np.float64)
    ends = [*ring_starts[1:], len(coords)]
    if grid.crs.is_geographic:
        # Native coordinates are lon/lat on the CRS's ellipsoid: the geodesic area of every ring.
        ring_area = np.array([abs(grid.geod.polygon_area_perimeter(native[a:b, 0], native[a:b, 1])[0])
                              for a, b in zip(ring_starts, ends, strict=True)])
        to_m2 = 1.0
    else:
        ring_area = np.abs(_ring_areas(native, np.asarray(ring_starts)))
        # Map units² -> ground m² (unit factor and areal scale, as for every other measure).
        to_m2 = float(grid.pixel_area(Window(0, 0, grid.width, grid.height))[0, 0]) / abs(grid.transform.determinant)
    lon, lat = grid.to_lonlat.transform(native[:, 0], native[:, 1])
    text = [f"[{x:.8f},{y:.8f}]" for x, y in zip(lon.tolist(), lat.tolist(), strict=True)]
    geometries, areas = [], []
    ring = 0
    for n_rings in polygon_rings:
        rings = ["[" + ",".join(text[ring_starts[r] : ends[r]]) + "]" for r in range(ring, ring + n_rings)]
        geometries.append('{"type": "Polygon", "coordinates": [' + ",".join(rings) + "]}")
        areas.append((ring_area[ring] - ring_area[ring + 1 : ring + n_rings].sum()) * to_m2)
        ring += n_rings
    return geometries, np.asarray(areas), factor


def write_geojson_features(dst: str | Path, layers: list[tuple[Mask, dict]]) -> dict[str, int]:
    """Stream the polygons of several masks into one RFC 7946 FeatureCollection (lon/lat WGS84).

    Returns the vectorising factor used per mask (1 = full resolution).
    """
    factors = {}
    with atomic_path(dst) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write('{"type": "FeatureCollection", "features": [')
        first = True
        for mask, properties in layers:
            geometries, areas, factor = mask_polygons(mask)
            factors[properties.get("step", mask.label)] = factor
            for geom, area in zip(geometries, areas, strict=True):
                props = json.dumps({**properties, "area_m2": round(float(area), 3)})
                out.write(("\n" if first else ",\n") + '{"type": "Feature", "properties": ' + props
                          + ', "geometry": ' + geom + "}")
                first = False
        out.write("\n]}\n")
    return factors
