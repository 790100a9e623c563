"""Scene scale: wall time and peak RSS of `tscope ask` beside a bare rasterio read of the same bands.

    python benchmarks/scene_scale.py [--sizes 2048,10980] [--overviews with,without] [--tasks ...] [--workdir DIR]
                                     [--repeat N]

Builds (once, cached in --workdir) a synthetic 6-band uint16 Sentinel-2 L2A-like scene per size, tiled
512 x 512 and deflate-compressed, in two files: one with internal overviews like the COGs STAC catalogues
serve, one without (most user files and many archive products). Values are synthetic (smooth random
land-cover fields with per-class spectra and noise) but the I/O and compute are those of a real tile.
Each question runs in a fresh process; the baseline, also in a fresh process, only reads the bands that
question needs, window by window, with rasterio. Prints one Markdown table; with --repeat N, each row is
the median of N alternating runs (times, ratio) and the largest peak RSS, since a shared machine's
times vary by a fifth from one run to the next.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from tscope.reason import clouds

BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
# Surface reflectance per class for BANDS (water, forest, grassland, built-up, bare soil).
SPECTRA = np.array([
    [0.05, 0.06, 0.04, 0.02, 0.01, 0.01],
    [0.02, 0.05, 0.03, 0.30, 0.12, 0.05],
    [0.04, 0.08, 0.05, 0.35, 0.22, 0.12],
    [0.12, 0.13, 0.15, 0.20, 0.25, 0.22],
    [0.10, 0.14, 0.20, 0.25, 0.35, 0.30],
], dtype=np.float32)
# Every single-scene question type, with the bands it reads at full resolution: its rules' bands plus
# red, green and blue for the quicklook. Water (USGS DSWE) needs all six; so does the cloud model when the
# clouds extra is installed (its input comes from the same pass), and the baseline then reads all six.
FIVE = ["blue", "green", "red", "nir", "swir16"]
QUESTIONS = {
    "coverage": ("What percentage of the image is covered by forest?", FIVE),
    "area": ("What is the area of water in km2?", BANDS),
    "compare": ("Which is larger, forest or grassland?", FIVE),
    "adjacency": ("Does the forest border the water?", BANDS),
    "distance": ("How far is the water from the built-up area?", BANDS),
    "count": ("How many water regions are there?", BANDS),
    "existence": ("Is there any bare soil?", FIVE),
    "locate": ("Where is the water?", BANDS),
}
BLOCK = 512


def _field(rows: np.ndarray, cols: np.ndarray, seed: int, size: int) -> np.ndarray:
    """A smooth random field in [-1, 1]: a few sinusoids of random direction and phase (deterministic)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((rows.size, cols.size), np.float32)
    for _ in range(6):
        fx, fy = rng.uniform(2, 12, 2) * 2 * np.pi / size
        px, py = rng.uniform(0, 2 * np.pi, 2)
        out += np.sin(cols[None, :] * fx + px).astype(np.float32) * np.cos(rows[:, None] * fy + py).astype(np.float32)
    return out / 3


