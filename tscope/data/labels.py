"""Ground truth on an image's grid: label rasters with a class table, and building footprints.

A label raster is warped onto the image grid with nearest-neighbour resampling (labels are
categories, never averaged). Its class table maps pixel values to class names: from a file
(``--classes``: JSON ``{"1": "forest"}`` or lines ``1 forest`` / ``1,forest``), else from the
raster's ``CLASSES`` tag (``"1 cultivated,2 forest,..."``). Names are mapped onto the question
parser's vocabulary (``models/classes.toml``) where a synonym matches, so questions about them
parse; other names are kept as they are.

Footprints come as xBD JSON (``features.lng_lat`` with WKT polygons and a damage ``subtype``) or
GeoJSON (a ``crs`` member, else EPSG:4326; damage in ``subtype`` or ``damage``), and are burnt onto
the grid (pixel centres inside a polygon).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.warp import reproject

from tscope.errors import InputError
from tscope.geo.grid import Grid
from tscope.geo.mask import Mask
from tscope.reason.query import vocabulary

BUILDING = "built_up"
DAMAGE_LEVELS = ("no-damage", "minor-damage", "major-damage", "destroyed", "un-classified")


# Names common in land-cover label sets (eo-learn LULC, ESA WorldCover) that the parser's synonyms
# leave out as single words.
_LABEL_ALIASES = {"cultivated": "cropland", "artificial": "built_up", "tree cover": "forest",
                  "built area": "built_up", "permanent water bodies": "water", "herbaceous wetland": "wetland",
                  "bare / sparse vegetation": "bare_soil", "snow and ice": "snow", "crops": "cropland"}


def vocabulary_class(name: str) -> str | None:
    """The parser's class for a label name ("cultivated land" -> cropland), or None."""
    key = " ".join(name.lower().replace("_", " ").split())
    if key in _LABEL_ALIASES:
        return _LABEL_ALIASES[key]
    for info in vocabulary().values():
        if key in (info.name.replace("_", " "), info.label.lower(), *info.synonyms):
            return info.name
    return None


def display_name(cls: str) -> str:
    """How a class is written in questions: the vocabulary label, else the name itself."""
    info = vocabulary().get(cls)
    return info.label if info else cls.replace("_", " ")


@dataclass(frozen=True)
class ClassTable:
    """Pixel value -> class (vocabulary name where one matches, else the table's own name)."""

    classes: dict[int, str]

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(self.classes.values()))


def _parse_pairs(pairs: list[tuple[str, str]], where: str) -> ClassTable:
    classes = {}
    for value, name in pairs:
        try:
            key = int(value)
        except ValueError:
            raise InputError(f"{where}: class value {value!r} is not an integer") from None
        name = name.strip().strip('"')
        if not name:
            raise InputError(f"{where}: class {key} has no name")
        classes[key] = vocabulary_class(name) or re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not classes:
        raise InputError(f"{where}: the class table is empty")
    return ClassTable(classes)


