"""The C heap during the large, many-threaded phases of an answer (glibc; elsewhere these do nothing).

* Reusing freed window buffers: numpy's temporaries for a 512² float32 window are 1 MB each, and a
  window of DSWE water takes about fifty. glibc hands blocks this large back to the system when they
  are freed (unmapped, or trimmed off the top of a thread's heap), so each one is faulted in anew:
  a million page faults and about 2 s of kernel time over a 10980² tile. Inside
  :func:`reusing_freed_memory` glibc keeps freed buffers for reuse.
* Giving it back afterwards: what the pass's threads freed would count in the peak for the rest of
  the answer (polygons, COGs; about 200 MB after a 10980² tile). On leaving the block the thresholds
  go back to glibc's defaults and ``malloc_trim`` hands the free pages back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from functools import cache

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
KEPT_BLOCK = 32 * 2**20  # serve blocks below this from the heap (a 2048² float32 band is 16 MB)
KEPT_FREE = 256 * 2**20  # keep this much freed memory at the top of a heap for reuse
DEFAULT_THRESHOLD = 128 * 2**10  # glibc's initial value of both
_passes = 0  # blocks running now (batch runs passes in several threads; the settings are the process's)
_passes_lock = threading.Lock()


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def reusing_freed_memory() -> Iterator[None]:
    """Within the block, glibc reuses freed buffers of up to ``KEPT_BLOCK`` instead of returning them to
    the system and faulting them in again; after it, the free pages go back (``malloc_trim``)."""
    global _passes
    libc = _libc()
    if libc is None:
        yield
        return
    with _passes_lock:
        _passes += 1
        if _passes == 1:
            libc.mallopt(M_MMAP_THRESHOLD, KEPT_BLOCK)
            libc.mallopt(M_TRIM_THRESHOLD, KEPT_FREE)
    try:
        yield
    finally:
        with _passes_lock:
            _passes -= 1
            if not _passes:
                libc.mallopt(M_MMAP_THRESHOLD, DEFAULT_THRESHOLD)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_THRESHOLD)
                libc.malloc_trim(0)
