"""Scene inputs that are not local files: what rasterio opens by name, and STAC items.

``tscope ask`` takes what ``rio`` takes: local files, ``http(s)://`` and ``s3://`` URLs and GDAL
``/vsi*`` paths, which are handed to rasterio as they are (never through ``pathlib``, which folds
``https://`` into ``https:/``). It also takes a STAC Item, as a JSON file or a URL: the item's image
assets are named by common name (``eo:bands``, else the asset key) and stacked into a GDAL VRT on
the grid of its finest asset, with each band's scale and offset from ``raster:bands`` and the
Sentinel-2 processing-baseline rule of ``fetch``; only the windows a question needs are then read.
Assets located by ground control points (one set shared by all, as Sentinel-1's polarisations share
theirs) give a VRT located by those GCPs, which the scene then warps (:mod:`tscope.geo.gcps`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from tscope.errors import InputError

_URL = re.compile(r"^(https?|s3|gs|az|azure)://", re.IGNORECASE)
_GDAL_PREFIX = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/",
                "azure": "/vsiaz/"}
_VRT_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
              "float32": "Float32", "float64": "Float64"}


class Source(str):
    """A raster named as rasterio opens it (a URL, a ``/vsi`` path or VRT XML), with ``name`` and
    ``stem`` like :class:`pathlib.Path` for messages and output names, and ``display``: what the user
    gave (the URL, or the STAC item's file or URL)."""

    display: str

    def __new__(cls, text: str, display: str | None = None) -> Source:
        obj = super().__new__(cls, text)
        obj.display = display or text
        return obj

    @property
    def name(self) -> str:
        return self.display.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else self.name

    def exists(self) -> bool:
        return True


def is_remote(text: str) -> bool:
    return bool(_URL.match(text)) or text.startswith("/vsi")


def gdal_path(href: str) -> str:
    """A GDAL filename for an asset href: ``/vsicurl/`` for http(s), ``/vsis3/`` for s3, as is otherwise."""
    match = _URL.match(href)
    if not match:
        return href
    return _GDAL_PREFIX[match.group(1).lower()] + (href if match.group(1).lower().startswith("http")
                                                   else href[match.end():])


def looks_like_item(text: str) -> bool:
    """A STAC Item by its name: a .json file or URL, or an API's ``/items/<id>`` URL."""
    plain = text.split("?", 1)[0]
    return plain.lower().endswith(".json") or bool(_URL.match(text) and "/items/" in plain)


def resolve(path: str | Path, policy: Any = None) -> Path | Source:
    """What to open for a scene argument: a local Path, a remote :class:`Source`, or a STAC item's VRT."""
    text = str(path)
    if looks_like_item(text):
        return item_vrt(load_item(text, policy), text)
    if is_remote(text):
        return Source(text)
    return Path(path)


def load_item(href: str, policy: Any = None) -> Any:
    """The pystac Item at ``href`` (a file or URL), asset hrefs made absolute."""
    import pystac

    from tscope.stac.search import pystac_warnings_logged

    if not _URL.match(href):
        file = Path(href)
        if not file.is_file():
            raise InputError(f"{href}: no such file")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{href}: not a STAC item ({type(exc).__name__})") from None
        if not isinstance(data, dict) or data.get("type") != "Feature" or "assets" not in data:
            raise InputError(f"{href}: not a STAC item (a GeoJSON Feature with assets)")
        with pystac_warnings_logged():
            item = pystac.Item.from_dict(data)
        item.set_self_href(str(file.absolute()))
    else:
        from tscope.stac.http import NetworkPolicy, call_with_policy, stac_api_io

        policy = policy or NetworkPolicy()
        try:
            stac_io = stac_api_io(policy)
        except ImportError:
            raise InputError("reading a STAC item by URL needs pystac-client: pip install 'tscope[stac]'") from None
        with pystac_warnings_logged():
            item = call_with_policy(lambda: pystac.Item.from_file(href, stac_io=stac_io), f"reading {href}", policy)
    item.make_asset_hrefs_absolute()
    return item


def item_vrt(item: Any, display: str) -> Source:
    """A VRT (XML, opened in memory) of the item's image assets by common name, on its finest grid."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from tscope.geo.gcps import located_by_gcps
    from tscope.stac.load import S2_DEFAULT_BANDS, SAR_DEFAULT_BANDS, item_bands, refuse_uncalibrated_sar

    bands = item_bands(item)
    if not bands:
        raise InputError(f"{display}: the STAC item has no image asset tscope can name"
                         f" (assets: {', '.join(item.assets)})")
    refuse_uncalibrated_sar([item])
    names = [n for n in (SAR_DEFAULT_BANDS if set(bands) & set(SAR_DEFAULT_BANDS) else S2_DEFAULT_BANDS)
             if n in bands] or sorted(bands)
    sources, gcps = {}, {}
    for name in names:
        href = gdal_path(item.assets[bands[name]].href)
        try:
            with rasterio.open(href) as src:
                sources[name] = (href, src.crs, src.transform, src.width, src.height, src.dtypes[0], src.nodata)
                if located_by_gcps(src):
                    gcps[name] = (src.width, src.height, tuple((p.row, p.col, p.x, p.y, p.z) for p in src.gcps[0]),
                                  src.gcps[1])
        except RasterioIOError as exc:
            raise InputError(f"{display}: asset {bands[name]} cannot be read ({' '.join(str(exc).split())[:200]})") \
                from None
    if gcps:
        return _gcp_vrt(item, display, names, bands, sources, gcps)
    crs = {s[1] for s in sources.values()}
    if len(crs) != 1 or None in crs:
        raise InputError(f"{display}: the item's assets are on different CRSs; fetch it onto one grid with"
                         " `tscope fetch` first")
    finest = min(sources.values(), key=lambda s: abs(s[2].a))
    _, grid_crs, transform, width, height, _, _ = finest
    georeference = (f"<SRS>{escape(grid_crs.to_wkt())}</SRS>"
                    f"<GeoTransform>{', '.join(repr(float(v)) for v in transform.to_gdal())}</GeoTransform>")
    return _vrt(item, display, names, bands, sources, width, height, transform, georeference)


def _gcp_vrt(item: Any, display: str, names: list[str], bands: dict[str, str], sources: dict[str, tuple],
             gcps: dict[str, tuple]) -> Source:
    """The VRT of an item whose assets are located by one shared set of GCPs: the same pixels, placed
    by those GCPs (no geotransform)."""
    from affine import Affine

    if len(gcps) != len(names) or len({g[:3] for g in gcps.values()}) != 1:
        raise InputError(f"{display}: the item's assets are not all located by the same ground control points;"
                         " fetch it onto one grid with `tscope fetch` first")
    width, height, points, crs = next(iter(gcps.values()))
    projection = f' Projection="{escape(crs.to_wkt(), {chr(34): "&quot;"})}"' if crs is not None else ""
    georeference = (f"<GCPList{projection}>"
                    + "".join(f'<GCP Id="{i}" Pixel="{col!r}" Line="{row!r}" X="{x!r}" Y="{y!r}" Z="{z or 0.0!r}"/>'
                              for i, (row, col, x, y, z) in enumerate(points, start=1))
                    + "</GCPList>")
    return _vrt(item, display, names, bands, sources, width, height, Affine.identity(), georeference)


def _vrt(item: Any, display: str, names: list[str], bands: dict[str, str], sources: dict[str, tuple], width: int,
         height: int, transform: Any, georeference: str) -> Source:
    from tscope.stac.load import CATEGORICAL, band_scaling

    floats = any(s[5].startswith("float") for s in sources.values())
    dtype = "Float32" if floats else "UInt16"
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">', georeference, _time_metadata(item)]
    for index, name in enumerate(names, start=1):
        href, _, src_transform, src_w, src_h, _, nodata = sources[name]
        scale, offset = band_scaling(item, bands[name], name)
        col = (src_transform.c - transform.c) / transform.a
        row = (src_transform.f - transform.f) / transform.e
        dst_w = src_w * src_transform.a / transform.a
        dst_h = src_h * src_transform.e / transform.e
        resampling = "nearest" if name in CATEGORICAL else "bilinear"
        nodata_xml = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else ""
        parts.append(
            f'<VRTRasterBand dataType="{dtype}" band="{index}"><Description>{name}</Description>{nodata_xml}'
            f"<Offset>{offset!r}</Offset><Scale>{scale!r}</Scale>"
            f'<ComplexSource resampling="{resampling}"><SourceFilename relativeToVRT="0">{escape(href)}'
            f"</SourceFilename><SourceBand>1</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{src_w}" ySize="{src_h}"/>'
            f'<DstRect xOff="{col!r}" yOff="{row!r}" xSize="{dst_w!r}" ySize="{dst_h!r}"/>'
            + (f"<NODATA>{nodata!r}</NODATA>" if nodata is not None else "")
            + "</ComplexSource></VRTRasterBand>")
    parts.append("</VRTDataset>")
    return Source("".join(parts), display=display)


def _time_metadata(item: Any) -> str:
    """The item's acquisition time as VRT metadata (``STAC_DATETIME``, ``STAC_START_DATETIME``,
    ``STAC_END_DATETIME``), so the answer's record carries it (tscope.stac.acquired)."""
    from datetime import UTC

    common = item.common_metadata
    stamps = {"STAC_DATETIME": item.datetime, "STAC_START_DATETIME": common.start_datetime,
              "STAC_END_DATETIME": common.end_datetime}
    entries = "".join(f'<MDI key="{key}">{when.astimezone(UTC).isoformat()}</MDI>'
                      for key, when in stamps.items() if when is not None)
    return f"<Metadata>{entries}</Metadata>" if entries else ""


def record_path(path: str | Path, base: Path, root: Path | None = None) -> str:
    """How an output folder records ``path``: relative to ``base`` (the folder the record is in) when
    ``path`` lies inside ``root`` (default ``base``), so the folder can be moved or shared; absolute
    when it lies outside; URLs, ``/vsi`` paths and STAC item URLs as given."""
    text = getattr(path, "display", str(path))
    if is_remote(text):
        return text
    target = os.path.abspath(text)
    base_abs = os.path.abspath(base)
    root_abs = os.path.abspath(root if root is not None else base)
    if os.path.commonpath([target, root_abs]) == root_abs:
        return Path(os.path.relpath(target, base_abs)).as_posix()
    return target
