"""STAC records of what tscope writes, so existing STAC tools can index and browse them.

``scene_item``: the Item beside each fetched COG (``OUT/<scene>.json``), with the projection, raster
(scale/offset/nodata per band), eo (band common names) and file extensions, and ``derived_from``
links to the source items. ``answer_item``: the Item of an ``ask`` output folder (``item.json``),
with the masks as assets (roles ``data`` and ``mask``), the report, the quicklooks and the vectors.
``item_collection``: the ItemCollection ``fetch --list --json`` prints. Asset hrefs are relative to
the Item's folder, so an output folder can be moved or shared whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tscope import __version__
from tscope.stac.acquired import acquisition

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
_DTYPES = {"uint8": "uint8", "uint16": "uint16", "int16": "int16", "float32": "float32", "float64": "float64"}


def _file_fields(asset: Any, path: Path) -> None:
    """file:size and file:checksum (a sha2-256 multihash) of the asset's file."""
    from pystac.extensions.file import FileExtension

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    ext = FileExtension.ext(asset, add_if_missing=True)
    ext.size = path.stat().st_size
    ext.checksum = "1220" + digest.hexdigest()


def _projection(target: Any, grid: Any) -> None:
    from pystac.extensions.projection import ProjectionExtension

    ext = ProjectionExtension.ext(target, add_if_missing=True)
    epsg = grid.crs.to_epsg()
    if epsg:
        ext.code = f"EPSG:{epsg}"
    else:
        ext.code = None
        ext.wkt2 = grid.crs.to_wkt()
    ext.shape = [grid.height, grid.width]
    ext.transform = [float(v) for v in list(grid.transform)[:6]]
    ext.bbox = [float(v) for v in grid.bounds]


def _footprint(grid: Any) -> dict:
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping

    outline = box(*grid.bounds)
    outline = outline.segmentize(max(outline.bounds[2] - outline.bounds[0], outline.bounds[3] - outline.bounds[1]) / 20)
    return dict(transform_geom(grid.crs, "EPSG:4326", mapping(outline)))


def _bbox(geometry: dict) -> list[float]:
    from tscope.stac.search import geometry_bbox

    return [float(v) for v in geometry_bbox(geometry)]


def scene_item(scene: Any, sources: Sequence[Any], geometry: dict, properties: dict, catalog_url: str) -> Any:
    """The STAC Item of one fetched scene COG (``scene`` is a :class:`tscope.stac.load.LoadedScene`)."""
    import pystac
    from pystac.extensions.eo import Band, EOExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    first = sources[0]
    when = first.datetime or first.common_metadata.start_datetime
    props = {k: first.properties[k] for k in ("platform", "constellation", "instruments", "sar:polarizations")
             if k in first.properties}
    props |= {f"tscope:{k}": v for k, v in properties.items()} | {"tscope:version": __version__}
    if len(sources) > 1:
        stamps = sorted(i.datetime or i.common_metadata.start_datetime for i in sources)
        props |= {"start_datetime": _stamp(stamps[0]), "end_datetime": _stamp(stamps[-1])}
    item = pystac.Item(id=scene.path.stem, geometry=geometry, bbox=_bbox(geometry), datetime=when,
                       properties=props, collection=None)
    _projection(item, scene.grid)
    asset = pystac.Asset(href=f"./{scene.path.name}", media_type=COG, roles=["data"],
                         title=f"{', '.join(scene.names)} on the AOI grid")
    item.add_asset("data", asset)
    nodata = None if scene.nodata != scene.nodata else scene.nodata
    dtype = DataType(_DTYPES.get(str(scene.dtype), str(scene.dtype)))
    RasterExtension.ext(asset, add_if_missing=True).bands = [
        RasterBand.create(nodata=nodata if nodata is not None else "nan", data_type=dtype,
                          spatial_resolution=abs(scene.grid.transform.a), scale=scale, offset=offset)
        for scale, offset in zip(scene.scales, scene.offsets, strict=True)
    ]
    EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=n, common_name=_common(n))
                                                         for n in scene.names]
    _file_fields(asset, scene.path)
    for source in sources:
        href = source.get_self_href() or (f"{catalog_url.rstrip('/')}/collections/{source.collection_id}"
                                          f"/items/{source.id}")
        item.add_link(pystac.Link("derived_from", href, media_type="application/geo+json", title=source.id))
    return item


