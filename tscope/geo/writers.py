"""Writers for masks: Cloud-Optimised GeoTIFFs and GeoJSON polygons, always written atomically.

Every file goes to a temporary name in its destination folder and is renamed into place only when
complete, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from tscope.errors import InputError
from tscope.geo.grid import Grid
from tscope.geo.mask import Mask
from tscope.geo.polygons import Polygons, mask_polygons

MASK_NODATA = 255
STRIP = 1024


PARTIAL = ".partial"


def _umask() -> int:
    # The only portable way to read the umask is to set it; done once per process, before any thread.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it onto ``dst`` only if the block succeeds.

    The file gets the mode a plain ``open(dst, "w")`` would give (0666 less the umask): ``mkstemp``
    alone makes it 0600, unreadable to the group the user shares outputs with.
    """
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=PARTIAL, dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        # GDAL's COG driver builds overviews in a side file named after the temporary path.
        with contextlib.suppress(FileNotFoundError):
            Path(f"{tmp_path}.ovr.tmp").unlink()


@contextlib.contextmanager
def scratch_path(dst: str | Path) -> Iterator[Path]:
    """A hidden scratch file beside ``dst`` (same file system), always removed; a killed run's is swept
    by :func:`sweep_partials` like any partial output of ``dst``."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=f"{PARTIAL}.tif", dir=dst.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        for leftover in (Path(tmp), Path(f"{tmp}.aux.xml")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def sweep_partials(folder: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Remove temporary files a killed tscope run left in ``folder`` (only tscope's own: hidden,
    ``.partial`` names, optionally only those of ``names``); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return []
    wanted = set(names) if names is not None else None
    pattern = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.partial(\.tif)?(\.ovr\.tmp|\.aux\.xml)?$")
    removed = []
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match and (wanted is None or match["name"] in wanted) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


class Outputs:
    """The files and folders one run creates, so that a failed or interrupted run removes exactly
    those, and nothing that was there before it."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.dirs: list[Path] = []

    def mkdir(self, folder: str | Path) -> Path:
        """Create ``folder`` and its missing parents, remembering which ones this run created."""
        folder = Path(folder)
        missing = []
        probe = folder
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            try:
                path.mkdir(exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create the folder {path}: {exc.strerror}") from None
            self.dirs.append(path)
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder")
        return folder

    def add(self, path: str | Path) -> Path:
        self.files.append(Path(path))
        return Path(path)

    def rollback(self) -> None:
        for path in reversed(self.files):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        for folder in reversed(self.dirs):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a file someone else put there keeps its folder


@contextlib.contextmanager
def rollback_on_failure() -> Iterator[Outputs]:
    """Yield an :class:`Outputs` record; on any failure (Ctrl-C included) undo what it recorded."""
    outputs = Outputs()
    try:
        yield outputs
    except BaseException:
        outputs.rollback()
        raise


@contextlib.contextmanager
def atomic_dir(dst: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``dst``; it replaces ``dst`` only if the block succeeds.

    A folder cannot be renamed over a non-empty one, so an existing ``dst`` is removed just before the
    rename: a crash in between leaves no ``dst`` rather than a half-written one.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it 0700; a plain mkdir would not
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(dst: str | Path, text: str) -> Path:
    with atomic_path(dst) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dst)


def write_json(dst: str | Path, obj: object) -> Path:
    return write_text(dst, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n")


def mask_to_uint8(mask: Mask, rows: slice = slice(None)) -> np.ndarray:
    """1 = class, 0 = not the class, 255 = nodata/cloud (written as the GeoTIFF's nodata)."""
    out = mask.data[rows].astype(np.uint8)
    out[~mask.valid[rows]] = MASK_NODATA
    return out


def _write_cog(dst: str | Path, grid: Grid, dtype: str, nodata: float, rows_of: Callable[[slice], np.ndarray],
               description: str | None = None, tags: dict | None = None) -> Path:
    """Write a single-band COG (deflate, 512-px tiles, internal overviews) strip by strip."""
    with warnings.catch_warnings():
        # A plain image's mask has no geotransform on purpose: rasterio's warning about it is noise.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return _write_cog_file(dst, grid, dtype, nodata, rows_of, description, tags)


def _write_cog_file(dst: str | Path, grid: Grid, dtype: str, nodata: float, rows_of: Callable[[slice], np.ndarray],
                    description: str | None, tags: dict | None) -> Path:
    profile = dict(
        driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=dtype,
        crs=rasterio.crs.CRS.from_wkt(grid.crs.to_wkt()) if grid.crs is not None else None,
        # A plain image's mask is on its pixels: no geotransform, as in the image itself.
        transform=grid.transform if grid.crs is not None else None, nodata=nodata,
        tiled=True, blockxsize=512, blockysize=512,
    )
    # The COG driver copies from a finished dataset: it is staged uncompressed in a hidden scratch file
    # beside the output (in memory, a 10980² mask held 120 MB beside the polygons; packed in memory, the
    # packing and unpacking took half of the write's CPU). The page cache holds it, not the process.
    with scratch_path(dst) as staged:
        with rasterio.open(staged, "w", **profile) as tmp:
            # Strips, so no full-size converted copy of the array is ever made.
            for row in range(0, grid.height, STRIP):
                rows = slice(row, min(grid.height, row + STRIP))
                tmp.write(rows_of(rows), 1, window=Window(0, row, grid.width, rows.stop - row))
            if description:
                tmp.set_band_description(1, description)
            if tags:
                tmp.update_tags(1, **tags)
            # The COG driver's own levels (halving until the image fits one 512-px tile), built here: the
            # driver computes them a second way, 1.5 s of the 3 s a noisy 10980² mask took to write.
            levels = _overview_levels(grid.width, grid.height, 512)
            if levels:
                tmp.build_overviews(levels, Resampling.nearest)
        with rasterio.open(staged) as src, atomic_path(dst) as out:
            # Deflate level 1 and nearest overviews: a full-tile mask takes ~2 s instead of ~10 s with
            # level 6 and mode, for files ~40% larger; both are standard for categorical COGs.
            rasterio.shutil.copy(
                src, out, driver="COG", compress="DEFLATE", level=1, blocksize=512, num_threads="ALL_CPUS",
                overviews="FORCE_USE_EXISTING" if levels else "NONE",
            )
    return Path(dst)


def _overview_levels(width: int, height: int, tile: int) -> list[int]:
    """Factors 2, 4, ... down to the first level that fits in one ``tile`` x ``tile`` block."""
    levels: list[int] = []
    factor = 1
    while max(width, height) / factor > tile:
        factor *= 2
        levels.append(factor)
    return levels


def write_cog(dst: str | Path, array: np.ndarray, mask: Mask, nodata: float = MASK_NODATA,
              description: str | None = None) -> Path:
    """Write a single-band array on ``mask.grid`` as a COG (deflate, 512-px tiles, internal overviews)."""
    return _write_cog(dst, mask.grid, str(array.dtype), nodata, lambda rows: array[rows], description,
                      {"CLASS": mask.label, "FRAME": mask.frame})


def write_mask_cog(dst: str | Path, mask: Mask) -> Path:
    """The mask as a uint8 COG: 1 class, 0 not, 255 nodata."""
    return _write_cog(dst, mask.grid, "uint8", MASK_NODATA, lambda rows: mask_to_uint8(mask, rows), mask.label,
                      {"CLASS": mask.label, "FRAME": mask.frame})


def write_geojson_features(dst: str | Path, layers: list[tuple[Mask, dict]]) -> dict[str, Polygons]:
    """Stream the polygons of several masks into one RFC 7946 FeatureCollection (lon/lat WGS84).

    Each feature carries ``properties`` and its geodesic ``area_m2``. Returns, per layer (keyed by its
    ``step`` property), the :class:`~tscope.geo.polygons.Polygons` written, whose ``factor``,
    ``dropped`` and ``cut`` say what was simplified.
    """
    written = {}
    with atomic_path(dst) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write('{"type": "FeatureCollection", "features": [')
        first = True
        for mask, properties in layers:
            polygons = mask_polygons(mask)
            written[properties.get("step", mask.label)] = polygons
            for text, area in zip(polygons.texts, polygons.areas_m2, strict=True):
                props = json.dumps({**properties, "area_m2": round(float(area), 3)})
                out.write(("\n" if first else ",\n") + '{"type": "Feature", "properties": ' + props
                          + ', "geometry": ' + text + "}")
                first = False
        out.write("\n]}\n")
    return written
