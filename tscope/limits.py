"""Limits on sizes that untrusted files declare, checked before anything is allocated.

A 758-byte TIFF can claim 200000 x 200000 pixels and an RLE any size: without a check the first
read ends in MemoryError, or a segfault inside a C library. ``TSCOPE_MAX_PIXELS`` raises the limit
for users who really work on larger rasters.
"""

from __future__ import annotations

import os

from tscope.errors import InputError

ENV = "TSCOPE_MAX_PIXELS"
# 1e9 pixels: eight full Sentinel-2 tiles' worth; a float32 band of it is 4 GB.
DEFAULT_MAX_PIXELS = 1_000_000_000


def max_pixels() -> int:
    text = os.environ.get(ENV)
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise InputError(f"{ENV}={text!r} is not a number of pixels") from None
    if value < 1:
        raise InputError(f"{ENV} must be at least 1")
    return value


def check_pixels(width: object, height: object, what: str) -> tuple[int, int]:
    """``(width, height)`` as ints if they are a sane size within the limit; InputError naming ``what``."""
    try:
        w, h = int(width), int(height)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what}: size {width!r} x {height!r} is not a pair of integers") from None
    if w < 0 or h < 0:
        raise InputError(f"{what}: negative size {w} x {h}")
    limit = max_pixels()
    if w * h > limit:
        raise InputError(f"{what}: {w} x {h} = {w * h:,} pixels is over the limit of {limit:,} pixels"
                         f" ({ENV}; raise it if you mean it)")
    return w, h
