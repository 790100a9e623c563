"""`tscope fetch` against a STAC API served on 127.0.0.1 (tests/stac_server.py), with real COG assets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from tests.conftest import EXAMPLES, run_cli
from tests.stac_server import COLLECTION, StacServer
from tscope.errors import InputError, RuntimeFailure
from tscope.geo.scene import open_scene
from tscope.stac.catalogs import gdal_credentials, resolve_catalog
from tscope.stac.fetch import FetchRequest, fetch, list_items
from tscope.stac.http import NetworkPolicy
from tscope.stac.load import LoadOptions, band_scaling, utm_crs
from tscope.stac.names import safe_name
from tscope.stac.search import SearchRequest, bbox_geometry, parse_datetime

FAST = NetworkPolicy(timeout=5, connect_timeout=2, retries=3, backoff=0.05)
PERIOD = "2015-07-01/2015-09-01"


def scene_bbox() -> tuple[float, float, float, float]:
    with rasterio.open(EXAMPLES / "slovenia_s2.tif") as src:
        return transform_bounds(src.crs, "EPSG:4326", *src.bounds)


@pytest.fixture()
def server(tmp_path):
    with StacServer(tmp_path / "assets") as srv:
        yield srv


def request(srv: StacServer, **load) -> FetchRequest:
    return FetchRequest(SearchRequest(geometry=bbox_geometry(scene_bbox()), datetime=PERIOD, catalog=srv.url),
                        LoadOptions(**load))


def read_all(path, names):
    scene = open_scene(path)
    values, valid = scene.read(names, Window(0, 0, scene.grid.width, scene.grid.height))
    return values, valid


def test_safe_names():
    assert safe_name("S2A_T33TWM_20150820T100016_L2A") == "S2A_T33TWM_20150820T100016_L2A"
    for evil in ("../../etc/passwd", "/abs/path", ".hidden", "a\x00b", "", "..", "x" * 500):
        name = safe_name(evil)
        assert name and "/" not in name and not name.startswith(".") and len(name) <= 96 and "\x00" not in name
    assert safe_name("a/b") != safe_name("a_b")  # changed ids carry a hash: no collisions


def test_l2a_offset_applied_once():
    class Item:
        def __init__(self, applied, baseline):
            self.properties = {"earthsearch:boa_offset_applied": applied, "s2:processing_baseline": baseline}
            asset = type("A", (), {"extra_fields": {"raster:bands": [{"data_type": "uint16", "scale": 0.0001,
                                                                        "offset": -0.1}]}})()
            self.assets = {"red": asset}

    assert band_scaling(Item(True, "05.10"), "red", "red") == (0.0001, 0.0)
    assert band_scaling(Item(False, "05.10"), "red", "red") == (0.0001, -0.1)
    assert band_scaling(Item(False, "02.14"), "red", "red") == (0.0001, 0.0)
    assert band_scaling(Item(False, "05.10"), "red", "scl") == (1.0, 0.0)


def test_arguments_are_checked():
    with pytest.raises(InputError):
        parse_datetime("2023-08-01..2023-09-01")
    with pytest.raises(InputError):
        parse_datetime("2023-09-01/2023-08-01")
    assert parse_datetime("2023-06-01/..") == "2023-06-01/.."
    with pytest.raises(InputError):
        bbox_geometry((9, 51, 10, 50))
    with pytest.raises(InputError):
        bbox_geometry((500100, 5000000, 500000, 5000100), "EPSG:32633")  # only longitudes wrap
    with pytest.raises(InputError):
        resolve_catalog("ftp://example.org")
    with pytest.raises(InputError):
        resolve_catalog("earth-search").collection_id("s1")
    assert resolve_catalog("pc").collection_id("s1") == "sentinel-1-rtc"
    assert utm_crs(14.8, 46.0) == "EPSG:32633" and utm_crs(-70.0, -33.0) == "EPSG:32719"


def test_cdse_without_credentials_fails_first(monkeypatch):
    monkeypatch.delenv("CDSE_S3_ACCESS_KEY", raising=False)
    with pytest.raises(InputError, match="CDSE_S3_ACCESS_KEY"):
        gdal_credentials(resolve_catalog("cdse"))


def test_search_follows_next_links_and_filters_cloud(server):
    found = list_items(request(server).search, FAST)
    assert [i.datetime.date().isoformat() for i in found] == ["2015-07-11", "2015-08-20", "2015-08-30"]
    assert found[0].collection_id == COLLECTION and found[0].properties["proj:code"] == "EPSG:32633"
    assert sum(1 for m, p, s in server.log if p == "/search" and s == 200) == 3  # page size 1: two next links
    clear = SearchRequest(geometry=bbox_geometry(scene_bbox()), datetime=PERIOD, catalog=server.url, max_cloud=10)
    assert [i.properties["eo:cloud_cover"] for i in list_items(clear, FAST)] == [2.0, 4.0]


def test_fetch_cli_end_to_end_then_ask(server, tmp_path):
    out = tmp_path / "scenes"
    bbox = [f"{v:.6f}" for v in scene_bbox()]
    result = run_cli("fetch", "--bbox", *bbox, "--datetime", PERIOD, "--catalog", server.url, "--max-cloud", "10",
                     "--out", out, "--json", "--backoff", "0.05")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [s["date"] for s in summary["scenes"]] == ["2015-08-20", "2015-08-30"]
    assert any(method == "GET" and path.startswith("/assets/") and status == 206 for method, path, status in server.log)
    tif = out / summary["scenes"][0]["file"]
    sidecar = json.loads((out / summary["scenes"][0]["sidecar"]).read_text())
    assert [link["title"] for link in sidecar["links"] if link["rel"] == "derived_from"] == [
        "S2A_T33TWM_20150820T100016_L2A"]
    assert sidecar["properties"]["tscope:query"]["search"]["datetime"] == PERIOD
    assert sidecar["properties"]["tscope:version"]
    with rasterio.open(tif) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.crs.to_epsg() == 32633 and src.res == (10.0, 10.0) and src.nodata == 0
        assert src.descriptions[-1] == "scl" and "red" in src.descriptions and "nir" in src.descriptions
        red = src.descriptions.index("red")
        assert src.scales[red] == pytest.approx(1e-4) and src.offsets[red] == pytest.approx(-0.1)
    # Reflectance survives the +1000 DN encoding (this item) and the offset-applied one (the next).
    for scene, source in ((summary["scenes"][0], EXAMPLES / "slovenia_s2.tif"),
                          (summary["scenes"][1], EXAMPLES.parent / "tests/data/slovenia_s2_t2.tif")):
        got, valid = read_all(out / scene["file"], ["red", "nir"])
        want, want_valid = read_all(source, ["red", "nir"])
        for band in ("red", "nir"):
            assert got[band][valid].mean() == pytest.approx(want[band][want_valid].mean(), rel=0.02)
    answer = run_cli("ask", tif, "What percentage of the image is covered by forest?", "--out", tmp_path / "ans",
                     "--json")
    assert answer.returncode == 0, answer.stderr
    trace = json.loads(answer.stdout)
    assert "Forest covers" in trace["answer"]
    assert any("scene classification" in note for note in trace["notes"])  # SCL used as the cloud mask


def test_scl_nearest_reflectance_bilinear(server, tmp_path):
    summary = fetch(request(server, resolution=15.0, bands=("red", "nir", "scl")), tmp_path, policy=FAST)
    values, valid = read_all(tmp_path / summary["scenes"][1]["file"], ["red", "scl"])
    assert set(np.unique(values["scl"][valid]).tolist()) <= {4.0, 5.0, 6.0, 11.0}  # no blended classes
    with rasterio.open(tmp_path / summary["scenes"][1]["file"]) as src:
        assert src.res == (15.0, 15.0)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    source = read_all(EXAMPLES / "slovenia_s2.tif", ["red"])[0]["red"]
    assert values["red"][valid].mean() == pytest.approx(source.mean(), rel=0.03)


def test_block_by_block_equals_one_block(server, tmp_path, monkeypatch):
    """Memory holds one block: the scene written in 64-px blocks equals the scene read as one block."""
    import tscope.stac.load as load

    options = dict(bands=("red", "nir", "scl"), mask_clouds=True)
    whole = fetch(request(server, **options), tmp_path / "whole", policy=FAST)
    monkeypatch.setattr(load, "BLOCK", 64)
    blocks = fetch(request(server, **options), tmp_path / "blocks", policy=FAST)
    for a, b in zip(whole["scenes"], blocks["scenes"], strict=True):
        with rasterio.open(tmp_path / "whole" / a["file"]) as one, \
                rasterio.open(tmp_path / "blocks" / b["file"]) as many:
            assert one.width > 64 and one.height > 64  # several blocks each way
            assert np.array_equal(one.read(), many.read())
            assert one.profile == many.profile and one.tags() == many.tags()
        assert (a["aoi_cloud_percent"], a["aoi_nodata_percent"]) == (b["aoi_cloud_percent"], b["aoi_nodata_percent"])
    assert all(s["aoi_nodata_percent"] > 0 for s in whole["scenes"])  # pixels outside the AOI, counted per block


def test_retries_on_5xx_then_succeeds(server, tmp_path):
    server.faults.errors["/search"] = [500, 503]
    server.faults.errors["/assets/S2A_T33TWM_20150820T100016_L2A_B04.tif"] = [502, 500]
    summary = fetch(request(server, bands=("red", "nir")), tmp_path, policy=FAST)
    assert len(summary["scenes"]) == 3
    statuses = [s for _, p, s in server.log if p == "/search"]
    assert statuses[:3] == [500, 503, 200]
    red = [s for _, p, s in server.log if p.endswith("20150820T100016_L2A_B04.tif")]
    assert red[:2] == [502, 500] and red[-1] in (200, 206)


def test_timeout_is_a_clear_failure(server, tmp_path):
    server.faults.delay["/search"] = 2.0
    policy = NetworkPolicy(timeout=0.4, connect_timeout=0.4, retries=1, backoff=0.05)
    with pytest.raises(RuntimeFailure, match="no answer within 0.4 s"):
        fetch(request(server), tmp_path / "out", policy=policy)
    assert not (tmp_path / "out").exists()


def test_truncated_asset_leaves_no_file(server, tmp_path):
    server.faults.truncate["/assets/S2A_T33TWM_20150830T100026_L2A_B08.tif"] = 0.5
    out = tmp_path / "out"
    with pytest.raises(RuntimeFailure, match="truncated"):
        fetch(request(server, bands=("red", "nir")), out, policy=NetworkPolicy(timeout=5, retries=1, backoff=0.05))
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not any("20150830" in name for name in leftovers), leftovers  # no scene of the truncated item
    assert not any(".partial" in name or name == "fetch.json" for name in leftovers), leftovers


def test_empty_search_and_refused_access(server, tmp_path):
    server.faults.empty = True
    result = run_cli("fetch", "--bbox", *map(str, scene_bbox()), "--datetime", PERIOD, "--catalog", server.url,
                     "--out", tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("tscope: error: no sentinel-2-c1-l2a items") and result.stderr.count("\n") == 1
    server.faults.empty = False
    server.faults.errors["/search"] = [401]
    with pytest.raises(RuntimeFailure, match="access refused"):
        list_items(request(server).search, FAST)
