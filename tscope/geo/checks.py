"""Sanity checks on a scene's values before answering from them: never a confident answer from garbage.

Index thresholds only mean something on the quantities they were published for: reflectance for
optical bands, calibrated backscatter (sigma0 or gamma0) for SAR. A few small windows spread over
the scene are read (cheap at any size) and checked:

* SAR whose backscatter is not calibrated (digital numbers or amplitudes: a median of 58 "dB"
  where calibrated VV is around -10 dB) is refused;
* optical bands whose scaled values are not reflectance (a median outside -0.2..1.5: digital
  numbers read as reflectance, a wrong scale) are refused;
* ``--l2a-offset`` on a file without the Sentinel-2 baseline-04.00 offset (values turn negative)
  is refused; integer Sentinel-2-style files where no value of any band is below DN 1000 get a
  warning that they may carry the offset without ``--l2a-offset``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rasterio.windows import Window

from tscope.errors import InputError
from tscope.geo.bands import SAR_NAMES
from tscope.geo.scene import CATEGORICAL_BANDS, Scene

SAR_DB_RANGE = (-35.0, 5.0)  # medians of calibrated backscatter over any real scene lie well inside
REFLECTANCE_MEDIAN_RANGE = (-0.2, 1.5)
NEGATIVE_SHARE_LIMIT = 0.05  # more than this share of negative reflectance: an offset that is not there
OFFSET_DN = 1000


def _windows(scene: Scene, size: int = 128, per_side: int = 3) -> list[Window]:
    """Up to ``per_side``² windows of at most ``size`` px, spread evenly over the analysis grid, each inside
    one of the file's blocks where it can be (a window across a block edge decompresses every block it
    touches: on a 2048² file of 512-px tiles, nine unaligned windows decompressed all sixteen tiles)."""
    grid = scene.grid
    blocks = scene.block_shape if scene.is_native and not scene.by_gcps else None

    def starts(extent: int, length: int, block: int | None) -> list[int]:
        out = set()
        for i in range(per_side):
            start = round(i * (extent - length) / max(1, per_side - 1))
            if block is not None and block >= length:
                first = start // block * block
                start = min(start, min(first + block, extent) - length)
            out.add(start)
        return sorted(out)

    w, h = min(size, grid.width), min(size, grid.height)
    rows = starts(grid.height, h, blocks[0] if blocks else None)
    cols = starts(grid.width, w, blocks[1] if blocks else None)
    return [Window(c, r, w, h) for r in rows for c in cols]


def sample(scene: Scene, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Finite, valid physical values of each band in ``names`` from a few windows spread over the scene."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with scene.reading():
        for window in _windows(scene):
            bands, valid = scene.read(list(names), window)
            for name in names:
                values = bands[name][valid]
                parts[name].append(values[np.isfinite(values)])
    return {n: np.concatenate(v) if v else np.empty(0, np.float32) for n, v in parts.items()}


def check_scene(scene: Scene, names: Sequence[str]) -> list[str]:
    """Refuse (InputError) values that cannot be what ``names`` are read as; return warnings for doubtful ones."""
    names = [n for n in names if n not in CATEGORICAL_BANDS]
    if not names:
        return []
    values = sample(scene, names)
    warnings: list[str] = []
    file = scene.path.name
    for name, v in values.items():
        if not v.size:
            continue
        if name in SAR_NAMES:
            power = v[v > 0]
            if not power.size:
                continue
            median_db = float(np.median(10 * np.log10(power)))
            lo, hi = SAR_DB_RANGE
            if not lo <= median_db <= hi:
                raise InputError(
                    f"{file}: {name.upper()} backscatter has a median of {median_db:.1f} dB; calibrated sigma0/gamma0"
                    f" lies mostly between {lo:g} and {hi:g} dB, so these are not calibrated values (digital numbers"
                    " or amplitudes?): calibrate the scene (e.g. Sentinel-1 RTC), or check --sar-format"
                )
            continue
        median = float(np.median(v))
        lo, hi = REFLECTANCE_MEDIAN_RANGE
        if not lo <= median <= hi:
            raise InputError(
                f"{file}: band {name} reads as reflectance {median:.3g} (median after scaling by"
                f" {scene.scales[name][0]:g}); reflectance lies between 0 and about 1.5, so the scaling is wrong:"
                " pass --sensor, or give the file scale/offset tags"
            )
    optical = [n for n in names if n not in SAR_NAMES and values[n].size]
    if scene.options.l2a_offset:
        for name in optical:
            negative = float(np.mean(values[name] < 0))
            if negative > NEGATIVE_SHARE_LIMIT:
                raise InputError(
                    f"{file}: with --l2a-offset {100 * negative:.0f}% of band {name} is negative reflectance:"
                    " this file does not carry the Sentinel-2 baseline-04.00 offset; drop --l2a-offset"
                )
    elif optical and all(scene.scales[n] == (1e-4, 0.0) for n in optical):
        darkest = min(float(np.percentile(values[n], 0.1)) for n in optical)
        if darkest >= OFFSET_DN * 1e-4:
            warnings.append(
                f"{file}: no value of {', '.join(optical)} is below reflectance {OFFSET_DN * 1e-4:g} (DN {OFFSET_DN}):"
                " a Sentinel-2 product of processing baseline 04.00 or later carries that offset; if this is one,"
                " pass --l2a-offset (a fully cloudy or hazy scene can look like this too)"
            )
    return warnings
