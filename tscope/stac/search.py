"""Item search with pystac-client: AOI + time range + cloud filter -> items in a stable order."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tscope.errors import InputError, RuntimeFailure
from tscope.stac.catalogs import Catalog, item_modifier, resolve_catalog
from tscope.stac.http import NetworkPolicy, call_with_policy, stac_api_io

log = logging.getLogger("tscope")
MAX_ITEMS = 500


@dataclass(frozen=True)
class SearchRequest:
    """What to search: ``geometry`` is a GeoJSON geometry in EPSG:4326 (the AOI, or its bbox)."""

    geometry: dict
    datetime: str
    catalog: str = "earth-search"
    collection: str = "s2-l2a"
    max_cloud: float | None = None
    max_items: int = MAX_ITEMS
    page_size: int = 100

    def __post_init__(self) -> None:
        parse_datetime(self.datetime)
        if self.max_cloud is not None and not 0 <= self.max_cloud <= 100:
            raise InputError("--max-cloud must be a percentage between 0 and 100")
        if self.max_items < 1:
            raise InputError("--max-items must be at least 1")

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        from shapely.geometry import shape

        return tuple(float(v) for v in shape(self.geometry).bounds)  # type: ignore[return-value]

    def to_dict(self) -> dict:
        cat = resolve_catalog(self.catalog)
        return {"catalog": cat.name, "catalog_url": cat.url, "collection": cat.collection_id(self.collection),
                "bbox": [round(v, 9) for v in self.bbox], "intersects": self.geometry, "datetime": self.datetime,
                "max_cloud": self.max_cloud, "max_items": self.max_items}


_DATE = r"\d{4}-\d{2}-\d{2}(?:[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?)?"


def parse_datetime(text: str) -> str:
    """Check a STAC datetime: ``DATE``, ``START/END``, with ``..`` for an open end (ISO 8601)."""
    parts = (text or "").strip().split("/")
    if not 1 <= len(parts) <= 2 or not all(re.fullmatch(_DATE, p) or (p == ".." and len(parts) == 2)
                                           for p in parts):
        raise InputError(f"--datetime {text!r}: give START/END in ISO 8601, e.g. 2023-06-01/2023-08-31")
    try:
        stamps = [datetime.fromisoformat(p.replace("Z", "+00:00")) for p in parts if p != ".."]
    except ValueError as exc:
        raise InputError(f"--datetime {text!r}: {exc}") from None
    if len(stamps) == 2 and stamps[0].replace(tzinfo=None) > stamps[1].replace(tzinfo=None):
        raise InputError(f"--datetime {text!r}: the start is after the end")
    return text.strip()


def bbox_geometry(bbox: tuple[float, float, float, float], bbox_crs: str = "EPSG:4326") -> dict:
    """A bbox (in ``bbox_crs``) as a GeoJSON polygon in EPSG:4326."""
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping

    minx, miny, maxx, maxy = bbox
    if minx >= maxx or miny >= maxy:
        raise InputError("--bbox must be MINX MINY MAXX MAXY with MINX < MAXX and MINY < MAXY")
    geom = mapping(box(minx, miny, maxx, maxy))
    if bbox_crs.upper() not in ("EPSG:4326", "OGC:CRS84"):
        try:
            geom = transform_geom(bbox_crs, "EPSG:4326", geom, densify_pts=21)
        except Exception:  # noqa: BLE001 - rasterio raises several types for a bad CRS
            raise InputError(f"--bbox-crs {bbox_crs!r} is not a CRS") from None
    elif not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90):
        raise InputError("--bbox is not in longitude/latitude: pass --bbox-crs for projected coordinates")
    return dict(geom)


def open_client(catalog: Catalog, policy: NetworkPolicy) -> Any:
    from pystac_client import Client

    modifier = item_modifier(catalog)
    return call_with_policy(lambda: Client.open(catalog.url, stac_io=stac_api_io(policy), modifier=modifier,
                                                        timeout=(policy.connect_timeout, policy.timeout)),
                            f"opening the STAC API {catalog.url}", policy)


def search(request: SearchRequest, policy: NetworkPolicy | None = None) -> list[Any]:
    """Items matching ``request``, sorted by (datetime, id); RuntimeFailure when none match."""
    policy = policy or NetworkPolicy()
    catalog = resolve_catalog(request.catalog)
    collection = catalog.collection_id(request.collection)
    client = open_client(catalog, policy)
    kwargs: dict[str, Any] = dict(collections=[collection], intersects=request.geometry, datetime=request.datetime,
                                  max_items=request.max_items, limit=request.page_size)
    # The API filters by cloud where it can (the query extension); we always filter again below.
    from pystac_client import ConformanceClasses

    if request.max_cloud is not None and client.conforms_to(ConformanceClasses.QUERY):
        kwargs["query"] = {"eo:cloud_cover": {"lte": request.max_cloud}}

    def run() -> list[Any]:
        return list(client.search(**kwargs).items())

    items = call_with_policy(run, f"searching {collection} at {catalog.url}", policy)
    if request.max_cloud is not None:
        items = [i for i in items if _cloud(i) is None or _cloud(i) <= request.max_cloud]
    items.sort(key=lambda i: (i.datetime.isoformat() if i.datetime else "", i.id))
    if not items:
        cloud = f", cloud cover <= {request.max_cloud:g}%" if request.max_cloud is not None else ""
        raise RuntimeFailure(f"no {collection} items at {catalog.name} for bbox"
                             f" {', '.join(f'{v:.5f}' for v in request.bbox)}, {request.datetime}{cloud}:"
                             " widen --datetime or the AOI, or raise --max-cloud")
    log.info("%d %s item(s) found", len(items), collection)
    return items


def _cloud(item: Any) -> float | None:
    value = item.properties.get("eo:cloud_cover")
    return float(value) if value is not None else None


def item_summary(item: Any) -> dict:
    """The facts about an item that `--list` shows and the sidecar records."""
    props = item.properties
    return {
        "id": item.id,
        "collection": item.collection_id,
        "datetime": item.datetime.isoformat() if item.datetime else props.get("start_datetime"),
        "cloud_cover": _cloud(item),
        "platform": props.get("platform"),
        "crs": props.get("proj:code") or (f"EPSG:{props['proj:epsg']}" if props.get("proj:epsg") else None),
        "processing_baseline": props.get("s2:processing_baseline"),
        "boa_offset_applied": props.get("earthsearch:boa_offset_applied"),
        "self": item.get_self_href(),
    }
