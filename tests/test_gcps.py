"""Rasters located by ground control points, as Sentinel-1 GRD files are, are warped by their GCPs.

Each GCP-located file here is the twin of a file with a geotransform: the same ground, the same
pixels, but no CRS and no geotransform, only a 7 x 7 grid of GCPs in longitude/latitude (as
Sentinel-1's). The "bent" twin also shifts each row sideways by up to 5 pixels along a sine, and its
GCPs say so: a smooth geolocation no affine transform fits, which only a warp through the GCPs undoes.
Both twins must give the same valid pixels at the same places (within a pixel): through ``fetch``
(the real recorded Planetary Computer Sentinel-1 RTC item, replayed on 127.0.0.1), ``ask`` (a local
file, a URL and a STAC item) and ``stack``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform as warp_points
from scipy import ndimage

from tests.conftest import run_cli
from tests.stac_server import StacServer, item_crs, recorded_assets, recorded_features, window_box
from tests.test_stac_recorded import S1_POINT, aoi_bbox

RTC = {"type": "Collection", "id": "sentinel-1-rtc", "stac_version": "1.0.0", "license": "proprietary",
       "description": "Sentinel-1 radiometrically terrain corrected backscatter (loopback)", "links": [],
       "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}}}
LINEAR = {"vv": (0.08, 0.005), "vh": (0.02, 0.001)}  # forest, water: linear gamma0
BENDS = [0.0, 5.0]


def lake(shape: tuple[int, int], forest: float, water: float) -> np.ndarray:
    """Forest everywhere but an off-centre rectangle of water (rows 1/4-1/2, columns 1/3-2/3)."""
    h, w = shape
    data = np.full(shape, forest, np.float32)
    data[h // 4:h // 2, w // 3:2 * w // 3] = water
    return data


def gcp_twin(path: Path, dst: Path, bend: float = 0.0, points: int = 7) -> None:
    """Write ``path``'s pixels to ``dst`` located only by GCPs in EPSG:4326 (no CRS, no geotransform).

    With ``bend``, pixel (col, row) of ``dst`` shows the ground of (col + bend * sin(pi * row / h), row)
    of ``path``, and the GCPs place it there.
    """
    with rasterio.open(path) as src:
        data, transform, crs, nodata = src.read(), src.transform, src.crs, src.nodata
        descriptions = src.descriptions
    count, h, w = data.shape

    def shift(row):
        return bend * np.sin(np.pi * np.asarray(row) / h)

    cols = np.floor(np.arange(w)[None, :] + 0.5 + shift(np.arange(h) + 0.5)[:, None]).astype(int)
    inside = (cols >= 0) & (cols < w)
    bent = np.where(inside, data[:, np.arange(h)[:, None], np.clip(cols, 0, w - 1)], nodata).astype(data.dtype)
    grid = [(row, col) for row in np.linspace(0, h, points) for col in np.linspace(0, w, points)]
    xs, ys = zip(*(transform @ (col + shift(row), row) for row, col in grid), strict=True)
    lons, lats = warp_points(crs, "EPSG:4326", xs, ys)
    gcps = [GroundControlPoint(row=row, col=col, x=lon, y=lat)
            for (row, col), lon, lat in zip(grid, lons, lats, strict=True)]
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype, nodata=nodata, tiled=True,
                   blockxsize=64, blockysize=64, compress="DEFLATE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # placed by the GCPs set next
        out = rasterio.open(dst, "w", **profile)
    with out:
        out.gcps = (gcps, rasterio.crs.CRS.from_epsg(4326))
        out.write(bent)
        out.descriptions = descriptions
    with rasterio.open(dst) as check:
        assert check.crs is None and check.transform.is_identity and len(check.gcps[0]) == points ** 2


def near_edges(classes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of a class boundary or of the valid area's edge."""
    edges = np.zeros_like(valid)
    for value in np.unique(classes):
        part = (classes == value) & valid
        edges |= ndimage.binary_dilation(part) & ~ndimage.binary_erosion(part, border_value=1)
    return ndimage.binary_dilation(edges)


def assert_same_places(truth: np.ndarray, warped: np.ndarray, threshold: float, border: int = 0) -> None:
    """Valid pixels and classes (above / below ``threshold``) agree everywhere but within one pixel
    of a boundary (and ``border`` pixels of the raster's sides, which a bent twin does not cover);
    and most of the area is not a boundary at all."""
    valid_t, valid_w = np.isfinite(truth), np.isfinite(warped)
    classes_t = np.where(valid_t, truth > threshold, False)
    classes_w = np.where(valid_w, warped > threshold, False)
    edges = near_edges(classes_t, valid_t)
    if border:
        edges[:, :border] = edges[:, -border:] = True
    assert not np.any((valid_t != valid_w) & ~edges), "valid pixels differ away from the edges"
    assert not np.any((classes_t != classes_w) & valid_t & valid_w & ~edges), "classes differ away from edges"
    assert np.count_nonzero(~edges & valid_t) > 0.7 * valid_t.size


# --- fetch: the real recorded Sentinel-1 RTC item, its assets GCP-located -----------------------------


