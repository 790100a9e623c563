"""Stacks: scenes aligned onto one grid and written as COGs that ``tscope ask`` reads directly.

Two cases, one mechanism:

* optical + SAR: the SAR scene is resampled onto the optical grid and both are written as one COG
  (``stack.tif``: the optical bands, then ``vv``/``vh``...);
* a pre/post pair on different CRSs and pixel sizes: both are written on one grid as ``t1.tif`` and
  ``t2.tif``, pixel for pixel aligned.

Values are physical (reflectance, linear SAR power) in float32, NaN for nodata, band descriptions
are common names. Resampling is explicit and happens on physical values (complex SAR becomes power
first; dB becomes linear power, so averaging is energy-preserving); categorical bands (``scl``)
always use nearest neighbour. Reading and writing go window by window, so memory holds one block.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from tscope import __version__
from tscope.errors import InputError
from tscope.geo.bands import SAR_NAMES
from tscope.geo.grid import Grid
from tscope.geo.remote import record_path
from tscope.geo.scene import CATEGORICAL_BANDS as CATEGORICAL
from tscope.geo.scene import ReadOptions, Scene, analysis_grid, open_scene
from tscope.geo.writers import atomic_path, rollback_on_failure, scratch_path, sweep_partials, write_json
from tscope.limits import check_pixels

RESAMPLING = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode", "min", "max", "med")
MODES = ("auto", "stack", "pair")
BLOCK = 512
# GDAL's block cache while writing: its default (5 % of RAM) lets RSS grow with the raster's size;
# tiled files need only a few rows of blocks.
WRITE_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class StackOptions:
    """The target grid and the resampling of each kind of band.

    ``crs``/``resolution`` None: the first scene's CRS and pixel size. The grid covers the area all
    scenes overlap, its pixel edges on the first scene's (or, with ``crs``/``resolution``, on multiples
    of the pixel size). ``resampling`` applies to optical bands, ``sar_resampling`` to SAR power.
    """

    crs: str | None = None
    resolution: float | None = None
    resampling: str = "bilinear"
    sar_resampling: str = "average"
    mode: str = "auto"

    def __post_init__(self) -> None:
        for option, value in (("--resampling", self.resampling), ("--sar-resampling", self.sar_resampling)):
            if value not in RESAMPLING:
                raise InputError(f"{option} must be one of {', '.join(RESAMPLING)}")
        if self.mode not in MODES:
            raise InputError(f"--mode must be one of {', '.join(MODES)}")
        if self.resolution is not None and (not math.isfinite(self.resolution) or self.resolution <= 0):
            raise InputError("--resolution must be a positive number of CRS units")

    def resampling_for(self, name: str) -> str:
        if name in CATEGORICAL:
            return "nearest"
        return self.sar_resampling if name in SAR_NAMES else self.resampling


@dataclass
class StackResult:
    mode: str
    grid: Grid
    files: list[Path]
    record: Path
    bands: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "files": [str(f) for f in self.files], "record": str(self.record),
                "bands": self.bands, "grid": grid_dict(self.grid)}


def grid_dict(grid: Grid) -> dict:
    return {"crs": grid.crs.to_string(), "transform": [round(v, 10) for v in list(grid.transform)[:6]],
            "width": grid.width, "height": grid.height}


# --- the target grid ---------------------------------------------------------------------------


def target_grid(scenes: Sequence[Scene], options: StackOptions) -> Grid:
    """Where every scene is written: the overlap of all scenes on the chosen CRS and pixel size."""
    if options.crs is None and options.resolution is None:
        return analysis_grid(scenes)
    first = scenes[0].native.north_up()
    try:
        crs = rasterio.crs.CRS.from_user_input(options.crs) if options.crs else first.crs
    except Exception:  # noqa: BLE001 - rasterio raises several types for bad input
        raise InputError(f"--crs {options.crs!r} is not a CRS") from None
    resolution = options.resolution
    if resolution is None:
        transform, _, _ = calculate_default_transform(first.crs, crs, first.width, first.height, *first.bounds)
        resolution = abs(transform.a)
    minx, miny, maxx, maxy = -math.inf, -math.inf, math.inf, math.inf
    for scene in scenes:
        b = transform_bounds(scene.native.crs, crs, *scene.native.bounds, densify_pts=21)
        minx, miny, maxx, maxy = max(minx, b[0]), max(miny, b[1]), min(maxx, b[2]), min(maxy, b[3])
    if minx >= maxx or miny >= maxy:
        raise InputError("the scenes do not overlap")
    # Pixel edges on multiples of the pixel size, inside the overlap, so reruns give the same grid.
    x0, y1 = math.ceil(minx / resolution) * resolution, math.floor(maxy / resolution) * resolution
    width = int(math.floor((maxx - x0) / resolution + 1e-9))
    height = int(math.floor((y1 - miny) / resolution + 1e-9))
    if width < 1 or height < 1:
        raise InputError("the scenes overlap by less than one pixel at this --resolution")
    check_pixels(width, height, "the stacked grid (raise --resolution)")
    return Grid(crs=crs, transform=Affine(resolution, 0, x0, 0, -resolution, y1), width=width, height=height)


# --- writing -----------------------------------------------------------------------------------


def _profile(grid: Grid, count: int, dtype: str = "float32", nodata: float = float("nan")) -> dict:
    return dict(driver="GTiff", width=grid.width, height=grid.height, count=count, dtype=dtype,
                crs=grid.crs, transform=grid.transform, nodata=nodata, tiled=True,
                blockxsize=BLOCK, blockysize=BLOCK)


# (window, (bands, rows, cols) array, the 1-based bands it fills or None for all)
Block = tuple[Window, np.ndarray, Sequence[int] | None]


def write_blocks_cog(dst: str | Path, grid: Grid, names: Sequence[str], dtype: str | np.dtype, nodata: float,
                     blocks: Iterable[Block], *, scales: Sequence[float] | None = None,
                     offsets: Sequence[float] | None = None, tags: dict[str, str] | None = None,
                     band_tags: Sequence[dict[str, str]] | None = None) -> Path:
    """Write ``blocks`` covering ``grid`` as one COG (what ``fetch`` and ``stack`` write).

    Band descriptions are the common names; ``scales``/``offsets`` become the GeoTIFF's per-band scale
    and offset (value = stored * scale + offset), which :func:`tscope.geo.scene.open_scene` applies;
    ``band_tags`` are per-band metadata. Memory holds one block: blocks go to a hidden scratch GeoTIFF
    beside ``dst``, which GDAL's COG driver then copies (overviews included) into place atomically; a
    failure leaves neither file.
    """
    dst = Path(dst)
    profile = _profile(grid, len(names), np.dtype(dtype).name, nodata) | dict(compress="DEFLATE", zlevel=1,
                                                                              bigtiff="IF_SAFER")
    with scratch_path(dst.parent / dst.stem) as tmp, rasterio.Env(GDAL_CACHEMAX=WRITE_CACHE_BYTES):
        with rasterio.open(tmp, "w", **profile) as out:
            _describe(out, names, tags)
            for i, extra in enumerate(band_tags or (), start=1):
                out.update_tags(i, **extra)
            if scales is not None:
                out.scales = tuple(float(v) for v in scales)
            if offsets is not None:
                out.offsets = tuple(float(v) for v in offsets)
            for window, block, indexes in blocks:
                out.write(block, indexes=list(indexes) if indexes is not None else None, window=window)
        with rasterio.open(tmp) as src:
            _copy_cog(src, dst, categorical=any(n in CATEGORICAL for n in names))
    return dst


def _describe(dst: rasterio.io.DatasetWriter, names: Sequence[str], tags: dict[str, str] | None) -> None:
    for i, name in enumerate(names, start=1):
        dst.set_band_description(i, name)
    if tags:
        dst.update_tags(**tags)


def _copy_cog(src: rasterio.io.DatasetReader, dst: str | Path, categorical: bool) -> None:
    # Overviews by nearest when a categorical band (SCL) shares the file: averaged classes mean nothing.
    # Deflate on every core: compression is most of a large COG's writing time.
    with atomic_path(dst) as out, rasterio.Env(GDAL_CACHEMAX=WRITE_CACHE_BYTES):
        rasterio.shutil.copy(src, out, driver="COG", compress="DEFLATE", blocksize=BLOCK, num_threads="ALL_CPUS",
                             overview_resampling="nearest" if categorical else "average")


def _masked(values: dict[str, np.ndarray], valid: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return np.stack([np.where(valid | (n in CATEGORICAL), values[n], np.nan) for n in names]).astype(np.float32)


@contextlib.contextmanager
def _physical_copy(scene: Scene, names: Sequence[str], folder: Path) -> Iterator[Path]:
    """``scene``'s bands as physical float32 values on its own grid, in a scratch GeoTIFF."""
    native = scene.aligned_to(scene.native)
    with scratch_path(folder / f"{scene.frame}.physical") as tmp:
        with rasterio.open(tmp, "w", **_profile(native.grid, len(names))) as dst, native.reading():
            for window in native.grid.windows(BLOCK * 2):
                values, valid = native.read(names, window)
                dst.write(_masked(values, valid, names), window=window)
        yield tmp