def build_tile(path: Path, size: int, overviews: bool) -> None:
    profile = dict(driver="GTiff", width=size, height=size, count=len(BANDS), dtype="uint16", nodata=0,
                   crs="EPSG:32633", transform=Affine(10, 0, 399960, 0, -10, 5100000), tiled=True,
                   blockxsize=BLOCK, blockysize=BLOCK, compress="deflate", zlevel=1, predictor=2,
                   interleave="band", BIGTIFF="IF_SAFER", num_threads="ALL_CPUS")
    rng = np.random.default_rng(42)
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.descriptions = tuple(BANDS)
        for row in range(0, size, 2048):
            rows = np.arange(row, min(size, row + 2048))
            for col in range(0, size, 2048):
                cols = np.arange(col, min(size, col + 2048))
                water, vegetation, urban = (_field(rows, cols, s, size) for s in (1, 2, 3))
                cls = np.full(water.shape, 2, np.uint8)  # grassland
                cls[vegetation > 0.2] = 1  # forest
                cls[urban > 0.55] = 3
                cls[(urban < -0.6) & (vegetation < 0)] = 4
                cls[water < -0.55] = 0
                reflect = SPECTRA[cls].transpose(2, 0, 1)
                reflect = reflect * rng.normal(1.0, 0.08, reflect.shape).astype(np.float32)
                dn = np.clip(reflect * 10000, 1, 65535).astype(np.uint16)
                dst.write(dn, window=Window(int(cols[0]), int(rows[0]), cols.size, rows.size))
        if overviews:
            dst.build_overviews([f for f in (2, 4, 8, 16, 32) if size // f >= 256], Resampling.average)
    tmp.rename(path)


READ_BASELINE = """
import sys, time, resource, rasterio
from rasterio.windows import Window
path, names = sys.argv[1], sys.argv[2].split(",")
t0 = time.perf_counter()
with rasterio.open(path) as src:
    idx = [src.descriptions.index(n) + 1 for n in names]
    for row in range(0, src.height, 1024):
        for col in range(0, src.width, 1024):
            w = Window(col, row, min(1024, src.width - col), min(1024, src.height - row))
            src.read(idx, window=w)
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

# Imports are timed apart on both sides (the baseline's `import rasterio` is outside its timer too):
# they are a constant of a fresh process (1-2 s here), not a cost of the scene's size.
ASK = """
import sys, time, resource
t_import = time.perf_counter()
import tscope.ask, tscope.reason.measures, tscope.reason.spectral
from tscope.cli.main import run
t0 = time.perf_counter()
rc = run(sys.argv[1:])
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rc, t0 - t_import,
      file=sys.stderr)
"""


def _measure(code: str, *args: str) -> tuple[float, int, str, float]:
    """(seconds, peak RSS bytes, stdout, import seconds) of ``code`` run in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    stream = result.stderr if code is ASK else result.stdout
    last = stream.strip().splitlines()[-1].split()
    if code is ASK and last[2] != "0":
        raise RuntimeError(f"tscope ask failed: {result.stderr}")
    return float(last[0]), int(last[1]), result.stdout, float(last[3]) if code is ASK else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2048,10980")
    parser.add_argument("--overviews", default="with,without")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tscope-bench")
    parser.add_argument("--tasks", default=",".join(QUESTIONS))
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each pair (bare read, ask) this many times, alternating; report the medians")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print("| scene | overviews | question | bands read | bare read (s) | tscope ask (s) | ratio | peak RSS ask (MiB) |"
          " imports (s) | answer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for variant in args.overviews.split(","):
            tile = args.workdir / f"s2_synthetic_{size}_{variant}_overviews.tif"
            if not tile.exists():
                t0 = time.perf_counter()
                build_tile(tile, size, overviews=variant == "with")
                print(f"built {tile} ({tile.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr)
            for task in args.tasks.split(","):
                question, needs = QUESTIONS[task]
                needs = BANDS if clouds.available() else needs
                out = args.workdir / f"out_{size}_{variant}_{task}"
                runs = []
                for _ in range(args.repeat):
                    read_s, _, _, _ = _measure(READ_BASELINE, str(tile), ",".join(needs))
                    ask_s, rss, stdout, import_s = _measure(ASK, "ask", str(tile), question, "--out", str(out),
                                                            "--overwrite", "--json", "-q")
                    runs.append((read_s, ask_s, ask_s / read_s, rss, import_s))
                read_s, ask_s, ratio, _, import_s = (statistics.median(column) for column in zip(*runs, strict=True))
                rss = max(run[3] for run in runs)
                answer = json.loads(stdout)["answer"]
                print(f"| {size}² | {variant} | {task} | {len(needs)} | {read_s:.1f} | {ask_s:.1f} |"
                      f" {ratio:.2f} | {rss / 2**20:.0f} | {import_s:.1f} | {answer} |", flush=True)


if __name__ == "__main__":
    main()
