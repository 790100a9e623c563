"""Reading vector files (AOIs, footprints) into lon/lat WGS84, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tscope.errors import InputError


def read_vector_wgs84(path: str | Path, what: str = "") -> Any:
    """A non-empty GeoDataFrame in EPSG:4326 (files without a CRS are taken as lon/lat, as in GeoJSON).

    ``what`` prefixes error messages (e.g. ``"--aoi "``).
    """
    import geopandas as gpd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}{path}: no such file")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - pyogrio raises several types for unreadable files
        raise InputError(f"{what}{path}: not a vector file ({exc})") from None
    if frame.empty:
        raise InputError(f"{what}{path} holds no geometry")
    return (frame.set_crs("EPSG:4326") if frame.crs is None else frame).to_crs("EPSG:4326")
