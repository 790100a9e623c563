"""fetch, its STAC records and ask against real recorded catalogue responses, replayed on 127.0.0.1.

The items and collection documents are real Earth Search v1 and Planetary Computer responses
(tests/data/stac, sources in tests/data/README.md); the pixels are synthetic, on each item's real grid.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds

from tests.conftest import run_cli
from tests.stac_server import (
    StacServer,
    item_crs,
    recorded_assets,
    recorded_collections,
    recorded_features,
    window_box,
)
from tscope.errors import InputError, RuntimeFailure
from tscope.stac import catalogs
from tscope.stac.fetch import FetchRequest, fetch, list_items
from tscope.stac.http import NetworkPolicy
from tscope.stac.load import LoadOptions
from tscope.stac.search import SearchRequest, bbox_geometry

FAST = NetworkPolicy(timeout=5, connect_timeout=2, retries=2, backoff=0.05)
ES_POINT = (-39.8576, -4.6275)  # inside both Sentinel-2 tiles 24MUV and 24MVV (EPSG:32724)
PC_POINT = (94.3792, 81.4271)  # tile 47XML (EPSG:32647), west of 96 E: the AOI centre is in UTM zone 46
S1_POINT = (15.1765, 30.3576)


def aoi_bbox(feature: dict, point: tuple[float, float], margin: float = 100.0) -> list[str]:
    minx, miny, maxx, maxy = window_box(feature, *point)
    box = transform_bounds(item_crs(feature), "EPSG:4326", minx + margin, miny + margin, maxx - margin, maxy - margin)
    return [f"{v:.7f}" for v in box]


@pytest.fixture()
def earth_search(tmp_path):
    features = recorded_features("earth-search-v1-items")
    items = recorded_assets(features, tmp_path / "assets", *ES_POINT)
    with StacServer(tmp_path / "assets", recorded=items, collections=recorded_collections(
            "earth-search-v1-collections"), page_size=10) as server:
        server.features = features
        yield server


def searches(server: StacServer) -> list[dict]:
    return [entry for entry in server.bodies if entry.get("collections")]


def test_earth_search_fetch_writes_stac_items(earth_search, tmp_path):
    """Generic URL: s2-l2a is found among the API's real collections; the two real tiles of one day are
    mosaicked on their shared grid; the sidecar is a STAC Item pystac validates."""
    bbox = aoi_bbox(earth_search.features[1], ES_POINT)
    out = tmp_path / "scenes"
    result = run_cli("fetch", "--bbox", *bbox, "--datetime", "2025-07", "--catalog", earth_search.url,
                     "--max-cloud", "60", "--bands", "red,nir,swir16,green,blue,scl", "--out", out, "--json",
                     "--backoff", "0.05")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr  # pystac's storage-extension warning stays in the debug log
    summary = json.loads(result.stdout)
    (scene,) = summary["scenes"]
    assert scene["items"] == ["S2B_T24MVV_20250731T130245_L2A", "S2B_T24MUV_20250731T130245_L2A"]  # by time
    body = searches(earth_search)[0]
    assert body["collections"] == ["sentinel-2-c1-l2a"] and body["datetime"].startswith("2025-07-01T00:00:00")
    assert body["query"] == {"eo:cloud_cover": {"lte": 60.0}}  # an optical collection: the API filters
    with rasterio.open(out / scene["file"]) as src:
        assert src.crs.to_epsg() == 32724 and src.transform.c % 10 == 0 and src.transform.f % 10 == 0
        red = src.descriptions.index("red")
        assert src.offsets[red] == pytest.approx(-0.1)  # baseline 05.11, no boa_offset_applied
        values = src.read(red + 1).astype(float) * src.scales[red] + src.offsets[red]
        valid = src.read_masks(red + 1) > 0
    assert set(np.round(np.unique(values[valid]), 4)) == {0.02, 0.03}  # (DN - 1000) / 10000 of both halves

    import pystac
    import pystac.validation
    from pystac.extensions.eo import EOExtension
    from pystac.extensions.file import FileExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    record = json.loads((out / scene["sidecar"]).read_text())
    pystac.validation.validate_dict(record, extensions=[])  # core schema, offline (pystac ships it)
    item = pystac.Item.from_dict(record)
    assert ProjectionExtension.ext(item).code == "EPSG:32724"
    assert ProjectionExtension.ext(item).shape == [src.height, src.width]
    asset = item.assets["data"]
    assert asset.href == f"./{scene['file']}" and asset.roles == ["data"]
    bands = RasterExtension.ext(asset).bands
    assert bands[red].offset == pytest.approx(-0.1) and bands[red].scale == pytest.approx(1e-4)
    assert bands[red].nodata == 0
    assert [b.common_name for b in EOExtension.ext(asset).bands][red] == "red"
    assert FileExtension.ext(asset).size == (out / scene["file"]).stat().st_size
    derived = [link.href for link in item.links if link.rel == "derived_from"]
    assert derived == [f"{earth_search.url}/collections/sentinel-2-c1-l2a/items/{i}" for i in scene["items"]]
    assert item.properties["tscope:aoi_cloud_percent"] == scene["aoi_cloud_percent"]

    # The same file through ask: one cloud figure, and --l2a-offset never applied twice.
    answers = {}
    for flags in ((), ("--l2a-offset",)):
        asked = run_cli("ask", out / scene["file"], "What percentage of the image is covered by forest?",
                        "--out", tmp_path / f"ans{len(flags)}", "--json", *flags)
        assert asked.returncode == 0, asked.stderr
        answers[flags] = json.loads(asked.stdout)
        if flags:
            assert "--l2a-offset is not applied again" in asked.stderr
    plain, offset = answers[()], answers[("--l2a-offset",)]
    # The answer's record carries the items' acquisition times, as the sidecar does.
    answered = json.loads((tmp_path / "ans0" / "item.json").read_text())["properties"]
    assert [answered[k] for k in ("datetime", "start_datetime", "end_datetime")] == [
        record["properties"][k] for k in ("datetime", "start_datetime", "end_datetime")]
    assert answered["start_datetime"] < answered["end_datetime"]  # two items, two times
    assert offset["numbers"]["coverage_percent"] == plain["numbers"]["coverage_percent"]
    assert plain["numbers"]["coverage_percent"]["value"] > 50  # the west half, under clear SCL
    assert plain["numbers"]["cloud_percent"]["value"] == pytest.approx(scene["aoi_cloud_percent"], abs=0.01)


def test_list_json_is_an_item_collection(earth_search):
    bbox = aoi_bbox(earth_search.features[1], ES_POINT)
    result = run_cli("fetch", "--list", "--json", "--bbox", *bbox, "--datetime", "2025-07-31",
                     "-c", "sentinel-2-l2a", "--catalog", earth_search.url)
    assert result.returncode == 0, result.stderr
    import pystac

    collection = pystac.ItemCollection.from_dict(json.loads(result.stdout))
    (item,) = collection.items
    assert item.id == "S2B_24MUV_20250731_0_L2A" and item.properties["earthsearch:boa_offset_applied"] is True
    assert result.stderr == ""
    text = run_cli("fetch", "--list", "--bbox", *bbox, "--datetime", "2025-07-31", "-c", "sentinel-2-l2a",
                   "--catalog", earth_search.url)
    assert text.stdout.split() == ["2025-07-31T13:03:27.058000+00:00", "56.8%", "S2B_24MUV_20250731_0_L2A"]


def test_offset_applied_items_get_no_offset(earth_search, tmp_path):
    request = FetchRequest(SearchRequest(geometry=bbox_geometry(tuple(map(float, aoi_bbox(
        earth_search.features[3], ES_POINT)))), datetime="2025-07-31", catalog=earth_search.url,
        collection="sentinel-2-l2a"), LoadOptions(bands=("red", "nir")))
    summary = fetch(request, tmp_path, policy=FAST)
    with rasterio.open(tmp_path / summary["scenes"][0]["file"]) as src:
        assert src.offsets == (0.0, 0.0)
        red = src.read(1)
    assert set(np.unique(red[red > 0])) == {200, 300}


def test_sar_collection_gets_no_cloud_query_and_grd_is_refused(earth_search, tmp_path):
    bbox = aoi_bbox(earth_search.features[1], ES_POINT)
    grd = recorded_features("earth-search-v1-items")[0]
    lon, lat = (grd["bbox"][0] + grd["bbox"][2]) / 2, (grd["bbox"][1] + grd["bbox"][3]) / 2
    bbox = [f"{v:.5f}" for v in (lon - 0.01, lat - 0.01, lon + 0.01, lat + 0.01)]
    result = run_cli("fetch", "--bbox", *bbox, "--datetime", "2025-07-31", "--collection", "sentinel-1-grd",
                     "--catalog", earth_search.url, "--max-cloud", "30", "--out", tmp_path / "o")
    body = searches(earth_search)[0]
    assert "query" not in body  # the API would drop every SAR item: they have no eo:cloud_cover
    assert result.returncode == 2, result.stderr
    assert "uncalibrated SAR amplitude (uint16)" in result.stderr and "sentinel-1-rtc" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


def test_unknown_collection_names_what_the_api_has(earth_search, tmp_path):
    result = run_cli("fetch", "--bbox", "10", "45", "10.1", "45.1", "--datetime", "2025", "--collection", "s1",
                     "--catalog", earth_search.url, "--out", tmp_path / "o")
    assert result.returncode == 2
    assert "has no sentinel-1-rtc collection; it offers: sentinel-1-grd, sentinel-2-c1-l2a, sentinel-2-l2a" \
        in result.stderr


def test_scene_without_valid_pixels_is_an_error(tmp_path):
    features = recorded_features("earth-search-v1-items")[1:2]
    items = recorded_assets(features, tmp_path / "assets", *ES_POINT, nodata=True)
    with StacServer(tmp_path / "assets", recorded=items, collections=recorded_collections(
            "earth-search-v1-collections")) as server:
        result = run_cli("fetch", "--bbox", *aoi_bbox(features[0], ES_POINT), "--datetime", "2025-07-31",
                         "--catalog", server.url, "--bands", "red,nir", "--out", tmp_path / "o", "--backoff", "0.05")
    assert result.returncode == 1
    assert "no valid pixel in the AOI" in result.stderr and "S2B_T24MUV_20250731T130245_L2A" in result.stderr
    assert not list((tmp_path / "o").glob("*.tif"))


# --- Planetary Computer: signing under tscope's policy, only for what is read --------------------------


@pytest.fixture()
def planetary(tmp_path, monkeypatch):
    features = recorded_features("planetary-computer-items")
    items = recorded_assets(features[:1], tmp_path / "assets", *PC_POINT)
    items |= recorded_assets(features[1:], tmp_path / "assets", *S1_POINT)
    with StacServer(tmp_path / "assets", recorded=items, page_size=10) as server:
        pc = replace(catalogs.CATALOGS["planetary-computer"], url=server.url,
                     token_url=server.url + "/api/sas/v1/token/{collection}")
        monkeypatch.setitem(catalogs.CATALOGS, "planetary-computer", pc)
        server.features = features
        yield server


def pc_request(server, point, feature, collection="s2-l2a", **load) -> FetchRequest:
    bbox = tuple(map(float, aoi_bbox(feature, point)))
    return FetchRequest(SearchRequest(geometry=bbox_geometry(bbox), datetime="2024-04-19", catalog="pc",
                                      collection=collection), LoadOptions(**load))


def blob_hrefs(server, monkeypatch):
    """Make the loopback asset URLs look like Azure blob URLs to the signer."""
    from tscope.stac import signing

    monkeypatch.setattr(signing, "BLOB_SUFFIX", "127.0.0.1:" + server.url.rsplit(":", 1)[1])


def test_list_requests_no_token_and_fetch_signs_once(planetary, tmp_path, monkeypatch):
    blob_hrefs(planetary, monkeypatch)
    request = pc_request(planetary, PC_POINT, planetary.features[0], bands=("red", "nir", "scl"))
    assert [i.id for i in list_items(request.search, FAST)] == [planetary.features[0]["id"]]
    assert planetary.token_requests == []  # searching downloads nothing, so it signs nothing
    summary = fetch(request, tmp_path, policy=FAST)
    assert planetary.token_requests == ["sentinel-2-l2a"]
    reads = [path for _, path, _ in planetary.log if path.startswith("/assets/")]
    assert reads and all(path.endswith("?st=2099&sig=loopback") for path in reads)
    with rasterio.open(tmp_path / summary["scenes"][0]["file"]) as src:
        # The item's own grid (EPSG:32647), not the UTM zone of the AOI centre (46): no resampling.
        assert src.crs.to_epsg() == 32647
        assert (src.transform.c - 399960) % 10 == 0 and (src.transform.f - 9100020) % 10 == 0
        assert src.offsets[0] == pytest.approx(-0.1)  # PC items: baseline 05.10, no offset applied yet
    record = json.loads((tmp_path / summary["scenes"][0]["sidecar"]).read_text())
    assert all("sig=" not in link["href"] for link in record["links"])


def test_rtc_backscatter_is_fetched_without_a_cloud_query(planetary, tmp_path, monkeypatch):
    blob_hrefs(planetary, monkeypatch)
    request = pc_request(planetary, S1_POINT, planetary.features[1], collection="s1")
    request = replace(request, search=replace(request.search, max_cloud=20))
    summary = fetch(request, tmp_path, policy=FAST)
    assert "query" not in searches(planetary)[0]
    assert planetary.token_requests == ["sentinel-1-rtc"]
    with rasterio.open(tmp_path / summary["scenes"][0]["file"]) as src:
        assert src.descriptions == ("vv", "vh") and src.crs.to_epsg() == 32633
        vv = src.read(1)
    assert sorted(np.unique(vv[np.isfinite(vv)]).tolist()) == pytest.approx([0.005, 0.08])


def test_token_endpoint_failures_follow_the_policy(planetary, tmp_path, monkeypatch):
    blob_hrefs(planetary, monkeypatch)
    request = pc_request(planetary, PC_POINT, planetary.features[0], bands=("red",))
    planetary.faults.errors["/api/sas"] = [503] * 10
    started = time.monotonic()
    with pytest.raises(RuntimeFailure, match="token.*still failing after 2 retries"):
        fetch(request, tmp_path / "a", policy=FAST)
    assert time.monotonic() - started < 10
    assert planetary.token_requests == []  # the 503s were answered before the token handler
    planetary.faults.errors.clear()
    planetary.faults.delay["/api/sas"] = 3.0
    started = time.monotonic()
    with pytest.raises(RuntimeFailure, match="token.*no answer within 0.5 s"):
        fetch(request, tmp_path / "b", policy=NetworkPolicy(timeout=0.5, connect_timeout=0.5, retries=1,
                                                            backoff=0.05))
    assert time.monotonic() - started < 8
    assert not list((tmp_path / "b").glob("*.tif")) if (tmp_path / "b").exists() else True


def test_antimeridian_bbox_and_short_datetimes(tmp_path):
    from shapely.geometry import shape

    projected = shape(bbox_geometry((500000, 5000000, 501000, 5001000), "EPSG:32633"))  # --bbox-crs works
    assert projected.bounds == pytest.approx((14.99, 45.14, 15.02, 45.16), abs=0.02)
    geometry = bbox_geometry((179.9, -17.0, -179.9, -16.9))
    assert geometry["type"] == "MultiPolygon"
    from tscope.stac.load import aoi_grid

    grid = aoi_grid(geometry, LoadOptions(resolution=100))
    assert grid.width < 300 and grid.height < 200  # 0.2 degrees, not a band around the globe
    for text in ("2015", "2015-08", "2015-08/2015-09", "2015-08-20", "../2015-08", "2015-08-20T10:00:00Z/.."):
        SearchRequest(geometry=geometry, datetime=text)
    with pytest.raises(InputError, match="start is after the end"):
        SearchRequest(geometry=geometry, datetime="2015-09/2015-08")
    result = run_cli("fetch", "--bbox", "179.9", "-17", "-179.9", "-16.9", "--datetime", "2015-08",
                     "--catalog", "ftp://nowhere", "--out", tmp_path)
    assert result.returncode == 2 and "unknown --catalog" in result.stderr  # past bbox and datetime checks


def test_utm_zone_follows_mgrs_exceptions():
    from tscope.stac.load import utm_crs

    assert utm_crs(5.5, 60.4) == "EPSG:32632"  # Bergen: zone 32V is widened west
    assert utm_crs(2.0, 60.0) == "EPSG:32631"
    assert utm_crs(10.0, 78.0) == "EPSG:32633" and utm_crs(20.0, 78.0) == "EPSG:32633"  # Svalbard
    assert utm_crs(25.0, 78.0) == "EPSG:32635" and utm_crs(40.0, 78.0) == "EPSG:32637"
    assert utm_crs(14.8, 46.0) == "EPSG:32633" and utm_crs(-70.0, -33.0) == "EPSG:32719"