def _common(name: str) -> str | None:
    from tscope.geo.bands import COMMON_NAMES

    return name if name in COMMON_NAMES and name not in ("scl",) else None


def answer_item(trace: Any, scenes: Sequence[Any], out: Path, inputs: Sequence[str]) -> Any:
    """The STAC Item of an ``ask`` output folder: masks, vectors, quicklooks and report as assets."""
    import pystac
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    grid = scenes[0].grid
    # A plain image (no CRS) is an Item without geometry, as STAC allows.
    geometry = _footprint(grid) if grid.crs is not None else None
    acquired = [acquisition(s.tags, s.path) for s in scenes]
    props: dict[str, Any] = {"tscope:question": trace.question, "tscope:answer": trace.answer,
                             "tscope:task": trace.query.task, "tscope:backend": trace.backend,
                             "tscope:version": __version__,
                             "tscope:numbers": {k: {"value": v.value, "unit": v.unit}
                                                for k, v in trace.numbers.items()}}
    props["tscope:acquisition_source"] = {s.frame: a.source for s, a in zip(scenes, acquired, strict=True)}
    when = acquired[0].when if len(acquired) == 1 else None
    start, end = min(a.start for a in acquired), max(a.end for a in acquired)
    if when is None or start != end:
        # An interval, or nothing known: STAC's way is datetime null with start and end (see docs/outputs.md).
        props |= {"start_datetime": _stamp(start), "end_datetime": _stamp(end)}
    item = pystac.Item(id=out.name or "answer", geometry=geometry, bbox=_bbox(geometry) if geometry else None,
                       datetime=when, properties=props)
    if grid.crs is not None:
        _projection(item, grid)
    item.add_asset("answer", pystac.Asset("./answer.json", media_type="application/json", roles=["metadata"],
                                          title="The Trace: question, steps, numbers"))
    item.add_asset("report", pystac.Asset("./answer.md", media_type="text/markdown", roles=["metadata"],
                                          title="Report"))
    item.add_asset("masks_vector", pystac.Asset("./masks.geojson", media_type="application/geo+json",
                                                roles=["data"], title="Mask polygons (WGS 84)"))
    for name in (trace.outputs.get("quicklook") or "").split(","):
        if name:
            item.add_asset(Path(name).stem, pystac.Asset(f"./{name}", media_type="image/png",
                                                         roles=["overview", "visual"], title="Quicklook"))
    for mask_id, mask in trace.masks.items():
        rel = trace.outputs.get(f"mask:{mask_id}")
        if not rel:
            continue
        asset = pystac.Asset(f"./{rel}", media_type=COG, roles=["data", "mask"],
                             title=f"{mask.label} ({mask.frame}): 1 = class, 0 = not, 255 = nodata or cloud")
        asset.extra_fields["tscope:class"] = mask.label
        asset.extra_fields["tscope:frame"] = mask.frame
        item.add_asset(f"mask_{mask_id}", asset)
        RasterExtension.ext(asset, add_if_missing=True).bands = [
            RasterBand.create(nodata=255, data_type=DataType.UINT8, spatial_resolution=abs(mask.grid.transform.a))]
        _file_fields(asset, out / rel)
    for href in inputs:
        item.add_link(pystac.Link("derived_from", href, media_type="image/tiff", title="input scene"))
    return item


def _stamp(when: datetime) -> str:
    """RFC 3339 in UTC with a Z, as pystac writes ``datetime`` (the year zero-padded: 0001)."""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def item_collection(items: Sequence[Any]) -> dict:
    """The ItemCollection of search results, as stac-client's ``search --json`` prints it."""
    import pystac

    return pystac.ItemCollection(items).to_dict(transform_hrefs=False)