def rtc_assets(folder: Path, nodata: bool = False) -> tuple[dict, dict]:
    """The recorded RTC item with geotransform assets in ``folder`` (the lake on both polarisations)."""
    feature = recorded_features("planetary-computer-items")[1]
    items = recorded_assets([feature], folder, *S1_POINT, nodata=nodata)
    item = next(iter(items.values()))
    for key, (forest, water) in LINEAR.items():
        path = folder / item["assets"][key]["file"]
        with rasterio.open(path) as src:
            profile, shape = src.profile | {"driver": "GTiff"}, src.shape
        assert profile["transform"].a == 10.0
        if not nodata:
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(lake(shape, forest, water), 1)
    return items, feature


def fetch_vv(server: StacServer, feature: dict, out: Path) -> tuple[np.ndarray, object]:
    result = run_cli("fetch", "--bbox", *aoi_bbox(feature, S1_POINT), "--datetime", "2024-04-19",
                     "--catalog", server.url, "--collection", "sentinel-1-rtc", "--out", out, "--json",
                     "--backoff", "0.05")
    assert result.returncode == 0, result.stderr
    (scene,) = json.loads(result.stdout)["scenes"]
    with rasterio.open(out / scene["file"]) as src:
        assert src.descriptions == ("vv", "vh")
        return src.read(1), (src.crs, src.transform, src.shape)


@pytest.mark.parametrize("bend", BENDS)
def test_fetch_warps_gcp_located_assets_by_their_gcps(tmp_path, bend):
    items, feature = rtc_assets(tmp_path / "truth")
    shutil.copytree(tmp_path / "truth", tmp_path / "gcps")
    for key in LINEAR:
        name = items[feature["id"]]["assets"][key]["file"]
        gcp_twin(tmp_path / "truth" / name, tmp_path / "gcps" / name, bend=bend)
    with StacServer(tmp_path / "truth", recorded=items, collections=[RTC]) as server:
        truth, grid = fetch_vv(server, feature, tmp_path / "out_truth")
    with StacServer(tmp_path / "gcps", recorded=items, collections=[RTC]) as server:
        warped, warped_grid = fetch_vv(server, feature, tmp_path / "out_gcps")
    assert warped_grid == grid  # the AOI grid on the item's CRS (EPSG:32633), as for any item
    assert grid[0].to_epsg() == 32633
    assert_same_places(truth, warped, threshold=0.02)
    assert np.count_nonzero(np.isfinite(warped) & (warped < 0.02)) > 500  # the lake is there
    values = np.unique(warped[np.isfinite(warped)])
    assert np.isclose(values, 0.005).any() and np.isclose(values, 0.08).any()  # the stored values, unscaled


def test_gcp_located_scene_without_valid_pixels_is_an_error(tmp_path):
    items, feature = rtc_assets(tmp_path / "truth", nodata=True)
    for key in LINEAR:
        path = tmp_path / "truth" / items[feature["id"]]["assets"][key]["file"]
        gcp_twin(path, path.with_suffix(".gcp.tif"))
        path.with_suffix(".gcp.tif").replace(path)
    with StacServer(tmp_path / "truth", recorded=items, collections=[RTC]) as server:
        result = run_cli("fetch", "--bbox", *aoi_bbox(feature, S1_POINT), "--datetime", "2024-04-19",
                         "--catalog", server.url, "--collection", "sentinel-1-rtc", "--out", tmp_path / "o",
                         "--backoff", "0.05")
    assert result.returncode == 1, result.stderr
    assert "no valid pixel in the AOI" in result.stderr and feature["id"] in result.stderr
    assert not list((tmp_path / "o").glob("*.tif"))


# --- ask and stack on GCP-located files: local, by URL, as a STAC item -------------------------------


def db_scene(path: Path) -> None:
    """A 120 x 120 px, 10 m dB backscatter scene (vv, vh) on the recorded RTC item's UTM grid."""
    feature = recorded_features("planetary-computer-items")[1]
    minx, _, _, maxy = window_box(feature, *S1_POINT)
    bands = [10 * np.log10(lake((120, 120), *LINEAR[n])) for n in ("vv", "vh")]
    profile = dict(driver="GTiff", width=120, height=120, count=2, dtype="float32", nodata=-9999.0,
                   crs=item_crs(feature), transform=rasterio.Affine(10, 0, minx, 0, -10, maxy))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.stack(bands).astype(np.float32))
        dst.descriptions = ("vv", "vh")


def water_bounds(folder: Path) -> tuple[np.ndarray, float]:
    """The water mask's bounds (x0, y0, x1, y1 in its CRS) and its pixel size."""
    with rasterio.open(folder / "masks" / "01_water.tif") as src:
        mask = src.read(1)
        rows, cols = np.nonzero(mask == 1)
        x0, y0 = src.transform @ (cols.min(), rows.max() + 1)
        x1, y1 = src.transform @ (cols.max() + 1, rows.min())
        assert src.crs.to_epsg() == 32633
        return np.array([x0, y0, x1, y1]), src.transform.a


