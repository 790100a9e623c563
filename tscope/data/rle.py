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


def decode(rle: dict) -> np.ndarray:
    """``{"size", "counts"}`` (counts as str, bytes, or an uncompressed list) -> bool (H, W)."""
    from pycocotools import mask as coco

    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE must be a dict with 'size' and 'counts'")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        obj = coco.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco.decode(obj).astype(bool)


def area(rle: dict) -> int:
    """Pixel count of an encoded mask (no decoding)."""
    from pycocotools import mask as coco

    counts = rle["counts"]
    obj = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return int(coco.area(obj))