def _blocks_on_grid(scene: Scene, names: Sequence[str], grid: Grid, options: StackOptions,
                    folder: Path) -> Iterator[tuple[rasterio.windows.Window, np.ndarray]]:
    """(window, float32 (bands, rows, cols)) blocks of ``scene`` on ``grid``."""
    if grid.crop_offset(scene.native) is not None:
        # The grid is a pixel-aligned crop of the file: read it as is, no resampling at all.
        aligned = scene.aligned_to(grid)
        with aligned.reading():
            for window in grid.windows(BLOCK * 2):
                values, valid = aligned.read(names, window)
                yield window, _masked(values, valid, names)
        return
    with _physical_copy(scene, names, folder) as physical, rasterio.open(physical) as src:
        by_method: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            by_method.setdefault(options.resampling_for(name), []).append(i)
        vrts = {
            method: WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                              resampling=Resampling[method], src_nodata=np.nan, nodata=np.nan,
                              init_dest_nodata=True)
            for method in by_method
        }
        try:
            for window in grid.windows(BLOCK * 2):
                block = np.empty((len(names), int(window.height), int(window.width)), np.float32)
                for method, indexes in by_method.items():
                    block[indexes] = vrts[method].read([i + 1 for i in indexes], window=window)
                yield window, block
        finally:
            for vrt in vrts.values():
                vrt.close()


