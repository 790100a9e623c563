"""Rasters located by ground control points (GCPs) instead of a geotransform, as Sentinel-1 GRD files are.

Such a file's pixels are placed on the ground by a transformer GDAL fits to its GCPs: here a thin-plate
spline through every point (GDAL's ``GCP_TPS``), which honours each GCP exactly, where a global
polynomial (GDAL's default) only approximates them. The pixels are read with :func:`rasterio.warp.reproject`
on the file's own dataset, whose transformer GDAL builds from the GCPs: rasterio's ``WarpedVRT``
given a destination grid builds its transformer from the geotransform alone (the identity here) and
would return nodata everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from tscope.errors import InputError
from tscope.geo.grid import Grid

TRANSFORMER = {"SRC_METHOD": "GCP_TPS"}


def located_by_gcps(src: rasterio.DatasetReader) -> bool:
    """No CRS and no geotransform, but GCPs: the file is placed by its GCPs alone."""
    return src.crs is None and src.transform.is_identity and len(src.gcps[0]) >= 3


def native_grid(src: rasterio.DatasetReader, assumed: CRS | None, label: str) -> Grid:
    """The north-up grid GDAL suggests for the file warped by its GCPs: in the GCPs' CRS when it is
    projected, else (Sentinel-1's are longitude/latitude) in the UTM zone of the GCPs' centre, so the
    pixels are square on the ground, as on the grids ``fetch`` writes."""
    from tscope.stac.load import utm_crs

    points, crs = src.gcps
    crs = crs or assumed  # --assume-crs names the GCPs' CRS when the file does not
    if crs is None:
        raise InputError(f"{label}: its ground control points have no CRS; pass --assume-crs EPSG:XXXX")
    target = crs
    if crs.is_geographic:
        lon = float(np.mean([p.x for p in points]))
        lat = float(np.mean([p.y for p in points]))
        target = CRS.from_user_input(utm_crs(lon, lat))
    transform, width, height = calculate_default_transform(crs, target, src.width, src.height, gcps=points,
                                                           **TRANSFORMER)
    return Grid(crs=target, transform=transform, width=int(width), height=int(height))


def read_window(src: rasterio.DatasetReader, indexes: Sequence[int], grid: Grid, window: Window,
                resampling: Resampling, nodata: float | None, crs: CRS | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bands ``indexes`` of ``src`` warped by its GCPs onto ``window`` of ``grid``; ``crs`` names the
    GCPs' CRS when the file does not (--assume-crs).

    Returns ``(bands, rows, cols)`` in the file's data type, ``nodata`` (else 0 or NaN) where no valid
    source pixel lands, and the ``(rows, cols)`` mask of pixels valid in every band. The warp works in
    float64 with NaN as its own fill, so pixels outside the file are told apart from any stored value.
    """
    shape = (len(indexes), int(window.height), int(window.width))
    work = np.full(shape, np.nan, dtype=np.complex128 if np.dtype(src.dtypes[0]).kind == "c" else np.float64)
    reproject(rasterio.band(src, list(indexes)), work, src_nodata=nodata, dst_nodata=np.nan,
              dst_crs=grid.crs, dst_transform=window_transform(window, grid.transform),
              resampling=resampling, init_dest_nodata=True, **TRANSFORMER,
              **({"SRC_SRS": crs.to_string()} if crs is not None and src.gcps[1] is None else {}))
    valid = np.all(np.isfinite(work), axis=0)
    dtype = np.dtype(src.dtypes[indexes[0] - 1])
    fill = nodata if nodata is not None else (np.nan if dtype.kind in "fc" else 0)
    return np.where(valid, work, fill).astype(dtype), valid

