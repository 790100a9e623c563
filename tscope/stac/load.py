"""Load STAC items onto an AOI grid with odc-stac, and turn them into scene COGs tscope reads.

Per scene (the items of one solar day that share a DN scaling) this reads only the AOI's pixels of
each COG asset (HTTP range requests), resamples reflectance and backscatter bilinearly and the
Sentinel-2 scene classification (SCL) with nearest neighbour, and keeps the stored integers: the
written COG carries each band's scale/offset, which :func:`tscope.geo.scene.open_scene` honours.

The Sentinel-2 L2A reflectance offset: from processing baseline 04.00 (2022-01-25) ESA stores
reflectance as ``(DN - 1000) / 10000``. Earth Search marks items whose DNs it already shifted back
with ``earthsearch:boa_offset_applied: true``; only items without that mark, on baseline >= 04.00,
get the -0.1 offset. It is applied exactly once, whatever ``raster:bands`` says besides.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from tscope.errors import InputError, RuntimeFailure
from tscope.geo.bands import COMMON_NAMES, SAR_NAMES, normalise_band_name
from tscope.geo.grid import BLOCK, Grid

S2_DEFAULT_BANDS = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
                    "swir16", "swir22", "scl")
SAR_DEFAULT_BANDS = ("vv", "vh")
CATEGORICAL = frozenset({"scl"})
SCL_CLOUD = (3, 8, 9, 10)  # cloud shadow, cloud medium / high probability, thin cirrus
L2A_BASELINE_OFFSET = -0.1  # -1000 DN at the 1e-4 scale
RESAMPLING = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode", "min", "max", "med")
_IMAGE_TYPES = ("image/tiff", "image/jp2", "image/vnd.stac.geotiff", "application/x-geotiff")


@dataclass(frozen=True)
class LoadOptions:
    """How items become pixels: the AOI grid (CRS, pixel size), bands, resampling, cloud masking.

    ``crs`` None: the CRS all items share, else the UTM zone of the AOI centre; ``resolution`` in CRS
    units (metres for UTM).
    ``bands`` None: every common name of :data:`S2_DEFAULT_BANDS` / :data:`SAR_DEFAULT_BANDS` found.
    """

    crs: str | None = None
    resolution: float = 10.0
    bands: tuple[str, ...] | None = None
    resampling: str = "bilinear"
    mask_clouds: bool = False
    clip: bool = True

    def __post_init__(self) -> None:
        if not self.resolution or self.resolution <= 0 or not math.isfinite(self.resolution):
            raise InputError("--resolution must be a positive number of CRS units")
        if self.resampling not in RESAMPLING:
            raise InputError(f"--resampling must be one of {', '.join(RESAMPLING)}")
        for name in self.bands or ():
            if name not in COMMON_NAMES:
                raise InputError(f"--bands: {name!r} is not a band common name ({', '.join(COMMON_NAMES)})")

    def to_dict(self) -> dict:
        return {"crs": self.crs, "resolution": self.resolution, "bands": list(self.bands) if self.bands else None,
                "resampling": self.resampling, "categorical_resampling": "nearest",
                "mask_clouds": self.mask_clouds, "clip": self.clip}


# --- assets and scaling ----------------------------------------------------------------------


def _asset_common_name(key: str, asset: Any) -> str | None:
    fields = asset.extra_fields
    bands = fields.get("eo:bands") or fields.get("bands") or []
    if len(bands) == 1:
        common = bands[0].get("common_name") or bands[0].get("eo:common_name")
        if common in COMMON_NAMES:
            return common
    for candidate in (key, key.split("_")[0], key.split("-")[0] if key.endswith("-cog") else key):
        common = normalise_band_name(candidate)
        if common:
            return common
    return None


def _resolution_of(key: str, asset: Any) -> float:
    fields = asset.extra_fields
    for rb in fields.get("raster:bands") or []:
        if rb.get("spatial_resolution"):
            return float(rb["spatial_resolution"])
    if fields.get("gsd"):
        return float(fields["gsd"])
    suffix = key.rsplit("_", 1)[-1]
    if suffix.endswith("m") and suffix[:-1].isdigit():
        return float(suffix[:-1])
    return math.inf


def item_bands(item: Any) -> dict[str, str]:
    """Common name -> asset key of an item's single-band image assets (finest, GeoTIFF first)."""
    best: dict[str, tuple[tuple, str]] = {}
    for key, asset in item.assets.items():
        media = (asset.media_type or "").lower()
        roles = asset.roles or ["data"]
        if "data" not in roles or (media and not media.startswith(_IMAGE_TYPES)):
            continue
        common = _asset_common_name(key, asset)
        if common is None:
            continue
        # Prefer GeoTIFF (range reads) over JPEG 2000, then the finest pixel, then the shortest key.
        rank = ("jp2" in media or key.endswith("jp2"), _resolution_of(key, asset), len(key), key)
        if common not in best or rank < best[common][0]:
            best[common] = (rank, key)
    return {name: key for name, (_, key) in best.items()}