def ask_water(scene: str | Path, out: Path, *args: str) -> dict:
    result = run_cli("ask", scene, "What percentage of the image is covered by water?", "--out", out, "--json",
                     "--backoff", "0.05", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_ask_and_stack_warp_gcp_located_files(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    truth, bent = assets / "truth.tif", assets / "bent.tif"
    db_scene(truth)
    gcp_twin(truth, bent, bend=5.0)
    # The same bands as a STAC item of single-band assets (Sentinel-1's layout), located by shared GCPs.
    for band, name in enumerate(("vv", "vh"), start=1):
        with rasterio.open(truth) as src, rasterio.open(tmp_path / f"{name}.tif", "w", **(
                src.profile | {"count": 1})) as one:
            one.write(src.read(band), 1)
            one.descriptions = (name,)
        gcp_twin(tmp_path / f"{name}.tif", assets / f"bent_{name}.tif", bend=5.0)

    ask_water(truth, tmp_path / "a_truth")
    box, pixel = water_bounds(tmp_path / "a_truth")
    with StacServer(assets) as server:
        item = {"type": "Feature", "stac_version": "1.0.0", "id": "bent", "bbox": [15.1, 30.3, 15.3, 30.4],
                "geometry": {"type": "Polygon", "coordinates": [[[15.1, 30.3], [15.3, 30.3], [15.3, 30.4],
                                                                 [15.1, 30.4], [15.1, 30.3]]]},
                "properties": {"datetime": "2024-04-19T04:59:04Z"}, "links": [],
                "assets": {name: {"href": f"{server.url}/assets/bent_{name}.tif", "type": "image/tiff",
                                  "roles": ["data"], "raster:bands": [{"data_type": "float32", "nodata": -9999}]}
                           for name in ("vv", "vh")}}
        (tmp_path / "item.json").write_text(json.dumps(item))
        for name, scene in (("local", bent), ("url", f"{server.url}/assets/bent.tif"),
                            ("item", tmp_path / "item.json")):
            answer = ask_water(scene, tmp_path / f"a_{name}", "--sar-format", "db")
            got, got_pixel = water_bounds(tmp_path / f"a_{name}")
            assert got_pixel == pytest.approx(pixel, rel=0.01), name
            assert np.all(np.abs(got - box) <= pixel * 1.01), (name, got - box)
            assert answer["scenes"][0]["crs"] == "EPSG:32633"  # the UTM zone of the GCPs' centre

    # stack: the GCP-located scene warped onto the first scene's grid, as the second date of a pair.
    stacked = run_cli("stack", truth, bent, "--out", tmp_path / "pair")
    assert stacked.returncode == 0, stacked.stderr
    with rasterio.open(tmp_path / "pair" / "t1.tif") as t1, rasterio.open(tmp_path / "pair" / "t2.tif") as t2:
        assert t1.transform == t2.transform and t1.crs == t2.crs
        vv1 = np.where(t1.read_masks(1) > 0, t1.read(1).astype(float), np.nan)
        vv2 = np.where(t2.read_masks(1) > 0, t2.read(1).astype(float), np.nan)
    assert_same_places(vv1, vv2, threshold=float(np.nanmean([np.nanmax(vv1), np.nanmin(vv1)])), border=6)


def test_gcps_without_a_crs_take_assume_crs(tmp_path):
    truth, twin, bare = tmp_path / "truth.tif", tmp_path / "twin.tif", tmp_path / "bare.vrt"
    db_scene(truth)
    gcp_twin(truth, twin)
    with rasterio.open(twin) as src:
        points, size = src.gcps[0], (src.width, src.height)
    # A VRT of the twin whose GCPs name no CRS (rasterio cannot write such GCPs into a GeoTIFF).
    gcps = "".join(f'<GCP Id="{i}" Pixel="{p.col}" Line="{p.row}" X="{p.x}" Y="{p.y}"/>' for i, p in enumerate(points))
    bands = "".join(f'<VRTRasterBand dataType="Float32" band="{b}"><Description>{name}</Description>'
                    f"<NoDataValue>-9999</NoDataValue><SimpleSource><SourceFilename>{twin}</SourceFilename>"
                    f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
                    for b, name in ((1, "vv"), (2, "vh")))
    bare.write_text(f'<VRTDataset rasterXSize="{size[0]}" rasterYSize="{size[1]}"><GCPList>{gcps}</GCPList>'
                    f"{bands}</VRTDataset>")
    refused = run_cli("ask", bare, "What percentage of the image is covered by water?", "--out", tmp_path / "no")
    assert refused.returncode == 2 and "ground control points have no CRS; pass --assume-crs" in refused.stderr
    assert refused.stderr.count("\n") == 1 and not (tmp_path / "no").exists()
    ask_water(bare, tmp_path / "yes", "--assume-crs", "EPSG:4326")
    ask_water(truth, tmp_path / "truth")
    box, pixel = water_bounds(tmp_path / "truth")
    assert np.all(np.abs(water_bounds(tmp_path / "yes")[0] - box) <= pixel * 1.01)
