"""The TerraScope-Bench parquet layout: the official columns plus ours for masks and georeferencing.

Official (as published on the Hub and read by the official ``infer_terrascope_bench.py``):
``image`` (struct ``{bytes, path}``: PNG/JPEG bytes), ``question`` (str), ``candidates`` (a dict
``{"A": text, …}`` or its JSON string), ``answer`` (the correct letter), ``task_type`` (str).

Ours, all optional when reading: ``id``; ``post_image`` (struct, the post-event image of a pair);
``source``, ``post_source`` (georeferenced rasters the images were rendered from); ``grid`` (JSON:
``crs`` WKT, ``transform``, ``width``, ``height`` of the sample on the source); ``gt_masks`` (JSON
list of ``{"label", "frame", "rle"}`` with COCO RLE on the image's pixels); ``answer_value`` (JSON:
the exact number or word behind the correct option); ``unit``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tscope.data import rle
from tscope.errors import InputError
from tscope.geo.writers import atomic_path
from tscope.limits import check_pixels

TASK_TYPES = {
    "CA": "coverage_percentage",
    "AQ": "absolute_area",
    "CR": "comparative_area",
    "BRD": "boundary_detection",
    "DM": "distance_measurement",
    "BCE": "building_change",
}
ABBREVIATIONS = {v: k for k, v in TASK_TYPES.items()}
LETTERS = "ABCD"
REQUIRED = ("image", "question", "candidates", "answer", "task_type")


@dataclass
class GTMask:
    label: str
    frame: str
    rle: dict


@dataclass
class BenchSample:
    """One row, validated. ``candidates`` keeps letter order A, B, …"""

    row: int
    id: str
    image: bytes
    image_path: str
    question: str
    candidates: dict[str, str]
    answer: str
    task_type: str
    post_image: bytes | None = None
    source: str | None = None
    post_source: str | None = None
    grid: dict | None = None
    gt_masks: list[GTMask] = field(default_factory=list)
    answer_value: object = None
    unit: str | None = None


def abbreviation(task_type: str) -> str:
    return ABBREVIATIONS.get(task_type, task_type)


def _image_cell(value: object, row: int, column: str) -> tuple[bytes, str]:
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path") or ""
    elif isinstance(value, bytes | bytearray):
        data, path = bytes(value), ""
    else:
        raise InputError(f"row {row}: {column} must be a struct {{bytes, path}} or bytes, got {type(value).__name__}")
    if not data:
        raise InputError(f"row {row}: {column} has no image bytes")
    return bytes(data), str(path)


def _candidates(value: object, row: int) -> dict[str, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f"row {row}: candidates is a string but not JSON: {value[:60]!r}") from None
    if not isinstance(value, dict):
        raise InputError(f"row {row}: candidates must be a dict or a JSON object, got {type(value).__name__}")
    # A parquet struct column carries every key of the schema: unused options come back as None.
    out = {str(k).strip().upper(): str(v) for k, v in value.items() if v is not None}
    if len(out) < 2 or any(k not in LETTERS for k in out):
        raise InputError(f"row {row}: candidates need 2 to 4 options keyed A-D, got keys {sorted(out)}")
    return dict(sorted(out.items()))


def _json_cell(value: object, row: int, column: str) -> object:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f"row {row}: {column} is not valid JSON") from None
    return value


def parse_row(row: int, record: dict) -> BenchSample:
    """Validate one row (a dict of column -> value); errors name the row."""
    missing = [c for c in REQUIRED if c not in record or record[c] is None]
    if missing:
        raise InputError(f"row {row}: missing {', '.join(missing)}")
    image, path = _image_cell(record["image"], row, "image")
    candidates = _candidates(record["candidates"], row)
    answer = str(record["answer"]).strip().upper()
    if answer not in candidates:
        raise InputError(f"row {row}: answer {record['answer']!r} is not one of the candidates {list(candidates)}")
    question = str(record["question"]).strip()
    if not question:
        raise InputError(f"row {row}: the question is empty")
    post = record.get("post_image")
    post_bytes = _image_cell(post, row, "post_image")[0] if post is not None else None
    masks = []
    for i, item in enumerate(_json_cell(record.get("gt_masks"), row, "gt_masks") or []):
        if not isinstance(item, dict) or not isinstance(item.get("rle"), dict):
            raise InputError(f"row {row}: gt_masks[{i}] must be {{label, frame, rle}}")
        try:
            rle.check(item["rle"])
        except ValueError as exc:
            raise InputError(f"row {row}: gt_masks[{i}]: {exc}") from None
        masks.append(GTMask(str(item.get("label", "")), str(item.get("frame", "t1")), item["rle"]))
    grid = _json_cell(record.get("grid"), row, "grid")
    if grid is not None:
        if not isinstance(grid, dict) or not {"crs", "transform", "width", "height"} <= set(grid):
            raise InputError(f"row {row}: grid must be {{crs, transform, width, height}}")
        check_pixels(grid["width"], grid["height"], f"row {row}: grid")
    return BenchSample(
        row=row,
        # The official rows have no id and several questions share an image: the row index is the key.
        id=str(record.get("id") or f"row{row}:{path}"),
        image=image,
        image_path=path,
        question=question,
        candidates=candidates,
        answer=answer,
        task_type=str(record["task_type"]),
        post_image=post_bytes,
        source=record.get("source") or None,
        post_source=record.get("post_source") or None,
        grid=grid,
        gt_masks=masks,
        answer_value=_json_cell(record.get("answer_value"), row, "answer_value"),
        unit=record.get("unit") or None,
    )


def read_bench(path: str | Path) -> list[BenchSample]:
    """Every row of a bench parquet (official or ours), validated; the first bad row is an InputError."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such bench file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for non-parquet input
        raise InputError(f"{path}: not a parquet file ({exc})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: not a TerraScope-Bench parquet, missing column(s) {', '.join(missing)}")
    try:
        return [parse_row(i, record) for i, record in enumerate(table.to_pylist())]
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def write_bench(rows: list[dict], path: str | Path) -> Path:
    """Write rows (dicts with the columns above; JSON columns as Python objects) atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([
        ("id", pa.string()), ("image", image_type), ("question", pa.string()), ("candidates", pa.string()),
        ("answer", pa.string()), ("task_type", pa.string()), ("post_image", image_type), ("source", pa.string()),
        ("post_source", pa.string()), ("grid", pa.string()), ("gt_masks", pa.string()),
        ("answer_value", pa.string()), ("unit", pa.string()),
    ])
    columns: dict[str, list] = {name: [] for name in schema.names}
    for row in rows:
        for name in schema.names:
            value = row.get(name)
            if name in ("candidates", "grid", "gt_masks", "answer_value") and value is not None:
                value = json.dumps(value, ensure_ascii=False)
            columns[name].append(value)
    table = pa.table(columns, schema=schema)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)