def _baseline(item: Any) -> float | None:
    text = item.properties.get("s2:processing_baseline") or item.properties.get("processing:version")
    try:
        return float(text) if text is not None else None
    except (TypeError, ValueError):
        return None


def band_scaling(item: Any, asset_key: str, name: str) -> tuple[float, float]:
    """(scale, offset) turning the asset's stored numbers into reflectance (see the module docstring)."""
    if name in CATEGORICAL or name in SAR_NAMES:
        return 1.0, 0.0
    raster = (item.assets[asset_key].extra_fields.get("raster:bands") or [{}])[0]
    dtype = str(raster.get("data_type") or "uint16")
    if dtype.startswith("float"):
        return float(raster.get("scale", 1.0)), float(raster.get("offset", 0.0))
    scale = float(raster.get("scale", 1e-4))
    applied = item.properties.get("earthsearch:boa_offset_applied")
    baseline = _baseline(item)
    if applied is True:
        offset = 0.0
    elif baseline is not None and item.properties.get("s2:product_type", "S2MSI2A").endswith("2A"):
        offset = L2A_BASELINE_OFFSET if baseline >= 4.0 else 0.0
    else:
        offset = float(raster.get("offset", 0.0))
    return scale, offset


def _signature(item: Any, bands: dict[str, str]) -> tuple:
    return tuple(sorted((name, band_scaling(item, key, name)) for name, key in bands.items()))


def refuse_uncalibrated_sar(items: Sequence[Any]) -> None:
    """Sentinel-1 GRD as Earth Search serves it is uint16 amplitude, uncalibrated: reading it as
    backscatter would give wrong numbers with no warning (its ground-control-point location alone is
    handled, see :class:`GcpReader`). tscope reads calibrated backscatter (float), such as the
    Planetary Computer's RTC."""
    for item in items:
        sar = {n: k for n, k in item_bands(item).items() if n in SAR_NAMES}
        for key in sar.values():
            raster = (item.assets[key].extra_fields.get("raster:bands") or [{}])[0]
            dtype = str(raster.get("data_type") or "")
            grd = "grd" in (item.collection_id or "").lower()
            if grd or (dtype and not dtype.startswith(("float", "cfloat", "complex"))):
                raise InputError(
                    f"item {item.id} ({item.collection_id}) holds uncalibrated SAR amplitude ({dtype or 'GRD'}),"
                    " not backscatter: use a radiometrically terrain-corrected collection, e.g."
                    " --catalog planetary-computer --collection s1 (sentinel-1-rtc)")


# --- grids and grouping ----------------------------------------------------------------------