def load_class_table(label_path: str | Path, spec: str | Path | None = None) -> ClassTable:
    """The class table of ``label_path``: from ``spec`` (a file) if given, else the raster's CLASSES tag."""
    if spec is not None:
        path = Path(spec)
        if not path.exists():
            raise InputError(f"--classes {path}: no such file")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"--classes {path}: not valid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise InputError(f"--classes {path}: expected an object {{\"value\": \"name\"}}")
            return _parse_pairs([(k, str(v)) for k, v in data.items()], str(path))
        pairs = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                value, _, name = line.replace(",", " ", 1).partition(" ")
                pairs.append((value, name))
        return _parse_pairs(pairs, str(path))
    with _open_labels(label_path) as src:
        tag = src.tags().get("CLASSES")
    if not tag:
        raise InputError(f"{label_path}: no CLASSES tag; give a class table with --classes")
    pairs = [tuple(item.strip().split(" ", 1)) for item in tag.split(",") if item.strip()]
    if any(len(p) != 2 for p in pairs):
        raise InputError(f"{label_path}: cannot read its CLASSES tag {tag!r}")
    return _parse_pairs(pairs, f"{label_path} CLASSES tag")


def _open_labels(path: str | Path) -> rasterio.DatasetReader:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such label raster")
    try:
        return rasterio.open(path)
    except RasterioIOError:
        raise InputError(f"{path}: not a label raster rasterio can open") from None


def read_labels(label_path: str | Path, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The label raster on ``grid`` (nearest neighbour): (int32 values, bool valid)."""
    path = Path(label_path)
    with _open_labels(path) as src:
        if src.crs is None:
            raise InputError(f"{path}: the label raster has no CRS")
        nodata = src.nodata
        fill = -1
        out = np.full(grid.shape, fill, dtype=np.int32)
        try:
            reproject(
                source=rasterio.band(src, 1), destination=out, src_transform=src.transform, src_crs=src.crs,
                src_nodata=nodata, dst_transform=grid.transform,
                dst_crs=rasterio.crs.CRS.from_wkt(grid.crs.to_wkt()), dst_nodata=fill, resampling=Resampling.nearest,
            )
        except RasterioError as exc:
            raise InputError(f"{path}: cannot read the label raster ({' '.join(str(exc).split())[:200]})") from None
    return out, out != fill


def label_masks(labels: np.ndarray, valid: np.ndarray, table: ClassTable, grid: Grid,
                frame: str = "t1", source: str = "") -> dict[str, Mask]:
    """One Mask per class of ``table``; pixels whose value is not in the table are not valid."""
    known = np.isin(labels, list(table.classes)) & valid
    masks = {}
    for cls in table.names:
        values = [v for v, c in table.classes.items() if c == cls]
        masks[cls] = Mask(data=np.isin(labels, values) & known, valid=known.copy(), grid=grid, label=cls,
                          frame=frame, source=source)
    return masks


# --- footprints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """One building polygon (shapely geometry in ``crs``) with its damage level, if labelled."""

    geometry: object
    damage: str | None
    uid: str


def _normalise_damage(value: object) -> str | None:
    if value in (None, ""):
        return None
    text = str(value).strip().lower().replace("_", "-").replace(" ", "-")
    if text not in DAMAGE_LEVELS:
        raise InputError(f"unknown damage level {value!r}; xBD levels are {', '.join(DAMAGE_LEVELS)}")
    return text


def read_footprints(path: str | Path) -> tuple[list[Footprint], str]:
    """Footprints from an xBD JSON or a GeoJSON file: (footprints, CRS of their coordinates)."""
    from shapely import wkt
    from shapely.geometry import shape

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such footprint file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    out: list[Footprint] = []
    if isinstance(data, dict) and isinstance(data.get("features"), dict):
        # xBD label JSON: features.lng_lat (EPSG:4326) and features.xy (pixels); only lng_lat is
        # georeferenced, so it is the one used.
        items = data["features"].get("lng_lat")
        if not isinstance(items, list):
            raise InputError(f"{path}: xBD JSON without features.lng_lat polygons")
        for i, item in enumerate(items):
            props = item.get("properties", {})
            if props.get("feature_type", "building") != "building":
                continue
            try:
                geom = wkt.loads(item["wkt"])
            except Exception:  # noqa: BLE001 - shapely raises several types on bad WKT
                raise InputError(f"{path}: feature {i} has no valid 'wkt' polygon") from None
            out.append(Footprint(geom, _normalise_damage(props.get("subtype")), str(props.get("uid", i))))
        return out, "EPSG:4326"
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise InputError(f"{path}: neither xBD label JSON nor a GeoJSON FeatureCollection")
    crs = "EPSG:4326"
    name = (data.get("crs") or {}).get("properties", {}).get("name")
    if name:
        match = re.search(r"EPSG:+(\d+)", name)
        crs = f"EPSG:{match.group(1)}" if match else name
    for i, feature in enumerate(data.get("features", [])):
        if not feature.get("geometry"):
            continue
        props = feature.get("properties") or {}
        damage = _normalise_damage(props.get("subtype", props.get("damage")))
        out.append(Footprint(shape(feature["geometry"]), damage, str(props.get("uid", props.get("id", i)))))
    return out, crs


def burn_footprints(footprints: list[Footprint], crs: str, grid: Grid) -> np.ndarray:
    """Bool (H, W): pixels whose centre lies inside any of ``footprints``."""
    from pyproj import Transformer
    from rasterio.features import rasterize
    from shapely import transform

    if not footprints:
        return np.zeros(grid.shape, dtype=bool)
    to_grid = Transformer.from_crs(crs, grid.pyproj_crs, always_xy=True).transform
    shapes = [(transform(f.geometry, to_grid, interleaved=False), 1) for f in footprints]
    burnt = rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8",
                      all_touched=False)
    return burnt.astype(bool)


def footprint_masks(footprints: list[Footprint], crs: str, grid: Grid, valid: np.ndarray,
                    frame: str = "t1", source: str = "") -> dict[str, Mask]:
    """``built_up`` (every footprint) plus one mask per damage level present, all on ``grid``."""
    masks = {BUILDING: Mask(burn_footprints(footprints, crs, grid) & valid, valid, grid, BUILDING, frame, source)}
    for level in DAMAGE_LEVELS:
        chosen = [f for f in footprints if f.damage == level]
        if chosen:
            masks[level] = Mask(burn_footprints(chosen, crs, grid) & valid, valid, grid, level, frame, source)
    return masks
