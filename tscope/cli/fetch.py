"""``tscope fetch``: search a STAC API and write one COG per scene on the AOI grid (or ``--list`` items)."""

from __future__ import annotations

from pathlib import Path

import typer

from tscope.cli.options import (
    JsonOption,
    OverwriteOption,
    QuietOption,
    Resampling,
    command_logging,
    print_json,
    progress_bar,
)
from tscope.errors import InputError


def command(
    bbox: tuple[float, float, float, float] = typer.Option(
        None, "--bbox", metavar="MINX MINY MAXX MAXY", show_default=False,
        help="AOI bounding box (EPSG:4326 unless --bbox-crs); MINX > MAXX crosses the antimeridian."),
    bbox_crs: str = typer.Option("EPSG:4326", "--bbox-crs", help="CRS of --bbox."),
    aoi: Path = typer.Option(None, "--aoi", help="AOI as a vector file (GeoJSON, GeoPackage...): its union."),
    datetime: str = typer.Option(..., "--datetime",
                                 help="ISO 8601 date or START/END (2023-06-01/2023-08-31, 2023-06, 2023, 2023/..)."),
    collection: str = typer.Option("s2-l2a", "--collection", "--collections", "-c",
                                   help="s2-l2a, s1, or a STAC collection id."),
    catalog: str = typer.Option("earth-search", "--catalog",
                                help="earth-search, planetary-computer, cdse, or a STAC API URL."),
    max_cloud: float = typer.Option(None, "--max-cloud", help="Keep items with eo:cloud_cover <= N (%)."),
    max_items: int = typer.Option(500, "--max-items", help="Stop the search after this many items."),
    crs: str = typer.Option(None, "--crs", help="Output CRS (default: the UTM zone of the AOI centre)."),
    resolution: float = typer.Option(10.0, "--resolution", help="Output pixel size in CRS units."),
    bands: str = typer.Option(None, "--bands", help="Common names to fetch, e.g. blue,green,red,nir,scl."),
    resampling: Resampling = typer.Option(Resampling.bilinear, "--resampling",
                                          help="Reflectance/backscatter resampling (SCL is always nearest)."),
    mask_clouds: bool = typer.Option(False, "--mask-clouds/--no-mask-clouds",
                                     help="Write SCL cloud/shadow pixels as nodata."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Output folder."),
    list_only: bool = typer.Option(False, "--list", help="Print the matching items; download nothing."),
    overwrite: bool = OverwriteOption,
    as_json: bool = JsonOption,
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for each HTTP answer."),
    retries: int = typer.Option(4, "--retries", help="Retries on connection errors, 429 and 5xx."),
    backoff: float = typer.Option(1.0, "--backoff", help="First retry delay (s), doubled after each retry."),
    quiet: bool = QuietOption,
) -> None:
    """Search a STAC API and write one COG per scene (plus a sidecar JSON) on the AOI's grid."""
    command_logging(quiet, 0)
    from tscope.stac.fetch import FetchRequest, fetch, list_items, read_aoi
    from tscope.stac.http import NetworkPolicy
    from tscope.stac.load import LoadOptions
    from tscope.stac.search import SearchRequest, bbox_geometry

    has_bbox = bbox is not None and all(v is not None for v in bbox)
    if has_bbox == (aoi is not None):
        raise InputError("give the AOI as --bbox MINX MINY MAXX MAXY or as --aoi FILE (one of them)")
    geometry = bbox_geometry(bbox, bbox_crs) if has_bbox else read_aoi(aoi)
    names = tuple(b.strip().lower() for b in bands.split(",") if b.strip()) if bands else None
    policy = NetworkPolicy(timeout=timeout, connect_timeout=min(timeout, 10.0), retries=retries, backoff=backoff)
    search = SearchRequest(geometry=geometry, datetime=datetime, catalog=catalog, collection=collection,
                           max_cloud=max_cloud, max_items=max_items)
    if list_only:
        found = list_items(search, policy)
        if as_json:
            from tscope.stac.records import item_collection

            print_json(item_collection(found))  # a STAC ItemCollection, as stac-client prints it
            return
        for item in found:
            cloud = item.properties.get("eo:cloud_cover")
            cloud = "-" if cloud is None else f"{float(cloud):.1f}%"
            when = item.datetime.isoformat() if item.datetime else item.properties.get("start_datetime")
            typer.echo(f"{when}  {cloud:>6}  {item.id}")
        return
    request = FetchRequest(search=search, load=LoadOptions(crs=crs, resolution=resolution, bands=names,
                                                           resampling=resampling.value, mask_clouds=mask_clouds))
    with progress_bar("fetching", quiet=quiet) as progress:
        summary = fetch(request, out, overwrite=overwrite, policy=policy, progress=progress)
    if as_json:
        print_json(summary | {"out": str(out)})
        return
    for scene in summary["scenes"]:
        cloud = scene["aoi_cloud_percent"]
        typer.echo(f"{out / scene['file']}  ({scene['date']}, {len(scene['items'])} item(s)"
                   + (f", {cloud:.1f}% cloud" if cloud is not None else "") + ")")
