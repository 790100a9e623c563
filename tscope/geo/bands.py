"""Band identification: which band of a file is ``red``, ``nir``, ``vv`` ...

Names are STAC ``eo`` common names. A file's bands are identified, in this order, by an explicit
mapping (``--bands red,green,blue,nir``), a sensor preset (``--sensor``, from
``models/sensors.toml``), the band descriptions written in the file (common names, Sentinel-2 band
ids such as ``B04``, or ``B4`` when ``B8A`` is among them, or polarisations), or the colour
interpretation of a plain RGB(A) image.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import rasterio
from rasterio.enums import ColorInterp

from tscope.errors import InputError

COMMON_NAMES = (
    "coastal", "blue", "green", "red", "yellow", "rededge1", "rededge2", "rededge3", "nir", "nir08",
    "nir09", "cirrus", "swir16", "swir22", "pan", "scl", "vv", "vh", "hh", "hv",
)
SAR_NAMES = frozenset({"vv", "vh", "hh", "hv"})

# Other spellings found in band descriptions (Sentinel-2 band ids, rasterio/GDAL habits, STAC asset
# keys of Earth Search and Planetary Computer).
_ALIASES = {
    "b01": "coastal", "b02": "blue", "b03": "green", "b04": "red", "b05": "rededge1",
    "b06": "rededge2", "b07": "rededge3", "b08": "nir", "b8a": "nir08", "b09": "nir09",
    "b10": "cirrus", "b11": "swir16", "b12": "swir22", "rededge": "rededge1", "swir1": "swir16",
    "swir2": "swir22", "near-infrared": "nir", "nir-1": "nir", "coastal_aerosol": "coastal",
    "coastal-aerosol": "coastal", "sar_vv": "vv", "sar_vh": "vh", "panchromatic": "pan",
}


@dataclass(frozen=True)
class SensorPreset:
    name: str
    description: str
    kind: str
    bands: tuple[str, ...]
    optional: tuple[str, ...] = ()
    dn_scale: float | None = None
    dn_offset: float = 0.0
    baseline_offset_dn: float = 0.0


@cache
def sensor_presets() -> dict[str, SensorPreset]:
    text = resources.files("tscope.rules").joinpath("sensors.toml").read_text()
    presets = {}
    for name, spec in tomllib.loads(text).items():
        presets[name] = SensorPreset(
            name=name,
            description=spec["description"],
            kind=spec["kind"],
            bands=tuple(spec["bands"]),
            optional=tuple(spec.get("optional", ())),
            dn_scale=spec.get("dn_scale"),
            dn_offset=float(spec.get("dn_offset", 0.0)),
            baseline_offset_dn=float(spec.get("baseline_offset_dn", 0.0)),
        )
    return presets


def normalise_band_name(name: str) -> str | None:
    """The common name a description stands for, or None."""
    key = name.strip().lower().replace(" ", "_")
    if key in COMMON_NAMES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    # "B4" style ids without the zero are Landsat's as often as Sentinel-2's: only accept B01-style.
    return None


_UNPADDED_ID = re.compile(r"^\s*[bB](\d)\s*$")


def _sentinel2_ids(descriptions: tuple[str | None, ...]) -> bool:
    """Whether a file's descriptions are Sentinel-2 band ids: B8A (the narrow NIR) exists on no other sensor.

    Sentinel-2 files written by GDAL, Google Earth Engine exports and datasets such as Sen1Floods11
    spell the ids without the zero (B1 ... B12, B8A); with B8A among them, B2 is Sentinel-2's blue, not
    Landsat's.
    """
    return any(d and d.strip().lower() == "b8a" for d in descriptions)


def _zero_pad(desc: str) -> str:
    match = _UNPADDED_ID.match(desc)
    return f"b0{match.group(1)}" if match else desc


@dataclass
class BandMap:
    """Common name -> 1-based band index in the file, plus where the mapping came from."""

    indexes: dict[str, int]
    source: str
    preset: SensorPreset | None = field(default=None)

    @property
    def names(self) -> list[str]:
        return sorted(self.indexes, key=self.indexes.__getitem__)


def parse_band_list(spec: str) -> list[str]:
    names = [part.strip().lower() for part in spec.split(",") if part.strip()]
    if not names:
        raise InputError("--bands is empty: give common names in file order, e.g. red,green,blue,nir")
    out = []
    for name in names:
        if name in ("_", "-", "skip"):
            out.append("_")
            continue
        common = normalise_band_name(name)
        if common is None:
            raise InputError(f"--bands: unknown band name {name!r}; known: {', '.join(COMMON_NAMES)}")
        if common in out:
            # Two bands under one name: the second would silently shadow the first.
            raise InputError(f"--bands names {common!r} twice ({spec}); each band name may appear once")
        out.append(common)
    return out


def identify_bands(
    src: rasterio.DatasetReader, bands: str | None = None, sensor: str | None = None
) -> BandMap:
    """Identify the bands of an open dataset (see the module docstring for the order of rules)."""
    count = src.count
    if bands:
        names = parse_band_list(bands)
        if len(names) > count:
            raise InputError(
                f"--bands names {len(names)} bands but {src.name} has only {count}"
            )
        return BandMap({n: i + 1 for i, n in enumerate(names) if n != "_"}, "--bands")
    if sensor:
        presets = sensor_presets()
        if sensor not in presets:
            raise InputError(f"unknown --sensor {sensor!r}; choose from {', '.join(presets)}")
        preset = presets[sensor]
        full = preset.bands + preset.optional
        if count not in range(len(preset.bands), len(full) + 1):
            raise InputError(
                f"--sensor {sensor} expects {len(preset.bands)} bands ({', '.join(preset.bands)})"
                f" but {src.name} has {count}; map them with --bands"
            )
        return BandMap({n: i + 1 for i, n in enumerate(full[:count])}, f"--sensor {sensor}", preset)
    described = {}
    sentinel2 = _sentinel2_ids(src.descriptions)
    for i, desc in enumerate(src.descriptions, start=1):
        common = normalise_band_name(_zero_pad(desc) if sentinel2 else desc) if desc else None
        if common and common not in described:
            described[common] = i
    if described:
        return BandMap(described, "band descriptions")
    interp = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}
    by_colour = {interp[c]: i for i, c in enumerate(src.colorinterp, start=1) if c in interp}
    if len(by_colour) == 3:
        return BandMap(by_colour, "colour interpretation")
    raise InputError(
        f"cannot tell which band of {src.name} is which ({count} bands, no descriptions):"
        " pass --sensor (s2-l2a, s2-l1c, landsat8, rgbn, rgb, s1) or --bands red,green,blue,..."
    )
