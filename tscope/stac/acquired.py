"""When a scene was acquired, from what the scene itself records, and nothing else.

Sources, in order (the first that answers wins):

1. the STAC item a scene came from (``ask item.json`` or an item URL): its ``datetime`` or
   ``start_datetime``/``end_datetime``, carried as ``STAC_*`` metadata of the item's VRT;
2. ``fetch``'s tags: ``ACQUISITION`` (the first item's UTC time) and, for a mosaic of several items,
   ``ACQUISITION_START``/``ACQUISITION_END``;
3. GDAL's own product metadata: ``ACQUISITION_START_TIME``/``ACQUISITION_STOP_TIME`` (Sentinel-1
   SAFE driver), ``PRODUCT_START_TIME``/``PRODUCT_STOP_TIME`` (Sentinel-2 driver), which a GeoTIFF
   written from those products keeps;
4. the STAC Item ``fetch`` wrote beside a local file (``<name>.json`` whose data asset is this file);
5. an ``ACQUISITION`` tag holding only a date (earlier ``fetch`` versions wrote the solar date): that
   UTC day;
6. ``TIFFTAG_DATETIME``: by the TIFF 6.0 specification the time the *file* was created, so only an
   upper bound (the image was acquired no later than that);
7. nothing: unknown, the whole range STAC can express.

A file's modification time is never used: it says when the file was copied, not when the image
was taken.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Acquired:
    """An instant (``when``) and/or the interval the acquisition lies in, and how it is known."""

    start: datetime
    end: datetime
    source: str
    when: datetime | None = None

    @property
    def known(self) -> bool:
        return self.start != EARLIEST or self.end != LATEST


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 / RFC 3339 time as UTC (naive times are taken as UTC); None if it is not one."""
    if not text or _DATE.match(text.strip()):
        return None
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def _pair(tags: dict[str, str], start_key: str, end_key: str, source: str, when: datetime | None = None
          ) -> Acquired | None:
    start, end = parse_time(tags.get(start_key)), parse_time(tags.get(end_key))
    if start is None and end is None:
        return None
    start, end = start or end, end or start
    return Acquired(min(start, end), max(start, end), source, when or (start if start == end else None))


def _instant(when: datetime | None, source: str) -> Acquired | None:
    return Acquired(when, when, source, when) if when is not None else None


def _sidecar(path: Any) -> Acquired | None:
    """The datetime of the STAC Item ``fetch`` wrote beside a local file, if it describes that file."""
    if not isinstance(path, Path):
        return None
    sidecar = path.with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        href = record["assets"]["data"]["href"]
        props = record["properties"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if href not in (path.name, f"./{path.name}"):
        return None
    source = f"STAC item {sidecar.name}"
    when = parse_time(props.get("datetime"))
    return (_pair(props, "start_datetime", "end_datetime", source, when) if props.get("start_datetime")
            else _instant(when, source))


def acquisition(tags: dict[str, str], path: Any = None) -> Acquired:
    """When the scene with dataset ``tags`` (and file ``path``, for a local sidecar) was acquired."""
    found = (
        _pair(tags, "STAC_START_DATETIME", "STAC_END_DATETIME", "STAC item", parse_time(tags.get("STAC_DATETIME")))
        or _instant(parse_time(tags.get("STAC_DATETIME")), "STAC item")
        or _pair(tags, "ACQUISITION_START", "ACQUISITION_END", "ACQUISITION tags",
                 parse_time(tags.get("ACQUISITION")))
        or _instant(parse_time(tags.get("ACQUISITION")), "ACQUISITION tag")
        or _pair(tags, "ACQUISITION_START_TIME", "ACQUISITION_STOP_TIME", "ACQUISITION_START_TIME tag")
        or _pair(tags, "PRODUCT_START_TIME", "PRODUCT_STOP_TIME", "PRODUCT_START_TIME tag")
        or _sidecar(path)
    )
    if found:
        return found
    day = (tags.get("ACQUISITION") or "").strip()
    if _DATE.match(day):
        start = datetime.fromisoformat(day).replace(tzinfo=UTC)
        return Acquired(start, start + timedelta(days=1) - timedelta(seconds=1), "ACQUISITION tag (a date)")
    try:
        created = datetime.strptime(tags["TIFFTAG_DATETIME"], "%Y:%m:%d %H:%M:%S").replace(tzinfo=UTC)
    except (KeyError, ValueError):
        return Acquired(EARLIEST, LATEST, "unknown")
    return Acquired(EARLIEST, created, "no later than TIFFTAG_DATETIME (when the file was created)")
