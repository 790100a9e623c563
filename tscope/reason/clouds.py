"""Clouds and cloud shadows from a trained model: ukis-csmask (Wieland et al. 2019; 2022), when installed.

ukis-csmask ships ONNX U-Nets trained on hand-labelled Sentinel-2 and Landsat scenes (SPARCS,
CloudSEN12+) for Level-1C (top of atmosphere) and Level-2A (surface) reflectance, with 6 bands
(blue, green, red, nir, swir16, swir22) or 4 (blue, green, red, nir). It is an optional extra
(``pip install tscope[clouds]``); without it, or without those bands, the rules of
``models/spectral.toml`` (Sentinel-2 SCL, else the HOT test) mask clouds and nothing masks shadows.

The model runs once per scene on a coarser grid: cells of ``factor`` x ``factor`` pixels of about 30 m
(what the models were trained on), coarser still for large scenes so that it never sees more than
``MAX_SIDE`` cells a side (a full Sentinel-2 tile runs at 220 m, 500 px a side: clouds and their
shadows are hundreds of metres across, and this bounds the model's cost at about a second). Its
input is a :class:`~tscope.geo.preview.Preview` (the mean of each cell's valid pixels) filled by the
windowed pass that computes the masks (the quicklook's preview, which holds the model's bands too,
coarsened): a decimated read of its own would read the whole scene a second time in a file without
overviews, and would make the answer depend on whether it has them.
Each pixel of the analysis grid then takes the class of its cell.

Dark water looks like cloud shadow, and the model calls much of it shadow. Given a water test (the
``shadow_water`` index of the rules: DSWE's band-comparison tests, which dimming alone does not pass),
shadow cells that pass it are water under a shadow or dark water, not shadowed land: they are clear.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from tscope.geo.preview import Preview
from tscope.geo.scene import Scene

MODEL_GSD_M = 30.0
# The model takes 256-px tiles: 512 px a side is 2 x 2 tiles.
MAX_SIDE = 512
BANDS_6 = ("blue", "green", "red", "nir", "swir16", "swir22")
BANDS_4 = BANDS_6[:4]
CLEAR, CLOUD, SHADOW = 0, 1, 2  # the model's classes


@dataclass(frozen=True)
class CloudMap:
    """Classes (0 clear, 1 cloud, 2 cloud shadow) on cells of ``factor`` x ``factor`` analysis-grid pixels."""

    classes: np.ndarray
    factor: int
    source: str
    gsd_m: float | None

    def window(self, window: Window) -> tuple[np.ndarray, np.ndarray] | None:
        """(cloud, shadow) boolean arrays for ``window`` of the analysis grid, each pixel taking its cell's
        class; None when every cell under the window is clear (most windows of most scenes)."""
        f = self.factor
        r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        cells = self.classes[r0 // f : (r0 + h - 1) // f + 1, c0 // f : (c0 + w - 1) // f + 1]
        if not cells.any():
            return None
        block = np.repeat(np.repeat(cells, f, axis=0), f, axis=1)[r0 % f : r0 % f + h, c0 % f : c0 % f + w]
        return block == CLOUD, block == SHADOW


def product_level(scene: Scene) -> str:
    """"l1c" for top-of-atmosphere products, "l2a" for surface reflectance.

    Level-1 presets, files whose metadata says Level-1 or TOA, and files with the cirrus band (B10,
    which Level-2A products drop) are top of atmosphere; everything else (Earth Search L2A, most
    analysis-ready files) is taken as surface reflectance.
    """
    preset = scene.band_map.preset.name if scene.band_map.preset else ""
    if preset in ("s2-l1c", "landsat8") or scene.has("cirrus"):
        return "l1c"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(scene.path) as src:
            tags = " ".join(str(v) for v in src.tags().values())
    return "l1c" if _LEVEL1.search(tags) else "l2a"


_LEVEL1 = re.compile(r"\b(L1C?|L1TP|Level-?1C?|TOA)\b", re.IGNORECASE)


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import ukis_csmask  # noqa: F401
    except ImportError:
        return False
    return True



def usable(scene: Scene) -> bool:
    """Whether the model can mask this scene: optical, with at least blue, green, red and nir."""
    return scene.kind == "optical" and all(scene.has(b) for b in BANDS_4) and available()


def coarse_factor(scene: Scene, base: int = 1) -> int:
    """Side, in analysis-grid pixels, of the model's cells (see the module docstring): a multiple of
    ``base``, so that the cells are whole cells of a preview with that factor."""
    grid = scene.grid
    longest = max(grid.width, grid.height)
    try:
        size = min(grid.pixel_size_m())
    except Exception:  # noqa: BLE001 - a CRS without a ground metric: take the pixels as they are
        size = MODEL_GSD_M
    factor = max(1, round(MODEL_GSD_M / size)) if grid.units == "m" else 1
    factor = max(factor, math.ceil(longest / MAX_SIDE))
    return math.ceil(factor / base) * base


def input_bands(scene: Scene) -> tuple[str, ...]:
    """The bands the model takes from ``scene``: a preview filled by the caller's pass must hold them."""
    return BANDS_6 if all(scene.has(b) for b in BANDS_6) else BANDS_4


