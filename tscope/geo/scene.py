"""Scenes: a raster file read lazily, window by window, as physical values by band common name.

A :class:`Scene` never holds its pixels. ``Scene.read(names, window)`` returns float32 arrays
(reflectance for optical bands, linear power for SAR) for one window of the scene's analysis grid,
plus the boolean mask of pixels that hold data in every band asked for. When a scene is aligned onto
another grid (a second date, a SAR scene under an optical one) the reads go through a GDAL warped
VRT, still window by window.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from tscope.errors import InputError, RuntimeFailure
from tscope.geo import gcps
from tscope.geo.bands import SAR_NAMES, BandMap, identify_bands
from tscope.geo.grid import BLOCK, Grid, PixelGrid
from tscope.geo.remote import Source, resolve
from tscope.limits import check_pixels

log = logging.getLogger("tscope")
SAR_FORMATS = ("auto", "linear", "db", "complex")
CATEGORICAL_BANDS = frozenset({"scl"})


@dataclass(frozen=True)
class ReadOptions:
    """How to interpret a file: the CLI's reading options, one object."""

    bands: str | None = None
    sensor: str | None = None
    l2a_offset: bool = False
    sar_format: str = "auto"
    nodata: float | None = None
    assume_crs: str | None = None
    gsd: float | None = None
    network: Any = None  # tscope.stac.http.NetworkPolicy for STAC item URLs (GDAL's options are set by the caller)