def _write_scenes(scenes: Sequence[Scene], dst: Path, grid: Grid, options: StackOptions,
                  tags: dict[str, str]) -> list[str]:
    """Write ``scenes`` band after band into one COG at ``dst`` on ``grid``; returns the band names."""
    names = [n for s in scenes for n in s.bands]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"both scenes have {', '.join(dup)}: write them as a pair (--mode pair)")

    def blocks() -> Iterator[Block]:
        first = 1
        for scene in scenes:
            indexes = list(range(first, first + len(scene.bands)))
            for window, block in _blocks_on_grid(scene, scene.bands, grid, options, dst.parent):
                yield window, block, indexes
            first += len(scene.bands)

    write_blocks_cog(dst, grid, names, "float32", float("nan"), blocks(), tags=tags,
                     band_tags=[{"RESAMPLING": options.resampling_for(n)} for n in names])
    return names


# --- the public entry --------------------------------------------------------------------------


def choose_mode(scenes: Sequence[Scene], mode: str) -> str:
    if mode != "auto":
        return mode
    kinds = {s.kind for s in scenes}
    return "stack" if kinds == {"optical", "sar"} else "pair"


def stack_scenes(paths: Sequence[str | Path], out: str | Path, options: StackOptions | None = None,
                 read_options: ReadOptions | None = None, overwrite: bool = False,
                 root: str | Path | None = None) -> StackResult:
    """Align two scenes onto one grid and write ``OUT/stack.tif`` (optical+SAR) or ``OUT/t1.tif`` +
    ``OUT/t2.tif`` (a pair), plus ``OUT/stack.json`` recording inputs, grid and resampling. Inputs
    inside ``root`` (default ``OUT``) are recorded relative to ``OUT``, others absolute."""
    options = options or StackOptions()
    if len(paths) != 2:
        raise InputError("give two scenes: optical and SAR, or before and after")
    scenes = [open_scene(p, read_options, frame=f"t{i + 1}") for i, p in enumerate(paths)]
    mode = choose_mode(scenes, options.mode)
    if mode == "stack" and scenes[0].kind == "sar" and scenes[1].kind == "optical":
        scenes.reverse()  # SAR goes onto the optical grid, whatever the order given
        scenes = [s.aligned_to(s.native, frame=f"t{i + 1}") for i, s in enumerate(scenes)]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    names = ["stack.tif"] if mode == "stack" else ["t1.tif", "t2.tif"]
    if not overwrite and any((out / n).exists() for n in names + ["stack.json"]):
        raise InputError(f"{out} already holds a stack; pass --overwrite to replace it")
    grid = target_grid(scenes, options)
    inputs = [record_path(s.path, out, Path(root) if root else None) for s in scenes]
    files, bands = [], {}
    sweep_partials(out)
    # A failure (a truncated second scene, Ctrl-C) removes what this run wrote and the folders it made.
    with rollback_on_failure() as made:
        made.mkdir(out)
        if mode == "stack":
            tags = {"TSCOPE_STACK": "optical+sar", "SOURCES": ";".join(s.path.name for s in scenes)}
            bands["stack.tif"] = _write_scenes(scenes, made.add(out / "stack.tif"), grid, options, tags)
            files.append(out / "stack.tif")
        else:
            for scene, name in zip(scenes, names, strict=True):
                tags = {"TSCOPE_STACK": "pair", "FRAME": scene.frame, "SOURCE": scene.path.name}
                bands[name] = _write_scenes([scene], made.add(out / name), grid, options, tags)
                files.append(out / name)
        record = write_json(made.add(out / "stack.json"), {
            "tscope_version": __version__,
            "mode": mode,
            "inputs": [{"path": p, "frame": s.frame, "kind": s.kind, "crs": s.native.crs.to_string(),
                        "bands": s.bands} for p, s in zip(inputs, scenes, strict=True)],
            "grid": grid_dict(grid),
            "resampling": {n: options.resampling_for(n) for f in bands.values() for n in f},
            "outputs": {name: b for name, b in bands.items()},
            "values": "float32 physical values (reflectance, linear SAR power); NaN is nodata",
        })
    return StackResult(mode=mode, grid=grid, files=files, record=record, bands=bands)