def model_input(filled: Preview, scene: Scene) -> Preview:
    """The model's input: ``filled`` (holding :func:`input_bands`) on the model's cells."""
    factor = coarse_factor(scene, filled.factor)
    return filled.coarsened(factor // filled.factor, input_bands(scene))


def start_loading(scene: Scene) -> Future:
    """Start loading the model ``scene`` needs (most of a second) in a background thread, e.g. before the
    values are checked and the pass runs: on a small scene the whole pass takes less than the load.

    Loads run one at a time, so passes that ``batch`` runs at once load each model once.
    """
    return _LOADER.submit(_load_for, scene)


def _load_for(scene: Scene):
    # The product level is read from the file's tags in the loader thread too: for a remote scene that is
    # a request the caller need not wait for.
    return _session(_model_file(input_bands(scene), product_level(scene)))


_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tscope-cloud-model")


@cache
def _session(model_file: Path):
    """One onnxruntime session per model and process (loading a 40 MB model takes most of a second)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # Without the arena, the few hundred MB a run takes go back when it ends instead of staying for the
    # rest of the answer (polygons, COGs); one tile per run measured faster here than four, and smaller.
    options.enable_cpu_mem_arena = False
    return onnxruntime.InferenceSession(str(model_file), sess_options=options, providers=["CPUExecutionProvider"])


def _model_file(bands: tuple[str, ...], level: str) -> Path:
    import ukis_csmask

    return Path(ukis_csmask.__file__).parent / f"model_{len(bands)}b_{level}.onnx"


def predict(image: np.ndarray, bands: tuple[str, ...], level: str) -> np.ndarray:
    """Classes (0 clear, 1 cloud, 2 shadow) of a (rows, cols, bands) reflectance image, with the package's model.

    The model takes 256 x 256 tiles normalised by the statistics in its JSON file (as ukis-csmask's
    ``CSmask`` does). ``CSmask`` itself is not used: it loads the model anew on every call and runs
    20 %-overlapping tiles, four times the pixels on a 512-px image; here the image is already coarse,
    so it is cut into non-overlapping tiles (edges padded by reflection) and the session is reused.
    """
    model_file = _model_file(bands, level)
    meta = json.loads(model_file.with_suffix(".json").read_text())
    mean, std = (np.asarray(v, np.float32) for v in meta["data"]["dataset_statistics"]["img"])
    order = [bands.index(b) for b in meta["data"]["dataset_statistics"]["band_names"]]
    tile = int(meta["data"]["target_size"][0])
    rows, cols = image.shape[:2]
    padded_rows, padded_cols = -(-rows // tile) * tile, -(-cols // tile) * tile
    x = (image[..., order] - mean) / std
    x = np.pad(x, ((0, padded_rows - rows), (0, padded_cols - cols), (0, 0)), mode="symmetric")
    tiles = (x.reshape(padded_rows // tile, tile, padded_cols // tile, tile, len(order))
             .transpose(0, 2, 4, 1, 3).reshape(-1, len(order), tile, tile).astype(np.float32))
    session = _session(model_file)
    name = session.get_inputs()[0].name
    classes = np.concatenate([np.argmax(session.run(None, {name: tiles[i:i + 1]})[0], axis=1)
                              for i in range(len(tiles))]).astype(np.uint8)
    out = (classes.reshape(padded_rows // tile, padded_cols // tile, tile, tile)
           .transpose(0, 2, 1, 3).reshape(padded_rows, padded_cols))
    return np.ascontiguousarray(out[:rows, :cols])


WaterTest = Callable[[dict[str, np.ndarray]], np.ndarray]


def model_cloud_map(scene: Scene, filled: Preview, water: WaterTest | None = None) -> CloudMap:
    """Run ukis-csmask's model on ``filled``, the :func:`model_input` of ``scene``.

    ``water`` maps the coarse image's bands (blue ... swir22, reflectance) to a boolean image: shadow
    cells where it holds are taken as clear (water), not shadow. It needs the 6-band input.
    """
    bands = tuple(filled.names)
    level = product_level(scene)
    raw = {b: filled.band(b) for b in bands}
    # A cell without valid pixels is NaN; a NaN would spread through the convolutions to its neighbours.
    image = np.stack([np.nan_to_num(raw[b], nan=0.0, posinf=0.0, neginf=0.0) for b in bands], axis=-1)
    classes = predict(image.astype(np.float32), bands, level)
    kept_water = ""
    if water is not None and bands == BANDS_6:
        with np.errstate(divide="ignore", invalid="ignore"):
            is_water = np.asarray(water(raw), dtype=bool)
        classes[(classes == SHADOW) & is_water] = CLEAR
        kept_water = "; shadow cells that pass DSWE's band-comparison water tests kept as water"
    grid = scene.grid
    gsd = None
    if grid.units == "m":
        gsd = round(min(grid.pixel_size_m()) * filled.factor, 1)
    version = metadata.version("ukis-csmask")
    grid_text = f"{gsd:g} m grid" if gsd else f"{classes.shape[1]} x {classes.shape[0]} px grid"
    source = (f"ukis-csmask {version} {len(bands)}-band {level.upper()} U-Net (Wieland et al. 2019), "
              f"clouds and cloud shadows, on a {grid_text}{kept_water}")
    return CloudMap(classes=classes, factor=filled.factor, source=source, gsd_m=gsd)