@dataclass
class Scene:
    """A raster file seen through an analysis grid. ``frame`` is ``t1`` or ``t2`` for pairs."""

    path: Path | Source
    grid: Grid
    native: Grid
    band_map: BandMap
    kind: str
    scales: dict[str, tuple[float, float]]
    nodata: float | None
    sar_format: str | None
    frame: str = "t1"
    options: ReadOptions = field(default_factory=ReadOptions)
    per_dataset_mask: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # the file's dataset tags, read once at open
    block_shape: tuple[int, int] | None = None  # the file's internal (rows, cols) blocks
    by_gcps: bool = False  # placed by ground control points: every read is warped (tscope.geo.gcps)
    assumed_crs: Any = None  # --assume-crs, for GCPs that name no CRS
    _handles: _Handles | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def bands(self) -> list[str]:
        return self.band_map.names

    def has(self, name: str) -> bool:
        return name in self.band_map.indexes

    def describe(self) -> dict:
        return {
            "path": getattr(self.path, "display", str(self.path)),
            "frame": self.frame,
            "crs": self.grid.crs.to_string() if self.grid.crs is not None else None,
            **({"gsd_m": self.grid.gsd} if isinstance(self.grid, PixelGrid) else {}),
            "transform": list(self.grid.transform)[:6],
            "width": self.grid.width,
            "height": self.grid.height,
            "bands": self.bands,
            "band_source": self.band_map.source,
            "kind": self.kind,
        }

    # --- alignment ---------------------------------------------------------------------------

    @property
    def is_native(self) -> bool:
        return self.grid == self.native

    def _native_window(self, window: Window) -> Window | None:
        """The window of the file under ``window`` of the analysis grid, if no warping is needed."""
        if self.by_gcps:
            return None
        offset = self.grid.crop_offset(self.native)
        if offset is None:
            return None
        return Window(window.col_off + offset[0], window.row_off + offset[1], window.width, window.height)

    def aligned_to(self, grid: Grid, frame: str | None = None) -> Scene:
        """The same file seen through ``grid`` (cropped, or warped when CRS/pixels differ)."""
        return replace(self, grid=grid, frame=frame or self.frame)

    # --- reading -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def reading(self) -> Iterator[Scene]:
        """Within the block, each thread reads this scene through one handle of its own, kept open.

        A pass reads hundreds of windows, and opening the file for each (its headers, GDAL's setup)
        cost about 2 ms a window. GDAL handles must not be shared between threads, so there is one per
        thread; all are closed when the block ends. Blocks read through a kept handle pass through
        GDAL's block cache (``GDAL_CACHEMAX``; the CLI sets 64 MB).
        """
        if self._handles is not None:  # already inside a pass over this scene
            yield self
            return
        self._handles = _Handles(self.path)
        try:
            yield self
        finally:
            handles, self._handles = self._handles, None
            handles.close()

    def windows(self, size: int = BLOCK) -> Iterator[Window]:
        """Windows of about ``size`` x ``size`` pixels covering the analysis grid, cut on the file's blocks.

        Each read opens the file anew, so a block that two windows share is decompressed twice: 1012-px
        windows over 512-px tiles double the cost of a pass. Read unwarped, a tiled file is cut on whole
        tiles and a striped one in bands of whole strips (a narrower window decompresses the strip anyway).
        Blocks much larger than a window (one strip for the whole file) are not worth aligning to.
        """
        if self.block_shape is None or not self.is_native or self.by_gcps:  # warped: no blocks to align to
            return self.grid.windows(size)
        block_rows, block_cols = self.block_shape
        if block_rows * block_cols > 4 * size * size:
            return self.grid.windows(size)
        if block_cols >= self.grid.width:
            rows = max(block_rows, size * size // self.grid.width // block_rows * block_rows)
            return self.grid.windows(rows, self.grid.width)
        return self.grid.windows(max(block_rows, size - size % block_rows), max(block_cols, size - size % block_cols))

    def read(self, names: Sequence[str], window: Window) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Physical values of ``names`` in ``window`` of the analysis grid, and the valid mask.

        Returns ``({name: float32 (rows, cols)}, valid bool (rows, cols))``. Nodata, NaN and pixels
        outside the file are invalid. Optical bands come as reflectance, SAR as linear power.
        """
        missing = [n for n in names if not self.has(n)]
        if missing:
            raise InputError(
                f"{self.path.name} has no {', '.join(missing)} band (it has {', '.join(self.bands)});"
                " map bands with --bands or --sensor"
            )
        indexes = [self.band_map.indexes[n] for n in names]
        shape = (int(window.height), int(window.width))
        with _reading(self.path), self._source() as src:
            native_window = self._native_window(window)
            if native_window is not None:
                # rasterio reads a boundless window through a warped VRT (slower by half): only when needed.
                within = (native_window.col_off >= 0 and native_window.row_off >= 0
                          and native_window.col_off + native_window.width <= self.native.width
                          and native_window.row_off + native_window.height <= self.native.height)
                # fill_value only where the window leaves the file: given for an inner window, rasterio
                # still builds a masked array of it and fills it.
                raw = (src.read(indexes, window=native_window) if within else
                       src.read(indexes, window=native_window, boundless=True, fill_value=self._fill(src)))
                inside = None if within else self._inside(native_window, shape)
                masks = (src.read_masks(indexes, window=native_window, boundless=not within)
                         if self.per_dataset_mask else None)
            else:
                # Class codes (SCL) must never be interpolated: 4 next to 2 is not 3 (cloud shadow).
                groups: dict[Resampling, list[str]] = {}
                for name in names:
                    nearest = name in CATEGORICAL_BANDS or self.kind == "sar"
                    groups.setdefault(Resampling.nearest if nearest else Resampling.bilinear, []).append(name)
                by_name, mask_parts = {}, []
                for resampling, group in groups.items():
                    group_indexes = [self.band_map.indexes[n] for n in group]
                    if self.by_gcps:
                        warped, ok = gcps.read_window(src, group_indexes, self.grid, window, resampling, self.nodata,
                                                      self.assumed_crs)
                        by_name.update(zip(group, warped, strict=True))
                        mask_parts.append(ok[None].astype(np.uint8))
                        continue
                    with WarpedVRT(src, **self._warp_kwargs(resampling)) as vrt:
                        by_name.update(zip(group, vrt.read(group_indexes, window=window), strict=True))
                        mask_parts.append(vrt.read_masks(group_indexes, window=window))
                raw = [by_name[n] for n in names]
                masks = np.concatenate(mask_parts)
                inside = None
        valid = np.ones(shape, dtype=bool)
        if inside is not None:
            valid &= inside
        if masks is not None:
            valid &= np.all(masks > 0, axis=0)
        out = {}
        for name, band in zip(names, raw, strict=True):
            if self.nodata is not None and not np.iscomplexobj(band):
                valid &= band != self.nodata
            out[name] = self._to_physical(name, band)
            # Optical integers scaled by finite numbers are finite: the test is a full pass per band.
            if name != "scl" and (band.dtype.kind not in "ui" or name in SAR_NAMES):
                valid &= np.isfinite(out[name])
        return out, valid

    @contextlib.contextmanager
    def _source(self) -> Iterator[rasterio.DatasetReader]:
        """The file open for reading: this thread's handle inside :meth:`reading`, else opened anew."""
        if self._handles is not None:
            yield self._handles.get()
            return
        with _open(self.path) as src:
            yield src

    def _warp_kwargs(self, resampling: Resampling) -> dict:
        """WarpedVRT options onto the analysis grid; pixels outside the file come back masked."""
        kwargs = dict(
            crs=self.grid.crs,
            transform=self.grid.transform,
            width=self.grid.width,
            height=self.grid.height,
            resampling=resampling,
        )
        if self.nodata is not None:
            kwargs.update(src_nodata=self.nodata, nodata=self.nodata, init_dest_nodata=True)
        else:
            kwargs.update(add_alpha=True)
        return kwargs

    def _fill(self, src: rasterio.DatasetReader) -> float:
        if self.nodata is not None:
            return self.nodata
        return 0 if np.dtype(src.dtypes[0]).kind in "uic" else np.nan

    def _inside(self, native_window: Window, shape: tuple[int, int]) -> np.ndarray:
        rows = np.arange(shape[0]) + int(native_window.row_off)
        cols = np.arange(shape[1]) + int(native_window.col_off)
        row_ok = (rows >= 0) & (rows < self.native.height)
        col_ok = (cols >= 0) & (cols < self.native.width)
        return row_ok[:, None] & col_ok[None, :]

    def _to_physical(self, name: str, band: np.ndarray) -> np.ndarray:
        if name == "scl":
            return band.astype(np.float32)
        if name in SAR_NAMES:
            if self.sar_format == "complex" or np.iscomplexobj(band):
                return (np.abs(band) ** 2).astype(np.float32)
            band = band.astype(np.float32)
            if self.sar_format == "db":
                with np.errstate(invalid="ignore", over="ignore"):
                    return np.power(10.0, band / 10.0, dtype=np.float32)
            return band
        scale, offset = self.scales[name]
        # One pass converting and scaling, rather than a float copy then a multiply.
        out = np.multiply(band, np.float32(scale), dtype=np.float32) if scale != 1.0 else band.astype(np.float32)
        if offset != 0.0:
            out += np.float32(offset)
        return out


class _Handles:
    """One open dataset per thread for :meth:`Scene.reading`."""

    def __init__(self, path: Path | Source):
        self.path = path
        self._local = threading.local()
        self._opened: list[rasterio.DatasetReader] = []
        self._lock = threading.Lock()

    def get(self) -> rasterio.DatasetReader:
        src = getattr(self._local, "src", None)
        if src is None:
            src = rasterio.open(self.path)
            self._local.src = src
            with self._lock:
                self._opened.append(src)
        return src

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for src in opened:
            src.close()


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A file that opened but cannot be read (truncated, corrupt blocks) is bad input, named."""
    try:
        yield
    except RasterioIOError as exc:
        raise InputError(f"{path}: cannot read its pixels ({' '.join(str(exc).split())[:200]});"
                         " the file is truncated or corrupt") from None


@contextlib.contextmanager
def _open(path: Path) -> Iterator[rasterio.DatasetReader]:
    """rasterio.open; a plain image's NotGeoreferencedWarning goes to the log like every library warning
    (the CLI shows it with -v only), never to the user as a stray line."""
    with rasterio.open(path) as src:
        yield src


def _is_plain(src: rasterio.DatasetReader) -> bool:
    """No CRS and no placement at all (PNG, JPEG, a bare TIFF): pixels only."""
    return src.crs is None and src.transform.is_identity and not src.gcps[0] and not src.rpcs


def _grid_of(src: rasterio.DatasetReader, crs: CRS) -> Grid:
    return Grid(crs=crs, transform=src.transform, width=src.width, height=src.height)


def open_scene(path: str | Path, options: ReadOptions | None = None, frame: str = "t1") -> Scene:
    """Open ``path`` and identify its bands, scaling, nodata and CRS (reads no pixels)."""
    options = options or ReadOptions()
    if options.sar_format not in SAR_FORMATS:
        raise InputError(f"--sar-format must be one of {', '.join(SAR_FORMATS)}")
    assumed = None
    if options.assume_crs:
        # Parsed by pyproj first: GDAL would also print its own error line on stderr.
        try:
            assumed = CRS.from_wkt(pyproj.CRS.from_user_input(options.assume_crs).to_wkt())
        except pyproj.exceptions.CRSError:
            raise InputError(f"--assume-crs {options.assume_crs!r} is not a CRS") from None
    if options.gsd is not None and not options.gsd > 0:
        raise InputError(f"--gsd must be a positive number of metres per pixel, not {options.gsd}")
    path = resolve(path, options.network)
    label = path.display if isinstance(path, Source) else path
    if not path.exists():
        raise InputError(f"{path}: no such file")
    opened = contextlib.ExitStack()
    try:
        src = opened.enter_context(_open(path))
    except RasterioIOError as exc:
        if isinstance(path, Source):
            # A missing remote file is the user's error; anything else on the network is a runtime failure.
            why = " ".join(str(exc).split())[:200]
            error = InputError if re.search(r"\b(404|403|does not exist|No such file)\b", why) else RuntimeFailure
            raise error(f"{path.display}: cannot be opened ({why})") from None
        raise InputError(f"{path}: not a raster rasterio can open") from None
    with opened:
        plain = _is_plain(src) and assumed is None
        by_gcps = gcps.located_by_gcps(src)
        if not plain and not by_gcps:
            if options.gsd is not None:
                raise InputError(f"--gsd is for plain images without georeferencing; {path.name} is georeferenced")
            if src.crs is None:
                if assumed is None:
                    raise InputError(f"{label}: no CRS; pass --assume-crs EPSG:XXXX if you know it")
                crs = assumed
            else:
                if assumed is not None and assumed != src.crs:
                    log.warning("%s has a CRS (%s): --assume-crs is ignored", path.name, src.crs)
                crs = src.crs
            if src.transform.is_identity and not src.gcps[0]:
                raise InputError(f"{label}: no georeferencing (identity transform)")
        check_pixels(src.width, src.height, str(label))
        band_map = identify_bands(src, options.bands, options.sensor)
        kind = "sar" if band_map.indexes and set(band_map.indexes) <= SAR_NAMES | {"scl"} else "optical"
        nodata = options.nodata if options.nodata is not None else src.nodata
        per_dataset_mask = nodata is None and any(
            MaskFlags.per_dataset in flags or MaskFlags.alpha in flags for flags in src.mask_flag_enums
        )
        scales = _band_scales(src, band_map, options)
        sar_format = _sar_format(src, band_map, options) if kind == "sar" or SAR_NAMES & set(band_map.indexes) else None
        if plain:
            grid = PixelGrid(crs=None, transform=Affine.identity(), width=src.width, height=src.height,
                             gsd=options.gsd)
        elif by_gcps:
            if options.gsd is not None:
                raise InputError(f"--gsd is for plain images without georeferencing; {path.name} has ground"
                                 " control points")
            grid = gcps.native_grid(src, assumed, str(label))
            check_pixels(grid.width, grid.height, str(label))
        else:
            grid = _grid_of(src, crs)
        tags = dict(src.tags())
        block_shape = tuple(src.block_shapes[0]) if src.block_shapes else None
    return Scene(
        path=path,
        grid=grid,
        native=grid,
        band_map=band_map,
        kind=kind,
        scales=scales,
        nodata=nodata,
        sar_format=sar_format,
        frame=frame,
        options=options,
        per_dataset_mask=per_dataset_mask,
        tags=tags,
        block_shape=block_shape,
        by_gcps=by_gcps,
        assumed_crs=assumed,
    )


def _band_scales(src: rasterio.DatasetReader, band_map: BandMap, options: ReadOptions) -> dict:
    """(scale, offset) per band turning stored values into reflectance."""
    scales = {}
    declared: list[str] = []
    preset = band_map.preset
    for name, index in band_map.indexes.items():
        dtype = np.dtype(src.dtypes[index - 1])
        file_scale, file_offset = src.scales[index - 1], src.offsets[index - 1]
        if dtype.kind == "f":
            scale, offset = 1.0, 0.0
        elif (file_scale, file_offset) != (1.0, 0.0):
            scale, offset = file_scale, file_offset
        elif preset is not None and preset.dn_scale is not None:
            scale, offset = preset.dn_scale, preset.dn_offset
        elif dtype == np.uint8:
            scale, offset = 1 / 255, 0.0
        else:
            scale, offset = 1e-4, 0.0
        if options.l2a_offset and dtype.kind in "ui":
            if file_offset != 0.0:
                # The file already says how to reach reflectance (fetch writes -0.1 where it is due);
                # subtracting the baseline offset again would shift every band by another -0.1.
                declared.append(f"{name} {file_offset:g}")
            else:
                baseline = preset.baseline_offset_dn if preset and preset.baseline_offset_dn else 1000
                offset -= baseline * scale
        scales[name] = (float(scale), float(offset))
    if declared:
        log.warning("%s declares its band offsets (%s): --l2a-offset is not applied again", src.name,
                    ", ".join(declared))
    return scales


def _sar_format(src: rasterio.DatasetReader, band_map: BandMap, options: ReadOptions) -> str:
    if options.sar_format != "auto":
        return options.sar_format
    index = next(i for n, i in band_map.indexes.items() if n in SAR_NAMES)
    dtype = np.dtype(src.dtypes[index - 1])
    if dtype.kind == "c":
        return "complex"
    # Backscatter in dB is mostly negative; linear power never is. Sample one decimated read.
    with _reading(Path(src.name)):
        sample = src.read(index, out_shape=(min(256, src.height), min(256, src.width)))
    sample = sample.astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if src.nodata is not None:
        sample = sample[sample != src.nodata]
    if sample.size and np.median(sample) < 0:
        return "db"
    return "linear"


def analysis_grid(scenes: Sequence[Scene]) -> Grid:
    """The grid every scene is read on: the first scene's pixels, cropped to where all overlap.

    A rotated first scene of a pair is first put on a north-up grid of its pixel size: only those have
    windows, and the second scene is warped anyway.
    """
    if any(isinstance(s.native, PixelGrid) for s in scenes):
        # Plain images have no ground position to overlap: a pair must be the same pixels.
        first = scenes[0].native
        if any(s.native.shape != first.shape or not isinstance(s.native, PixelGrid) for s in scenes[1:]):
            raise InputError("a pair of plain (not georeferenced) images must be two images of the same size")
        return first
    first = scenes[0].native if len(scenes) == 1 else scenes[0].native.north_up()
    minx, miny, maxx, maxy = first.bounds
    for other in scenes[1:]:
        ob = transform_bounds(other.native.crs, first.crs, *other.native.bounds, densify_pts=21)
        minx, miny = max(minx, ob[0]), max(miny, ob[1])
        maxx, maxy = min(maxx, ob[2]), min(maxy, ob[3])
        if minx >= maxx or miny >= maxy:
            raise InputError(f"{scenes[0].path.name} and {other.path.name} do not overlap")
    if len(scenes) == 1:
        return first
    window = from_bounds(minx, miny, maxx, maxy, first.transform).round_offsets().round_lengths()
    col0, row0 = max(0, int(window.col_off)), max(0, int(window.row_off))
    col1 = min(first.width, int(window.col_off + window.width))
    row1 = min(first.height, int(window.row_off + window.height))
    if col1 <= col0 or row1 <= row0:
        raise InputError("the scenes overlap by less than one pixel")
    transform = first.transform @ Affine.translation(col0, row0)
    return Grid(crs=first.crs, transform=transform, width=col1 - col0, height=row1 - row0)


def open_scenes(paths: Sequence[str | Path], options: ReadOptions | None = None) -> list[Scene]:
    """Open one scene, or a pre/post pair aligned onto the first scene's grid (their overlap)."""
    if not 1 <= len(paths) <= 2:
        raise InputError("give one scene, or two (before and after) for change questions")
    scenes = [open_scene(p, options, frame=f"t{i + 1}") for i, p in enumerate(paths)]
    if len(scenes) == 2 and scenes[0].kind != scenes[1].kind:
        # Two sensors over one date are a fusion stack, not a before/after pair.
        raise InputError(
            f"{scenes[0].path.name} is {scenes[0].kind} and {scenes[1].path.name} is {scenes[1].kind}: stack them"
            " with `tscope stack OPTICAL SAR --out DIR` and ask DIR/stack.tif"
        )
    grid = analysis_grid(scenes)
    return [s.aligned_to(grid) for s in scenes]
