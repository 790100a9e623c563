"""Item search with pystac-client: AOI + time range + cloud filter -> items in a stable order."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tscope.errors import InputError, RuntimeFailure
from tscope.stac.catalogs import Catalog, resolve_catalog
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
        return tuple(float(v) for v in geometry_bbox(self.geometry))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        cat = resolve_catalog(self.catalog)
        return {"catalog": cat.name, "catalog_url": cat.url, "collection": cat.collection_id(self.collection),
                "bbox": [round(v, 9) for v in self.bbox], "intersects": self.geometry, "datetime": self.datetime,
                "max_cloud": self.max_cloud, "max_items": self.max_items}


_STAMP = r"\d{4}(?:-\d{2}(?:-\d{2}(?:[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?)?)?)?"


def _instant(text: str, end: bool) -> datetime:
    """The first (or, with ``end``, last) instant a STAC datetime component stands for: 2015 is a year."""
    if re.fullmatch(r"\d{4}", text):
        year = int(text)
        return datetime(year + 1, 1, 1) - timedelta(microseconds=1) if end else datetime(year, 1, 1)
    if re.fullmatch(r"\d{4}-\d{2}", text):
        year, month = map(int, text.split("-"))
        if end:
            month, year = (1, year + 1) if month == 12 else (month + 1, year)
            return datetime(year, month, 1) - timedelta(microseconds=1)
        return datetime(year, month, 1)
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)
    if end and len(text) == 10:
        stamp += timedelta(days=1, microseconds=-1)
    return stamp


def parse_datetime(text: str) -> str:
    """Check a STAC datetime as stac-client takes it: ``2015``, ``2015-08``, a date or an instant, or
    ``START/END`` of those with ``..`` (or nothing) for an open end. pystac-client expands the short
    forms into the full interval they name."""
    parts = (text or "").strip().split("/")
    if not 1 <= len(parts) <= 2 or not all(re.fullmatch(_STAMP, p) or (p in ("..", "") and len(parts) == 2)
                                           for p in parts) or all(p in ("..", "") for p in parts):
        raise InputError(f"--datetime {text!r}: give a date or START/END in ISO 8601, e.g. 2023-06-01/2023-08-31,"
                         " 2023-06 or 2023")
    try:
        bounds = [_instant(p, end=i == len(parts) - 1) if p not in ("..", "") else None for i, p in enumerate(parts)]
    except ValueError as exc:
        raise InputError(f"--datetime {text!r}: {exc}") from None
    if len(bounds) == 2 and None not in bounds and _instant(parts[0], False) > bounds[1]:
        raise InputError(f"--datetime {text!r}: the start is after the end")
    return text.strip()


def bbox_geometry(bbox: tuple[float, float, float, float], bbox_crs: str = "EPSG:4326") -> dict:
    """A bbox (in ``bbox_crs``) as a GeoJSON (multi)polygon in EPSG:4326.

    In longitude/latitude MINX > MAXX crosses the antimeridian, as STAC allows: the box becomes a
    MultiPolygon split at 180 degrees (RFC 7946, section 3.1.9).
    """
    from rasterio.warp import transform_geom
    from shapely.geometry import MultiPolygon, box, mapping

    minx, miny, maxx, maxy = bbox
    geographic = bbox_crs.upper() in ("EPSG:4326", "OGC:CRS84")
    if geographic and not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90):
        raise InputError("--bbox is not in longitude/latitude: pass --bbox-crs for projected coordinates")
    if miny >= maxy or minx == maxx or (minx > maxx and not geographic):
        raise InputError("--bbox must be MINX MINY MAXX MAXY with MINY < MAXY and MINX < MAXX"
                         " (MINX > MAXX only in longitude, across the antimeridian)")
    if minx > maxx:
        return dict(mapping(MultiPolygon([box(minx, miny, 180.0, maxy), box(-180.0, miny, maxx, maxy)])))
    outline = box(minx, miny, maxx, maxy)
    geom = mapping(outline)
    if not geographic:
        # Densified first: a projected box's edges are curves in longitude/latitude.
        geom = mapping(outline.segmentize(max(maxx - minx, maxy - miny) / 20))
        try:
            geom = transform_geom(bbox_crs, "EPSG:4326", geom)
        except Exception:  # noqa: BLE001 - rasterio raises several types for a bad CRS
            raise InputError(f"--bbox-crs {bbox_crs!r} is not a CRS") from None
    return dict(geom)


def geometry_bbox(geometry: dict) -> tuple[float, float, float, float]:
    """The bbox of a GeoJSON geometry in EPSG:4326, with MINX > MAXX when it crosses the antimeridian
    (parts that touch both +180 and -180 are one area, not a band around the globe)."""
    from shapely.geometry import shape

    geom = shape(geometry)
    parts = list(getattr(geom, "geoms", [geom]))
    east = [p.bounds for p in parts if p.bounds[2] >= 180.0]
    west = [p.bounds for p in parts if p.bounds[0] <= -180.0]
    minx, miny, maxx, maxy = geom.bounds
    if east and west and len(east) + len(west) == len(parts):
        return (min(b[0] for b in east), miny, max(b[2] for b in west), maxy)
    return (minx, miny, maxx, maxy)


@contextlib.contextmanager
def pystac_warnings_logged() -> Iterator[None]:
    """pystac warns while migrating real items (the storage extension cannot parse Earth Search's
    ``s3://`` hrefs, for one); those lines are about metadata tscope does not use, so they go to the
    debug log instead of interleaving with ``--json``, ``-q`` or a progress bar on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        log.debug("pystac: %s", " ".join(str(warning.message).split()))


def open_client(catalog: Catalog, policy: NetworkPolicy) -> Any:
    """pystac-client's Client under ``policy``. Nothing is signed here: search results are metadata, and
    only the assets fetch downloads get a token (:mod:`tscope.stac.signing`)."""
    from pystac_client import Client

    return call_with_policy(lambda: Client.open(catalog.url, stac_io=stac_api_io(policy),
                                                timeout=(policy.connect_timeout, policy.timeout)),
                            f"opening the STAC API {catalog.url}", policy)


# Collections tscope's aliases may stand for on an API it does not know by name, in order of preference.
ALIAS_CANDIDATES = {"s2-l2a": ("sentinel-2-c1-l2a", "sentinel-2-l2a"), "s1": ("sentinel-1-rtc",)}


def resolve_collection(client: Any, catalog: Catalog, name: str, policy: NetworkPolicy) -> tuple[str, dict | None]:
    """The API's collection id for ``name`` and its collection document (None if the API has none).

    Known catalogues map aliases themselves. On any other STAC API the collections it offers are
    listed once: an alias becomes the first candidate it has, and a name it does not have is an input
    error that names the ones it has, rather than an empty search.
    """
    if not catalog.discover:
        cid = catalog.collection_id(name)
        document = call_with_policy(lambda: _collection_document(client, cid), f"reading collection {cid}", policy)
        return cid, document
    documents = call_with_policy(lambda: {c.id: c.to_dict() for c in client.get_collections()},
                                 f"listing the collections of {catalog.url}", policy)
    wanted = ALIAS_CANDIDATES.get(name, (name,))
    for cid in wanted:
        if cid in documents:
            return cid, documents[cid]
    offered = ", ".join(sorted(documents)) or "none"
    raise InputError(f"{catalog.url} has no {' or '.join(wanted)} collection; it offers: {offered}"
                     " (pass one with --collection)")


def _collection_document(client: Any, cid: str) -> dict | None:
    try:
        found = client.get_collection(cid)
    except Exception as exc:  # noqa: BLE001 - a missing collection is a 404 here; the search says more
        if getattr(getattr(exc, "response", None), "status_code", None) == 404 or "404" in str(exc):
            return None
        raise
    return found.to_dict() if found is not None else None


def has_cloud_cover(document: dict | None) -> bool:
    """Whether a collection's items carry ``eo:cloud_cover``: optical collections that declare the eo
    extension or summarise cloud cover. SAR collections never do, and an API's ``query`` on
    ``eo:cloud_cover`` drops every item without the property, so they must not get one."""
    if document is None:
        return False
    extensions = " ".join(document.get("stac_extensions") or [])
    summaries = document.get("summaries") or {}
    if "/sar/" in extensions or any(k.startswith("sar:") for k in summaries):
        return False
    return "/eo/" in extensions or "eo:cloud_cover" in summaries


def search(request: SearchRequest, policy: NetworkPolicy | None = None) -> list[Any]:
    """Items matching ``request``, sorted by (datetime, id); RuntimeFailure when none match."""
    policy = policy or NetworkPolicy()
    catalog = resolve_catalog(request.catalog)
    client = open_client(catalog, policy)
    collection, document = resolve_collection(client, catalog, request.collection, policy)
    kwargs: dict[str, Any] = dict(collections=[collection], intersects=request.geometry, datetime=request.datetime,
                                  max_items=request.max_items, limit=request.page_size)
    # The API filters by cloud where it can (the query extension); we always filter again below.
    from pystac_client import ConformanceClasses

    clouds = has_cloud_cover(document)
    if request.max_cloud is not None and clouds and client.conforms_to(ConformanceClasses.QUERY):
        kwargs["query"] = {"eo:cloud_cover": {"lte": request.max_cloud}}

    def run() -> list[Any]:
        with pystac_warnings_logged():
            return list(client.search(**kwargs).items())

    items = call_with_policy(run, f"searching {collection} at {catalog.url}", policy)
    if request.max_cloud is not None:
        items = [i for i in items if _cloud(i) is None or _cloud(i) <= request.max_cloud]
    items.sort(key=lambda i: (i.datetime.isoformat() if i.datetime else "", i.id))
    if not items:
        cloud = f", cloud cover <= {request.max_cloud:g}%" if request.max_cloud is not None and clouds else ""
        raise RuntimeFailure(f"no {collection} items at {catalog.name} for bbox"
                             f" {', '.join(f'{v:.5f}' for v in request.bbox)}, {request.datetime}{cloud}:"
                             " widen --datetime or the AOI" + (", or raise --max-cloud" if cloud else ""))
    log.info("%d %s item(s) found", len(items), collection)
    return items


def _cloud(item: Any) -> float | None:
    value = item.properties.get("eo:cloud_cover")
    return float(value) if value is not None else None
