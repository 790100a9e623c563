"""Safe local file names from remote identifiers (STAC item ids, AOI ids, collection names).

Remote metadata is untrusted: an id may hold path separators, ``..``, control characters or be
empty. Names keep ``[A-Za-z0-9._-]`` only, never start with a dot, and stay short; an id that had
to be changed gets a short hash of the original so two different ids never map to one name.
"""

from __future__ import annotations

import hashlib
import re

MAX_LEN = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(remote_id: object, max_len: int = MAX_LEN) -> str:
    """A file-system-safe, deterministic name for ``remote_id`` (no separators, no leading dot)."""
    text = str(remote_id)
    cleaned = _UNSAFE.sub("_", text).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    if cleaned == text and cleaned and len(cleaned) <= max_len:
        return cleaned
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    head = cleaned[: max_len - len(digest) - 1].rstrip("._-")
    return f"{head}_{digest}" if head else f"id_{digest}"
