"""`tscope fetch` peak memory and time against AOI size, beside a whole-AOI odc-stac read.

    python benchmarks/fetch_memory.py [--resolutions 10,2,1,0.5]

Serves the bundled Slovenia Sentinel-2 scene (12 bands + SCL as one COG per band) from a STAC API on
127.0.0.1 (tests/stac_server.py) and fetches one scene at finer and finer pixel sizes, so the AOI grid
grows from about 200 x 200 to 4000 x 4000 px while the HTTP traffic stays the same. Each run is a fresh
process. Two baselines, each in a fresh process too: the plain `odc.stac.load(..., chunks=None)` of the
same bands onto the same grid with fetch's resampling (the whole AOI in memory, nothing written), and
that read followed by writing the COG from memory (how fetch worked before it went block by block).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY = "2015-08-20"
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from tests.stac_server import COLLECTION  # noqa: F401 - same import cost in both children
from tscope.stac.fetch import FetchRequest, fetch
from tscope.stac.http import NetworkPolicy
from tscope.stac.load import CATEGORICAL, LoadOptions, aoi_grid, choose_bands, group_items, _stac_cfg
from tscope.stac.search import SearchRequest, bbox_geometry, search

url, bbox, day, resolution, mode, out = sys.argv[1:7]
request = FetchRequest(SearchRequest(geometry=bbox_geometry(json.loads(bbox)), datetime=day, catalog=url),
                       LoadOptions(resolution=float(resolution)))
grid = aoi_grid(request.search.geometry, request.load)
group = group_items(search(request.search, NetworkPolicy()))[0]
bands = choose_bands(group, None)
start = time.perf_counter()
if mode == "fetch":
    fetch(request, out, policy=NetworkPolicy(), items=group)
else:
    import odc.stac
    from odc.geo.geobox import GeoBox
    # fetch's resampling (bilinear; nearest for SCL): odc-stac's default, nearest, took less than half
    # the time on a grid 40x finer than the assets, which made fetch look 2.3x slower than this read.
    resampling = {key: "nearest" if name in CATEGORICAL else request.load.resampling for name, key in bands.items()}
    ds = odc.stac.load(group, bands=list(bands.values()), geobox=GeoBox((grid.height, grid.width), grid.transform,
                       grid.crs.to_wkt()), groupby=lambda item, parsed, idx: 0, chunks=None,
                       resampling=resampling, stac_cfg=_stac_cfg(group, bands), fail_on_error=True)
    ds.load()
    if mode == "read+write":  # what fetch did before: the whole AOI in memory, then one COG from it
        import numpy as np
        import rasterio.shutil
        from rasterio.io import MemoryFile
        data = np.stack([ds[key].isel(time=0).values for key in bands.values()])
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=grid.width, height=grid.height, count=len(data), dtype=data.dtype,
                          crs=grid.crs, transform=grid.transform, nodata=0, tiled=True) as tmp:
                tmp.write(data)
            with mem.open() as src:
                rasterio.shutil.copy(src, out + ".tif", driver="COG", compress="DEFLATE", blocksize=512,
                                     num_threads="ALL_CPUS")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "width": grid.width, "height": grid.height, "bands": len(bands),
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(url: str, bbox: list[float], resolution: float, mode: str, out: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, url, json.dumps(bbox), DAY, str(resolution), mode, str(out)],
                            capture_output=True, text=True, cwd=ROOT, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{mode} at {resolution} m failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    import rasterio
    from rasterio.warp import transform_bounds

    from tests.stac_server import StacServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="10,2,1,0.5", help="pixel sizes in metres, comma-separated")
    args = parser.parse_args()
    with rasterio.open(ROOT / "examples" / "slovenia_s2.tif") as src:
        bbox = list(transform_bounds(src.crs, "EPSG:4326", *src.bounds))
    print("| pixel size | AOI grid (px) | the scene as uint16 | read: s | read: peak RSS "
          "| read + write in memory: s | peak RSS | `fetch`: s | `fetch`: peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, StacServer(Path(tmp) / "assets") as server:
        for k, resolution in enumerate(float(r) for r in args.resolutions.split(",")):
            bare = run(server.url, bbox, resolution, "read", Path(tmp) / f"read{k}")
            whole = run(server.url, bbox, resolution, "read+write", Path(tmp) / f"whole{k}")
            fetched = run(server.url, bbox, resolution, "fetch", Path(tmp) / f"fetch{k}")
            size_mib = bare["bands"] * 2 * bare["width"] * bare["height"] / 2**20
            print(f"| {resolution:g} m | {bare['width']} x {bare['height']} | {size_mib:.0f} MiB "
                  f"| {bare['seconds']:.1f} | {bare['rss_mib']:.0f} MiB "
                  f"| {whole['seconds']:.1f} | {whole['rss_mib']:.0f} MiB "
                  f"| {fetched['seconds']:.1f} | {fetched['rss_mib']:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
