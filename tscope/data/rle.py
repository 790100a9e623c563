"""COCO run-length encoding of boolean masks, as the official TerraScope / Sa2VA loaders decode it.

An RLE is ``{"size": [height, width], "counts": str}`` (column-major, pycocotools' compressed
string), which ``pycocotools.mask.decode`` reads back unchanged.
"""

from __future__ import annotations

import numpy as np


def encode(mask: np.ndarray) -> dict:
    """Bool (H, W) -> ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as coco

    if mask.ndim != 2:
        raise ValueError(f"RLE needs a 2-D mask, got shape {mask.shape}")
    rle = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _runs(text: str | bytes) -> list[int]:
    """The run lengths of pycocotools' compressed counts string (its ``rleFrString``, in Python)."""
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    runs: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("the RLE counts string ends inside a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError("the RLE counts string has a character outside its alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def check(rle: object) -> tuple[int, int]:
    """Validate an RLE before any C code sees it; returns (H, W). ValueError says what is wrong.

    pycocotools trusts ``size`` and ``counts``: a size of 100000² allocates 10 GB, and runs that do not
    add up to H x W read or write past its buffer (a segfault, not an error).
    """
    from tscope.errors import InputError
    from tscope.limits import check_pixels

    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE must be a dict with 'size' and 'counts'")
    size = rle["size"]
    if not isinstance(size, list | tuple) or len(size) != 2 or not all(isinstance(v, int) for v in size):
        raise ValueError(f"RLE size {size!r} is not [height, width]")
    try:
        w, h = check_pixels(size[1], size[0], "RLE size")
    except InputError as exc:
        raise ValueError(str(exc)) from None
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) for c in counts):
            raise ValueError("RLE counts must be integers")
        runs = counts
    elif isinstance(counts, str | bytes):
        try:
            runs = _runs(counts)
        except UnicodeEncodeError:
            raise ValueError("the RLE counts string is not ASCII") from None
    else:
        raise ValueError(f"RLE counts must be a string or a list, not {type(counts).__name__}")
    if any(c < 0 for c in runs) or sum(runs) != h * w:
        raise ValueError(f"RLE runs add up to {sum(runs)} pixels, not {h} x {w}, or are negative")
    return h, w


def decode(rle: dict) -> np.ndarray:
    """``{"size", "counts"}`` (counts as str, bytes, or an uncompressed list) -> bool (H, W)."""
    from pycocotools import mask as coco

    h, w = check(rle)
    counts = rle["counts"]
    if isinstance(counts, list):
        obj = coco.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco.decode(obj).astype(bool)


def area(rle: dict) -> int:
    """Pixel count of an encoded mask (no decoding)."""
    from pycocotools import mask as coco

    check(rle)
    counts = rle["counts"]
    if isinstance(counts, list):
        return int(sum(counts[1::2]))
    obj = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return int(coco.area(obj))
