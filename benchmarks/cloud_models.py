"""Which cloud model: ukis-csmask vs s2cloudless vs the HOT rule, on real scenes (evidence for the `clouds` extra).

    python benchmarks/cloud_models.py [SHARED_DATA_DIR]

Uses eo-learn's five Sentinel-2 L1C scenes (shared/data/eolearn-slovenia: scene 0 hazy, 1 thin cloud,
2-4 clear; no cloud label) and the two hand-labelled cloudy scenes of tests/data (ukis-csmask's test
files). s2cloudless needs 10 Level-1C bands, so it runs on the eo-learn scenes only, and only when
installed (`pip install s2cloudless`); it is not a tscope dependency. Prints Markdown tables.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
L1C = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
SIX = ["blue", "green", "red", "nir", "swir16", "swir22"]
SIX_IN_L1C = [1, 2, 3, 7, 11, 12]


def hot(b: np.ndarray) -> np.ndarray:
    """tscope's fallback rule on (..., 6) reflectance in SIX order."""
    blue, green, red, swir16 = b[..., 0], b[..., 1], b[..., 2], b[..., 4]
    return (blue - 0.5 * red - 0.08 > 0) & (blue > 0.2) & ((green - swir16) / (green + swir16) < 0.4)


def csmask(b: np.ndarray) -> tuple[np.ndarray, float]:
    from ukis_csmask.mask import CSmask

    t0 = time.perf_counter()
    classes = CSmask(b.astype(np.float32), band_order=SIX, product_level="l1c", invalid_buffer=1).csm[..., 0]
    return classes, time.perf_counter() - t0


def main() -> None:
    warnings.simplefilter("ignore")
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    scenes = np.load(shared / "eolearn-slovenia" / "REFERENCE_SCENES.npy")
    try:
        from s2cloudless import S2PixelCloudDetector

        detector = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2, all_bands=True)
        s2c = detector.get_cloud_masks(scenes)
    except ImportError:
        s2c = None
    print("| eo-learn scene | HOT rule cloud % | ukis-csmask cloud % | ukis-csmask shadow % | s2cloudless cloud % |")
    print("|---|---:|---:|---:|---:|")
    for i, scene in enumerate(scenes):
        six = scene[..., SIX_IN_L1C]
        classes, _ = csmask(six)
        other = f"{100 * s2c[i].mean():.1f}" if s2c is not None else "not installed"
        print(f"| {i} | {100 * hot(six).mean():.1f} | {100 * np.mean(classes == 1):.1f} |"
              f" {100 * np.mean(classes == 2):.1f} | {other} |")
    print("\n| labelled scene | cloud IoU HOT rule | cloud IoU ukis-csmask | shadow IoU ukis-csmask | ukis-csmask s |")
    print("|---|---:|---:|---:|---:|")
    for name in ("ukis_s2_cloudy", "ukis_l7_cloudy"):
        with rasterio.open(ROOT / "tests/data" / f"{name}.tif") as src:
            six = np.moveaxis(src.read().astype(np.float32) * 1e-4, 0, -1)
        with rasterio.open(ROOT / "tests/data" / f"{name}_label.tif") as src:
            label = src.read(1)
        classes, seconds = csmask(six)

        def iou(a: np.ndarray, b: np.ndarray) -> float:
            return float(np.count_nonzero(a & b) / np.count_nonzero(a | b))

        print(f"| {name} | {iou(hot(six), label == 4):.2f} | {iou(classes == 1, label == 4):.2f} |"
              f" {iou(classes == 2, label == 0):.2f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
