"""Terra-CoT and referring-segmentation JSON lines -> training samples (images, text, [SEG] masks).

Record format (what ``tscope data synth`` / ``tscope data res`` write, the release's training format):
``image`` (or ``pre_image`` + ``post_image``) relative to the JSONL's folder (or ``image_root``),
``conversations`` = [human turn with ``<image>``, gpt turn], ``masks`` = one list of COCO RLEs per
``[SEG]`` of the gpt turn, in order (the RLEs of a group are unioned), optional ``frames`` ("t1"/"t2"
per mask; without it a pair's first half of masks is on the pre image, as the release's loader splits
them). tscope extension: ``sar_image``, a SAR rendering (VH, VV, mean) of ``image`` on the same pixels,
for optical+SAR samples (region tokens then come from the more question-relevant modality).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tscope.errors import InputError

SEG = "[SEG]"
IMAGE = "<image>"


@dataclass
class Sample:
    """One training sample. ``images``: uint8 (H, W, 3) per frame (pre, post); ``masks``: bool (H, W)
    per [SEG] of ``answer``, on image ``frames[k]``; ``sar``: uint8 (H, W, 3) twin of images[0] or None."""

    id: str
    images: list[np.ndarray]
    question: str
    answer: str
    masks: list[np.ndarray]
    frames: list[int]
    sar: np.ndarray | None = None


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file (InputError naming the line of a broken one)."""
    from tscope.data.synth import read_records

    path = Path(path)
    if not path.is_file():
        raise InputError(f"training data {path}: no such file")
    records = read_records(path)
    if not records:
        raise InputError(f"training data {path}: no records")
    return records


def split_holdout(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a seeded ``fraction`` of the records is held out (at least one when > 0)."""
    if fraction <= 0 or len(records) < 2:
        return records, []
    order = np.random.default_rng(seed).permutation(len(records))
    n = min(len(records) - 1, max(1, round(fraction * len(records))))
    held = set(order[:n].tolist())
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def _turns(record: dict, rid: str) -> tuple[str, str]:
    conv = record.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        raise InputError(f"sample {rid}: 'conversations' needs a human and a gpt turn")
    human = next((t.get("value", "") for t in conv if t.get("from") == "human"), None)
    gpt = next((t.get("value", "") for t in conv if t.get("from") == "gpt"), None)
    if human is None or gpt is None:
        raise InputError(f"sample {rid}: 'conversations' needs a human and a gpt turn")
    question = "\n".join(line for line in human.replace(IMAGE, "").split("\n") if line.strip()).strip()
    return question, gpt


def _frames(record: dict, n_masks: int, n_images: int, rid: str) -> list[int]:
    if "frames" in record:
        names = record["frames"]
        if len(names) != n_masks:
            raise InputError(f"sample {rid}: {len(names)} frames for {n_masks} masks")
        out = []
        for name in names:
            index = int(str(name).lstrip("tT")) - 1 if str(name).lstrip("tT").isdigit() else -1
            if not 0 <= index < n_images:
                raise InputError(f"sample {rid}: frame {name!r} is not one of t1..t{n_images}")
            out.append(index)
        return out
    if n_images == 2:
        return [0] * (n_masks // 2) + [1] * (n_masks - n_masks // 2)
    return [0] * n_masks


class TrainData:
    """Lazily decoded samples of a list of records; images resolve against ``root``."""

    def __init__(self, records: list[dict], root: str | Path):
        self.records = records
        self.root = Path(root)

    @classmethod
    def open(cls, path: str | Path, image_root: str | Path | None = None) -> TrainData:
        return cls(read_jsonl(path), image_root or Path(path).parent)

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, name: str, rid: str) -> np.ndarray:
        from tscope.data.image import png_array

        path = Path(name)
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise InputError(f"sample {rid}: image {path} not found")
        return png_array(path.read_bytes())

    def __getitem__(self, index: int) -> Sample:
        from tscope.data import rle

        record = self.records[index]
        rid = str(record.get("id", index))
        if "image" in record:
            names = [record["image"]]
        elif "pre_image" in record and "post_image" in record:
            names = [record["pre_image"], record["post_image"]]
        else:
            raise InputError(f"sample {rid}: needs 'image' or 'pre_image' + 'post_image'")
        images = [self._image(n, rid) for n in names]
        sar = self._image(record["sar_image"], rid) if record.get("sar_image") else None
        if sar is not None and (len(images) != 1 or sar.shape != images[0].shape):
            raise InputError(f"sample {rid}: sar_image must pair with one image of the same size")
        question, answer = _turns(record, rid)
        groups = record.get("masks") or []
        if answer.count(SEG) != len(groups):
            raise InputError(f"sample {rid}: {answer.count(SEG)} [SEG] in the answer for {len(groups)} mask groups")
        frames = _frames(record, len(groups), len(images), rid)
        masks = []
        for k, group in enumerate(groups):
            parts = [rle.decode(g) for g in (group if isinstance(group, list) else [group])]
            shape = images[frames[k]].shape[:2]
            if not parts or any(p.shape != shape for p in parts):
                raise InputError(f"sample {rid}: mask {k} does not match its image size {shape}")
            masks.append(np.logical_or.reduce(parts))
        return Sample(rid, images, question, answer, masks, frames, sar)
