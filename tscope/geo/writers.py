"""Writers for masks: Cloud-Optimised GeoTIFFs and GeoJSON polygons, always written atomically.

Every file goes to a temporary name in its destination folder and is renamed into place only when
complete, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.features import shapes
from rasterio.io import MemoryFile
from shapely import geometry, make_valid, ops

from tscope.geo.mask import Mask

MASK_NODATA = 255


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


def write_text(dst: str | Path, text: str) -> Path:
    with atomic_path(dst) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dst)


def write_json(dst: str | Path, obj: object) -> Path:
    return write_text(dst, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n")


def mask_to_uint8(mask: Mask) -> np.ndarray:
    """1 = class, 0 = not the class, 255 = nodata/cloud (written as the GeoTIFF's nodata)."""
    out = mask.data.astype(np.uint8)
    out[~mask.valid] = MASK_NODATA
    return out


def write_cog(dst: str | Path, array: np.ndarray, mask: Mask, nodata: float = MASK_NODATA,
              description: str | None = None) -> Path:
    """Write a single-band array on ``mask.grid`` as a COG (deflate, internal overviews by mode)."""
    grid = mask.grid
    profile = dict(
        driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=array.dtype,
        crs=rasterio.crs.CRS.from_wkt(grid.crs.to_wkt()), transform=grid.transform, nodata=nodata,
        tiled=True, blockxsize=512, blockysize=512, compress="deflate",
    )
    with MemoryFile() as memfile:
        with memfile.open(**profile) as tmp:
            tmp.write(array, 1)
            if description:
                tmp.set_band_description(1, description)
            tmp.update_tags(1, CLASS=mask.label, FRAME=mask.frame)
        with memfile.open() as src, atomic_path(dst) as out:
            rasterio.shutil.copy(
                src, out, driver="COG", compress="DEFLATE", overview_resampling="mode",
                blocksize=512, num_threads="ALL_CPUS",
            )
    return Path(dst)


def write_mask_cog(dst: str | Path, mask: Mask) -> Path:
    return write_cog(dst, mask_to_uint8(mask), mask, description=mask.label)


def mask_features(mask: Mask, properties: dict) -> list[dict]:
    """Polygons of the class in EPSG:4326 (RFC 7946), each with its geodesic ``area_m2``."""
    grid = mask.grid
    pixels = mask.counted
    if not pixels.any():
        return []
    to_wgs84 = grid.to_lonlat
    features = []
    # 4-connectivity: 8-connected pixel shapes produce rings that touch themselves (invalid polygons).
    for geom, _ in shapes(pixels.view(np.uint8), mask=pixels, transform=grid.transform, connectivity=4):
        poly = ops.transform(to_wgs84.transform, geometry.shape(geom))
        if not poly.is_valid:
            poly = make_valid(poly)
        area, _ = grid.geod.geometry_area_perimeter(poly)
        features.append({
            "type": "Feature",
            "properties": {**properties, "area_m2": round(abs(area), 3)},
            "geometry": geometry.mapping(poly),
        })
    return features


def write_geojson(dst: str | Path, features: list[dict]) -> Path:
    return write_json(dst, {"type": "FeatureCollection", "features": features})
