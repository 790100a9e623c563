"""Stage-1 referring-expression segmentation pairs: "Please segment the [class]." + one RLE mask.

The same training format as Terra-CoT (``image``, ``conversations``, ``masks``), with the answer
``Sure, [SEG].`` as in Sa2VA's referring-segmentation data: one sample per usable class of each
image (same filters as synthesis), so the mask decoder first learns what each class looks like.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tscope.data import image as images
from tscope.data import rle
from tscope.data.labels import display_name
from tscope.data.synth import Sources, ground_truth, unique_key, usable
from tscope.geo import writers
from tscope.geo.scene import ReadOptions

QUESTION = "Please segment the {name}."
ANSWER = "Sure, [SEG]."


def res_records(images_in: Sequence[str | Path], out: str | Path, sources: Sources, *, chip: int | None = None,
                limit: int | None = None, read_options: ReadOptions | None = None, progress=None) -> dict:
    """Write ``OUT/images/*.png`` and ``OUT/res.jsonl``; returns a summary."""
    out = Path(out)
    # A failure or Ctrl-C removes the images this run wrote and the folders it made.
    with writers.rollback_on_failure() as made:
        made.mkdir(out / "images")
        records = []
        used: set[str] = set()
        for n, path in enumerate(images_in):
            for gt in ground_truth([path], sources, chip, read_options):
                gt = unique_key(gt, used)
                classes = [c for c, m in gt.masks.items() if usable(m)]
                if not classes:
                    continue
                name = f"images/{gt.key}.png"
                with writers.atomic_path(made.add(out / name)) as tmp:
                    tmp.write_bytes(images.png_bytes(gt.rgb[0]))
                for cls in classes:
                    records.append({
                        "id": f"{gt.key}_res_{cls}",
                        "image": name,
                        "conversations": [
                            {"from": "human", "value": "<image>\n" + QUESTION.format(name=display_name(cls))},
                            {"from": "gpt", "value": ANSWER},
                        ],
                        "masks": [[rle.encode(gt.masks[cls].counted)]],
                        "labels": [cls],
                        "task": "res",
                        "source": [str(path)],
                    })
            if progress:
                progress(n + 1, len(images_in))
            if limit and len(records) >= limit:
                records = records[:limit]
                break
        dst = out / "res.jsonl"
        writers.write_text(made.add(dst), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return {"samples": len(records), "file": str(dst), "images": str(out / "images")}