def utm_crs(lon: float, lat: float) -> str:
    """The WGS 84 / UTM zone EPSG code that Sentinel-2's MGRS tiles use at (lon, lat).

    The zone comes from pyproj's CRS database (the area of use of each UTM CRS); the MGRS grid then
    widens zone 32V over western Norway and replaces zones 32, 34 and 36 by 31, 33, 35 and 37 over
    Svalbard, which no CRS database encodes, so those two exceptions are applied here.
    """
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info

    lon = (lon + 180.0) % 360.0 - 180.0
    lat = max(-80.0, min(84.0, lat))
    found = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    north = lat >= 0
    codes = sorted(int(info.code) for info in found if (int(info.code) < 32700) == north)
    zone = (codes[0] % 100) if codes else min(60, int((lon + 180.0) // 6.0) + 1)
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    elif 72.0 <= lat <= 84.0 and 0.0 <= lon < 42.0:
        zone = 31 if lon < 9.0 else 33 if lon < 21.0 else 35 if lon < 33.0 else 37
    return f"EPSG:{(32600 if north else 32700) + zone}"


def items_crs(items: Sequence[Any]) -> str | None:
    """The CRS every item declares (``proj:code`` or ``proj:epsg``), if they all declare the same one."""
    codes = set()
    for item in items:
        props = item.properties
        code = props.get("proj:code") or (f"EPSG:{props['proj:epsg']}" if props.get("proj:epsg") else None)
        codes.add(code)
    if len(codes) == 1 and None not in codes:
        code = codes.pop()
        return None if code == "EPSG:4326" else code  # a geographic grid is no place to measure in metres
    return None


def aoi_grid(geometry: dict, options: LoadOptions, crs: str | None = None) -> Grid:
    """The AOI's pixel grid: its bounding box in ``options.crs`` (else ``crs``, else the UTM zone of
    the AOI centre) snapped to multiples of the pixel size."""
    from odc.geo.geom import Geometry

    from tscope.geo.grid import Grid
    from tscope.stac.search import geometry_bbox

    geom = Geometry(geometry, "EPSG:4326")
    minx, miny, maxx, maxy = geometry_bbox(geometry)
    lon = (minx + maxx) / 2 if minx <= maxx else (minx + maxx + 360.0) / 2  # across the antimeridian
    crs = options.crs or crs or utm_crs(lon, (miny + maxy) / 2)
    try:
        projected = geom.to_crs(crs)
    except Exception as exc:  # noqa: BLE001 - pyproj raises several types for a bad CRS
        raise InputError(f"--crs {crs!r}: {exc}") from None
    from odc.geo.geobox import GeoBox

    box = GeoBox.from_bbox(projected.boundingbox, crs=crs, resolution=options.resolution)
    if box.width * box.height > 20000 * 20000:
        raise InputError(f"the AOI grid would be {box.width} x {box.height} px: use a smaller AOI or --resolution")
    return Grid(crs=_rio_crs(crs), transform=box.transform, width=box.width, height=box.height)


def _rio_crs(crs: str) -> Any:
    from rasterio.crs import CRS

    return CRS.from_user_input(crs)


def solar_date(item: Any) -> str:
    """The local solar date of an item (UTC shifted by its longitude), as Sentinel-2 days are grouped."""
    from shapely.geometry import shape

    lon = shape(item.geometry).centroid.x if item.geometry else 0.0
    when = item.datetime or item.common_metadata.start_datetime
    return (when + timedelta(hours=lon / 15.0)).date().isoformat()


def group_items(items: Sequence[Any], names: Sequence[str] | None = None) -> list[list[Any]]:
    """Scenes: items of one solar day with one scaling, in (date, first id) order."""
    groups: dict[tuple, list[Any]] = {}
    for item in items:
        bands = item_bands(item)
        if names:
            bands = {n: k for n, k in bands.items() if n in names}
        groups.setdefault((solar_date(item), _signature(item, bands)), []).append(item)
    out = [sorted(g, key=lambda i: (i.datetime.isoformat() if i.datetime else "", i.id)) for g in groups.values()]
    return sorted(out, key=lambda g: (solar_date(g[0]), g[0].id))


def choose_bands(items: Sequence[Any], wanted: Sequence[str] | None) -> dict[str, str]:
    """Common name -> asset key, for the bands every item of a scene has."""
    per_item = [item_bands(i) for i in items]
    common = set(per_item[0])
    for bands in per_item[1:]:
        common &= set(bands)
    if wanted:
        missing = [n for n in wanted if n not in common]
        if missing:
            raise InputError(f"item {items[0].id} has no asset for {', '.join(missing)}"
                             f" (it has {', '.join(sorted(common)) or 'no image assets'})")
        names = list(wanted)
    else:
        defaults = SAR_DEFAULT_BANDS if common & SAR_NAMES else S2_DEFAULT_BANDS
        names = [n for n in defaults if n in common]
        if not names:
            names = sorted(common, key=COMMON_NAMES.index)
    if not names:
        raise RuntimeFailure(f"item {items[0].id} has no image asset tscope can name (assets:"
                             f" {', '.join(items[0].assets)})")
    keys = {per_item[0][n] for n in names}
    if any({b[n] for n in names} != keys for b in per_item[1:]):
        raise RuntimeFailure(f"items of {solar_date(items[0])} name their assets differently")
    return {n: per_item[0][n] for n in names}


# --- loading ---------------------------------------------------------------------------------


@dataclass
class LoadedScene:
    """One scene written on the AOI grid (``path``), with what the sidecar records about it."""

    path: Path
    names: list[str]
    grid: Grid
    nodata: float
    scales: list[float]
    offsets: list[float]
    items: list[Any]
    date: str
    cloud_percent: float | None
    nodata_percent: float
    dtype: str = "uint16"


def _stac_cfg(items: Sequence[Any], bands: dict[str, str]) -> dict:
    """Defaults odc-stac needs when items lack ``raster:bands`` (Sentinel-2: uint16 / uint8 SCL, nodata 0)."""
    cfg: dict[str, dict] = {}
    for item in items:
        assets = {}
        for name, key in bands.items():
            if item.assets[key].extra_fields.get("raster:bands"):
                continue
            if name in SAR_NAMES:
                assets[key] = {"data_type": "float32", "nodata": float("nan")}
            else:
                assets[key] = {"data_type": "uint8" if name in CATEGORICAL else "uint16", "nodata": 0}
        if assets and item.collection_id:
            cfg.setdefault(item.collection_id, {"assets": {}})["assets"].update(assets)
    return cfg


def write_scene(items: Sequence[Any], geometry: dict, grid: Grid, options: LoadOptions, gdal_options: dict[str, str],
                dst: Path, tags: dict[str, str] | None = None) -> LoadedScene:
    """Read ``items`` (one scene) onto ``grid`` and write them to ``dst`` as a COG, block by block.

    odc-stac loads lazily in :data:`BLOCK`-pixel chunks; each block of every band is read, masked
    (nodata, outside the AOI, clouds when asked) and written before the next is read, so memory
    holds one block whatever the AOI's size. Assets located by ground control points are read by
    :class:`GcpReader` instead, block by block too. Every read must succeed or this raises
    RuntimeFailure and writes nothing.
    """
    import rasterio
    from rasterio.warp import transform_geom

    bands = choose_bands(items, options.bands)
    names = list(bands)
    aoi = transform_geom("EPSG:4326", grid.crs, geometry) if options.clip else None
    scaling = [band_scaling(items[0], bands[n], n) for n in names]
    counts = {"valid": 0, "cloudy": 0, "kept": 0}
    try:
        # odc-stac captures this environment at load() and restores it in every chunk's read task.
        with rasterio.Env(**gdal_options), contextlib.ExitStack() as opened:
            reader = GcpReader.open(items, bands, grid, options, opened) or _OdcReader(items, bands, grid, options)
            float_out = any(n in SAR_NAMES for n in names) or any(reader.dtypes[n].kind == "f" for n in names)
            dtype = np.dtype(np.float32 if float_out else np.uint16)
            nodata = float("nan") if float_out else 0.0
            band_nodata = reader.nodata

            def blocks():
                for window in grid.windows(BLOCK):
                    arrays = reader.read(window)
                    inside = None
                    if aoi is not None:
                        inside = _inside(aoi, grid, window)
                    yield window, _mask_block(names, arrays, band_nodata, dtype, nodata, inside,
                                              options.mask_clouds, counts), None

            from tscope.geo.stack import write_blocks_cog

            write_blocks_cog(dst, grid, names, dtype, nodata, blocks(), scales=[sc for sc, _ in scaling],
                             offsets=[off for _, off in scaling], tags=tags)
    except (InputError, RuntimeFailure):
        raise
    except Exception as exc:  # noqa: BLE001 - odc-stac/rasterio raise many types; one clear line instead
        raise RuntimeFailure(f"reading {', '.join(i.id for i in items)} failed (unreachable, refused or"
                             f" truncated asset): {_first_line(exc)}") from exc
    pixels = grid.width * grid.height
    cloud_percent = None
    if "scl" in names:
        cloud_percent = round(100.0 * counts["cloudy"] / max(1, counts["valid"]), 4)
    return LoadedScene(
        path=dst, names=names, grid=grid, nodata=nodata, scales=[sc for sc, _ in scaling],
        offsets=[off for _, off in scaling], items=list(items), date=solar_date(items[0]),
        cloud_percent=cloud_percent, nodata_percent=round(100.0 * (1 - counts["kept"] / pixels), 4),
        dtype=str(dtype),
    )


class _OdcReader:
    """The scene's bands as odc-stac's lazy dataset on the grid, read one block at a time."""

    def __init__(self, items: Sequence[Any], bands: dict[str, str], grid: Grid, options: LoadOptions):
        import odc.stac
        from odc.geo.geobox import GeoBox

        box = GeoBox((grid.height, grid.width), grid.transform, grid.crs.to_wkt())
        resampling = {key: ("nearest" if name in CATEGORICAL else options.resampling) for name, key in bands.items()}
        self.bands = bands
        self.ds = odc.stac.load(
            list(items), bands=list(bands.values()), geobox=box, groupby=lambda item, parsed, idx: 0,
            resampling=resampling, chunks={"y": BLOCK, "x": BLOCK}, fail_on_error=True,
            stac_cfg=_stac_cfg(items, bands),
        )
        self.dtypes = {n: self.ds[key].dtype for n, key in bands.items()}
        self.nodata = {n: self.ds[key].attrs.get("nodata") for n, key in bands.items()}

    def read(self, window: Window) -> list[np.ndarray]:
        rows = slice(window.row_off, window.row_off + window.height)
        cols = slice(window.col_off, window.col_off + window.width)
        # One chunk of every band, read in this thread: odc-stac hands worker threads the GDAL options
        # but not S3 keys (its "session keys"), which only this thread's Env has.
        part = self.ds.isel(time=0, y=rows, x=cols).compute(scheduler="synchronous")
        return [np.asarray(part[key].values) for key in self.bands.values()]


class GcpReader:
    """The scene's bands warped by their ground control points onto the grid (tscope.geo.gcps).

    Sentinel-1 GRD files are located by GCPs, whatever ``proj:transform`` their items advertise;
    odc-stac cannot place them (its GCP fit fails on a regular grid of points), so when any asset of
    the scene is GCP-located every asset is read with GDAL's GCP transformer, one block at a time,
    the items mosaicked in order (the first valid pixel wins, as odc-stac's grouping does).
    """

    def __init__(self, sources: dict[str, list[Any]], grid: Grid, options: LoadOptions):
        self.sources = sources
        self.grid = grid
        self.resampling = {n: ("nearest" if n in CATEGORICAL else options.resampling) for n in sources}
        self.dtypes = {n: np.dtype(srcs[0].dtypes[0]) for n, srcs in sources.items()}
        self.nodata = {n: _nodata_of(srcs[0], self.dtypes[n]) for n, srcs in sources.items()}

    @classmethod
    def open(cls, items: Sequence[Any], bands: dict[str, str], grid: Grid, options: LoadOptions,
             opened: contextlib.ExitStack) -> GcpReader | None:
        """A reader when any asset to read is GCP-located, else None (the header of each asset is
        read once; GDAL's /vsicurl/ cache serves it again to odc-stac)."""
        import rasterio

        from tscope.geo.gcps import located_by_gcps
        from tscope.geo.remote import gdal_path

        sources = {name: [opened.enter_context(rasterio.open(gdal_path(item.assets[key].href))) for item in items]
                   for name, key in bands.items()}
        if not any(located_by_gcps(src) for srcs in sources.values() for src in srcs):
            return None
        return cls(sources, grid, options)

    def read(self, window: Window) -> list[np.ndarray]:
        from rasterio.enums import Resampling

        from tscope.geo.gcps import read_window

        arrays = []
        for name, srcs in self.sources.items():
            nodata = self.nodata[name]
            out, filled = None, None
            for src in srcs:
                block, valid = read_window(src, [1], self.grid, window, Resampling[self.resampling[name]], nodata)
                if out is None:
                    out, filled = block[0], valid
                else:
                    out = np.where(filled, out, block[0])
                    filled |= valid
            arrays.append(out)
        return arrays


def _nodata_of(src: Any, dtype: np.dtype) -> float:
    """The asset's nodata, else what odc-stac assumes for these items (NaN for floats, 0 for integers)."""
    if src.nodata is not None:
        return float(src.nodata)
    return float("nan") if dtype.kind == "f" else 0.0


def _mask_block(names: list[str], arrays: list[np.ndarray], band_nodata: dict[str, Any], dtype: np.dtype,
                nodata: float, inside: np.ndarray | None, mask_clouds: bool, counts: dict[str, int]) -> np.ndarray:
    """One block of every band -> (bands, rows, cols) in ``dtype`` with ``nodata`` wherever a pixel is
    invalid (any non-categorical band's nodata, outside the AOI, or, with ``mask_clouds``, an SCL cloud
    class). Adds the block's valid, cloudy and kept pixels to ``counts``."""
    shape = arrays[0].shape
    stack = np.empty((len(names), *shape), dtype=dtype)
    valid = np.ones(shape, dtype=bool)
    for i, (name, array) in enumerate(zip(names, arrays, strict=True)):
        band_valid = np.isfinite(array) if array.dtype.kind == "f" else np.ones(shape, bool)
        marker = band_nodata[name]
        if marker is not None and not (isinstance(marker, float) and math.isnan(marker)):
            band_valid &= array != marker
        if name not in CATEGORICAL:
            valid &= band_valid
        stack[i] = np.where(band_valid, array.astype(dtype, copy=False), dtype.type(nodata))
    if inside is not None:
        valid &= inside
    counts["valid"] += int(np.count_nonzero(valid))
    if "scl" in names:
        cloudy = np.isin(stack[names.index("scl")], SCL_CLOUD) & valid
        counts["cloudy"] += int(np.count_nonzero(cloudy))
        if mask_clouds:
            valid &= ~cloudy
    counts["kept"] += int(np.count_nonzero(valid))
    stack[:, ~valid] = dtype.type(nodata)
    return stack


def _inside(aoi: dict, grid: Grid, window: Window) -> np.ndarray:
    """Pixels of ``window`` whose centre falls in the AOI polygon (``aoi`` already in the grid's CRS)."""
    from rasterio.features import geometry_mask
    from rasterio.windows import transform as window_transform

    return geometry_mask([aoi], out_shape=(window.height, window.width),
                         transform=window_transform(window, grid.transform), invert=True)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
