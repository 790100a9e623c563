"""Giving freed memory back to the system after the large, many-threaded phases of an answer.

glibc serves each thread from its own arena and keeps what is freed there for reuse: after the
windowed pass over a 10980² tile, about 200 MB of freed window buffers stay in the process and
count in its peak for the rest of the answer (polygons, COGs). ``malloc_trim`` hands them back.
Elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim(0)``), where there is such a call."""
    trim = _trim()
    if trim is not None:
        trim(0)
