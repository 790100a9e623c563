"""``fetch``: search a STAC API and write one COG per scene on the AOI grid, with a sidecar JSON.

``OUT/<date>_<item id>.tif``: the scene's bands on the AOI grid (band descriptions are common names,
stored integers with per-band scale/offset, nodata set, ``scl`` when fetched);
``OUT/<date>_<item id>.json``: its STAC Item (projection, raster, eo and file extensions,
``derived_from`` links to the source items, the query and AOI cloud/nodata shares as ``tscope:``
properties), enough to reproduce the file; ``OUT/fetch.json``: the list of scenes, written last.
Cloud percentages are of the AOI pixels that hold data, as ``tscope ask`` reports them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tscope import __version__
from tscope.errors import InputError, RuntimeFailure
from tscope.geo.stack import grid_dict
from tscope.geo.vector import read_vector_wgs84
from tscope.geo.writers import Outputs, rollback_on_failure, sweep_partials, write_json
from tscope.stac.catalogs import gdal_credentials, resolve_catalog
from tscope.stac.http import NetworkPolicy
from tscope.stac.load import (
    LoadOptions,
    aoi_grid,
    group_items,
    items_crs,
    refuse_uncalibrated_sar,
    write_scene,
)
from tscope.stac.names import safe_name
from tscope.stac.records import scene_item
from tscope.stac.search import SearchRequest, search

log = logging.getLogger("tscope")


@dataclass(frozen=True)
class FetchRequest:
    search: SearchRequest
    load: LoadOptions = LoadOptions()

    def to_dict(self) -> dict:
        return {"search": self.search.to_dict(), "load": self.load.to_dict()}


def read_aoi(path: str | Path) -> dict:
    """The union of a vector file's geometries as one GeoJSON geometry in EPSG:4326."""
    from shapely.geometry import mapping

    geom = read_vector_wgs84(path, "--aoi ").geometry.union_all()
    if geom.is_empty or geom.area == 0:
        raise InputError(f"--aoi {path}: the AOI must be a polygon with an area")
    return dict(mapping(geom))


def scene_name(group: list[Any]) -> str:
    from tscope.stac.load import solar_date

    return f"{solar_date(group[0])}_{safe_name(group[0].id)}"


def list_items(request: SearchRequest, policy: NetworkPolicy | None = None) -> list[Any]:
    """The items a fetch would read (pystac Items, unsigned: nothing is downloaded)."""
    return search(request, policy)


def fetch(request: FetchRequest, out: str | Path, *, overwrite: bool = False, policy: NetworkPolicy | None = None,
          progress: Callable[[int, int], None] | None = None, items: list[Any] | None = None) -> dict:
    """Search (unless ``items`` are given), load and write every scene; returns the ``fetch.json`` record."""
    policy = policy or NetworkPolicy()
    catalog = resolve_catalog(request.search.catalog)
    gdal_options = policy.gdal_options() | gdal_credentials(catalog)  # missing credentials fail before searching
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    aoi_grid(request.search.geometry, request.load)  # an AOI too large for any grid fails before searching
    found = items if items is not None else search(request.search, policy)
    refuse_uncalibrated_sar(found)
    # Items on one CRS (one UTM zone of Sentinel-2 tiles) are read on it, without reprojection.
    grid = aoi_grid(request.search.geometry, request.load, items_crs(found))
    groups = group_items(found, request.load.bands)
    names = [scene_name(g) for g in groups]
    if not overwrite:
        taken = [n for n in names if (out / f"{n}.tif").exists()]
        if taken:
            raise InputError(f"{out / (taken[0] + '.tif')} exists; pass --overwrite to replace it")
    from tscope.stac.signing import sign_items

    groups = [sign_items(g, catalog, policy) for g in groups]  # only what is read gets a token
    query = request.to_dict()
    sweep_partials(out)
    # A failure or Ctrl-C removes the scenes this run wrote and the folders it made: nothing half done.
    with rollback_on_failure() as made:
        made.mkdir(out)
        scenes = _write_scenes(groups, names, request, grid, gdal_options, catalog, query, out, made, progress)
        summary = {"tscope_version": __version__, "query": query, "grid": grid_dict(grid), "scenes": scenes}
        write_json(made.add(out / "fetch.json"), summary)
    return summary


def _write_scenes(groups: list[list[Any]], names: list[str], request: FetchRequest, grid: Any, gdal_options: dict,
                  catalog: Any, query: dict, out: Path, made: Outputs,
                  progress: Callable[[int, int], None] | None) -> list[dict]:
    scenes = []
    for done, (group, name) in enumerate(zip(groups, names, strict=True)):
        log.info("loading %s (%d item(s))", name, len(group))
        tags = {**_acquisition_tags(group), "STAC_ITEMS": ",".join(i.id for i in group),
                "COLLECTION": group[0].collection_id or query["search"]["collection"], "CATALOG": catalog.url,
                "SOFTWARE": f"tscope {__version__}"}
        scene = write_scene(group, request.search.geometry, grid, request.load, gdal_options,
                            made.add(out / f"{name}.tif"), tags)
        tif = scene.path
        if scene.nodata_percent >= 100.0:
            raise RuntimeFailure(f"{name}: no valid pixel in the AOI (items {', '.join(i.id for i in group)}"
                                 " hold only nodata there); nothing written")
        properties = {"query": query, "aoi_cloud_percent": scene.cloud_percent,
                      "aoi_nodata_percent": scene.nodata_percent,
                      "cloud_percent_of": "AOI pixels with data (SCL classes 3, 8, 9, 10)"}
        item = scene_item(scene, group, request.search.geometry, properties, catalog.url)
        write_json(made.add(out / f"{name}.json"), item.to_dict(include_self_link=False, transform_hrefs=False))
        scenes.append({"file": tif.name, "sidecar": f"{name}.json", "date": scene.date,
                       "items": [i.id for i in group], "aoi_cloud_percent": scene.cloud_percent,
                       "aoi_nodata_percent": scene.nodata_percent})
        if progress:
            progress(done + 1, len(groups))
    return scenes


def _acquisition_tags(group: list[Any]) -> dict[str, str]:
    """When the scene's items were acquired, in UTC, as the sidecar's ``datetime`` (the first item) and,
    for several items, ``start_datetime``/``end_datetime``: what ``tscope ask`` records in item.json."""
    stamps = sorted(i.datetime or i.common_metadata.start_datetime for i in group)
    tags = {"ACQUISITION": _utc(group[0].datetime or group[0].common_metadata.start_datetime)}
    if len(group) > 1:
        tags |= {"ACQUISITION_START": _utc(stamps[0]), "ACQUISITION_END": _utc(stamps[-1])}
    return tags


def _utc(when: Any) -> str:
    from datetime import UTC

    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
