"""Accuracy of the spectral backend on real, independently labelled scenes: tscope vs label vs a naive index.

    python benchmarks/accuracy.py

Every scene and label ships in tests/data (see its README for sources and licences); none was drawn
here. For each (scene, class) it prints the class share in the label, in tscope's answer and in a
naive single-index baseline (one published index and threshold), and each one's IoU with the label.
Shares are of the pixels that count (tscope's valid area, which excludes nodata, clouds and cloud
shadows; the label's own nodata and, for land classes, the label's clouds and shadows are left out of
the IoU). tests/test_accuracy.py holds these numbers within stated tolerances.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from tscope.geo.scene import ReadOptions, open_scene
from tscope.geo.stack import stack_scenes
from tscope.reason.spectral import SpectralBackend

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@dataclass(frozen=True)
class Case:
    scene: Path
    label: Path
    cls: str
    truth: tuple[int, ...]  # label values that are the class
    ignore: tuple[int, ...]  # label values left out (nodata; clouds and shadows for land classes)
    baseline: str  # name of the naive index rule
    gsd: float | None = None
    rule_only: bool = False  # score the class rule alone, on the label's clear pixels (no cloud masking)
    cloud_model: bool = True  # False: what tscope does without the `clouds` extra (the HOT rule)
    stack_with: Path | None = None  # ask on `tscope stack scene stack_with` (optical + SAR), as a user would


# Naive single-index baselines: one published index, one threshold, no cloud test.
BASELINES = {
    "NDVI > 0.6": lambda b: (b["nir"] - b["red"]) / (b["nir"] + b["red"]) > 0.6,
    "NDWI > 0": lambda b: (b["green"] - b["nir"]) / (b["green"] + b["nir"]) > 0,
    "NDBI > 0": lambda b: (b["swir16"] - b["nir"]) / (b["swir16"] + b["nir"]) > 0,
    "HOT > 0": lambda b: b["blue"] - 0.5 * b["red"] - 0.08 > 0,
    # The fixed threshold of the Sen1Floods11 paper's baseline family (calm water is below about -15 dB in VV).
    "VV < -15 dB": lambda b: 10 * np.log10(b["vv"]) < -15,
}
BASELINE_BANDS = {"NDVI > 0.6": ["red", "nir"], "NDWI > 0": ["green", "nir"], "NDBI > 0": ["nir", "swir16"],
                  "HOT > 0": ["blue", "red"], "VV < -15 dB": ["vv"]}

# eo-learn LULC: 0 nodata, 2 forest, 8 artificial surface. ukis-csmask: 0 cloud shadow, 1 water, 3 land, 4 cloud.
# Sen1Floods11 hand label: -1 no data, 0 not water, 1 water (one co-registered Sentinel-1/Sentinel-2 flood chip).
S1F11_S2, S1F11_S1, S1F11_LABEL = (DATA / f"sen1floods11_spain_{n}.tif" for n in ("s2", "s1", "label"))
CASES = {
    "slovenia_s2 forest": Case(EXAMPLES / "slovenia_s2.tif", DATA / "slovenia_lulc.tif", "forest", (2,), (0,),
                               "NDVI > 0.6"),
    "slovenia_s2_t2 forest": Case(DATA / "slovenia_s2_t2.tif", DATA / "slovenia_lulc.tif", "forest", (2,), (0,),
                                  "NDVI > 0.6"),
    "slovenia_s2 built-up": Case(EXAMPLES / "slovenia_s2.tif", DATA / "slovenia_lulc.tif", "built_up", (8,), (0,),
                                 "NDBI > 0"),
    "ukis_s2_cloudy cloud": Case(DATA / "ukis_s2_cloudy.tif", DATA / "ukis_s2_cloudy_label.tif", "cloud", (4,), (),
                                 "HOT > 0", 30.0),
    "ukis_s2_cloudy cloud (without the clouds extra)": Case(
        DATA / "ukis_s2_cloudy.tif", DATA / "ukis_s2_cloudy_label.tif", "cloud", (4,), (), "HOT > 0", 30.0,
        cloud_model=False),
    "ukis_s2_cloudy water": Case(DATA / "ukis_s2_cloudy.tif", DATA / "ukis_s2_cloudy_label.tif", "water", (1,),
                                 (0, 4), "NDWI > 0", 30.0),
    "ukis_s2_cloudy water (rule only)": Case(DATA / "ukis_s2_cloudy.tif", DATA / "ukis_s2_cloudy_label.tif", "water",
                                             (1,), (0, 4), "NDWI > 0", 30.0, rule_only=True),
    "ukis_l7_cloudy cloud": Case(DATA / "ukis_l7_cloudy.tif", DATA / "ukis_l7_cloudy_label.tif", "cloud", (4,), (),
                                 "HOT > 0", 30.0),
    "ukis_l7_cloudy cloud (without the clouds extra)": Case(
        DATA / "ukis_l7_cloudy.tif", DATA / "ukis_l7_cloudy_label.tif", "cloud", (4,), (), "HOT > 0", 30.0,
        cloud_model=False),
    "ukis_l7_cloudy water": Case(DATA / "ukis_l7_cloudy.tif", DATA / "ukis_l7_cloudy_label.tif", "water", (1,),
                                 (0, 4), "NDWI > 0", 30.0),
    "ukis_l7_cloudy water (rule only)": Case(DATA / "ukis_l7_cloudy.tif", DATA / "ukis_l7_cloudy_label.tif", "water",
                                             (1,), (0, 4), "NDWI > 0", 30.0, rule_only=True),
    "sen1floods11_spain water (Sentinel-2 L1C)": Case(S1F11_S2, S1F11_LABEL, "water", (1,), (-1,), "NDWI > 0"),
    "sen1floods11_spain water (Sentinel-1 VV, VH)": Case(S1F11_S1, S1F11_LABEL, "water", (1,), (-1,), "VV < -15 dB"),
    "sen1floods11_spain water (tscope stack S2 S1)": Case(S1F11_S2, S1F11_LABEL, "water", (1,), (-1,), "NDWI > 0",
                                                          stack_with=S1F11_S1),
}


@dataclass(frozen=True)
class Row:
    label_percent: float
    tscope_percent: float
    baseline_percent: float
    tscope_iou: float
    baseline_iou: float
    source: str


def _iou(pred: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    p, t = pred & where, truth & where
    union = np.count_nonzero(p | t)
    return float(np.count_nonzero(p & t) / union) if union else 1.0


def evaluate(case: Case, backend: SpectralBackend | None = None) -> Row:
    if case.stack_with is None:
        return _evaluate(case, case.scene, backend)
    with tempfile.TemporaryDirectory() as tmp:
        result = stack_scenes([case.scene, case.stack_with], Path(tmp) / "stack")
        return _evaluate(case, Path(result.files[0]), backend)


def _evaluate(case: Case, path: Path, backend: SpectralBackend | None) -> Row:
    backend = backend or SpectralBackend(mask_clouds=not case.rule_only, cloud_model=case.cloud_model)
    scene = open_scene(path, ReadOptions(gsd=case.gsd))
    masks, _ = backend.masks_for(scene, [case.cls])
    mask = masks[case.cls]
    with rasterio.open(case.label) as src:
        label = src.read(1)
    truth = np.isin(label, case.truth)
    labelled = ~np.isin(label, case.ignore)
    scored = labelled & mask.valid
    bands, valid = scene.read(BASELINE_BANDS[case.baseline], Window(0, 0, scene.grid.width, scene.grid.height))
    with np.errstate(divide="ignore", invalid="ignore"):
        naive = BASELINES[case.baseline](bands) & valid
    # The cloud class is scored over every pixel with data; land classes over tscope's valid area
    # (end to end) or the label's clear pixels (rule only).
    area = valid if case.cls == "cloud" else (scored if case.rule_only else mask.valid)
    share = lambda m: 100.0 * np.count_nonzero(m & area) / max(1, np.count_nonzero(area))  # noqa: E731
    label_area = valid & ~np.isin(label, case.ignore)
    return Row(
        label_percent=100.0 * np.count_nonzero(truth & label_area) / max(1, np.count_nonzero(label_area)),
        tscope_percent=share(mask.data),
        baseline_percent=share(naive),
        tscope_iou=_iou(mask.data, truth, scored if case.cls != "cloud" else valid),
        baseline_iou=_iou(naive, truth, scored if case.cls != "cloud" else valid),
        source=mask.source,
    )


def method(source: str) -> str:
    """A rule's or model's source text without its explanation after ':' and its citations."""
    return re.sub(r" \((?:Zha|Wieland|Jones)[^)]*\)", "", source.split(":")[0])


def main() -> None:
    warnings.simplefilter("ignore")  # rasterio's NotGeoreferencedWarning on the plain ukis images
    print("| scene | class | label % | tscope % | naive % (index) | tscope IoU | naive IoU | tscope method |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, case in CASES.items():
        row = evaluate(case)
        scene = f"`{case.scene.name}`" + (f" + `{case.stack_with.name}`" if case.stack_with else "")
        print(f"| {scene} | {name.split(' ', 1)[1]} | {row.label_percent:.2f} | {row.tscope_percent:.2f} |"
              f" {row.baseline_percent:.2f} ({case.baseline}) | {row.tscope_iou:.2f} | {row.baseline_iou:.2f} |"
              f" {method(row.source)} |")


if __name__ == "__main__":
    main()
