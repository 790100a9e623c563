"""Held-out scoring during training.

The held-out Terra-CoT samples have free-form answers, not TerraScope-Bench's lettered options, so
the bench's option-accuracy protocol does not apply; the *mask* metric is the bench's
(:func:`tscope.bench.evaluate.iou`). Per sample:

* ``lm_loss``, ``seg_loss``, ``tf_iou``: teacher-forced (ground-truth text and region tokens), the
  mask IoU of each [SEG] against its ground-truth mask;
* ``answer_match``: free greedy generation (:func:`tscope.model.interleave.generate`); the text inside
  ``<answer>…</answer>`` equals the ground truth's after lower-casing and collapsing whitespace;
* ``gen_iou``: each ground-truth mask's best IoU among the generated masks of its frame (0 when the
  generation made none), as the bench scores a model's masks.
"""

from __future__ import annotations

import re

import numpy as np

from tscope.train.dataset import TrainData

_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)


def answer_text(text: str) -> str:
    match = _ANSWER.search(text)
    inner = match.group(1) if match else text
    inner = re.sub(r"<\|[^|]*\|>", "", inner)
    return " ".join(inner.lower().split()).strip(" .")


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def evaluate_holdout(module, data: TrainData, limit: int | None = None, max_new_tokens: int = 256,
                     generate_answers: bool = True) -> dict:
    """Score up to ``limit`` samples of ``data`` with a :class:`~tscope.train.forward.TeacherForcing` module
    (samples longer than its ``max_length`` are counted as ``skipped``)."""
    import torch

    from tscope.bench.evaluate import iou
    from tscope.model.interleave import generate
    from tscope.model.prompt import user_text
    from tscope.train.forward import TooLong
    from tscope.train.freeze import train_mode

    model, tokenizer = module.model, module.tokenizer
    was_training = model.training
    model.eval()
    rows, skipped = [], 0
    try:
        with torch.no_grad():
            for i in range(min(len(data), limit or len(data))):
                sample = data[i]
                try:
                    out = module(sample, seed=i)  # the same mask-loss points at every evaluation
                except TooLong:
                    skipped += 1  # as in training: longer than max_length
                    continue
                row = {"id": sample.id, "lm_loss": out["lm_loss"], "seg_loss": out["seg_loss"],
                       "tf_iou": _mean(out["iou"])}
                if generate_answers:
                    text = user_text(sample.question, model.config.system_prompt)
                    gen = generate(model, tokenizer, sample.images, text, max_new_tokens=max_new_tokens, sar=sample.sar)
                    row["answer_match"] = answer_text(gen.text) == answer_text(sample.answer)
                    scores = []
                    for truth, frame in zip(sample.masks, sample.frames, strict=True):
                        values = [v for m, f in zip(gen.masks, gen.frames, strict=True) if f == frame
                                  and (v := iou(m, truth)) is not None]
                        if values:
                            scores.append(max(values))
                        elif truth.any():
                            scores.append(0.0)
                    row["gen_iou"] = _mean(scores)
                rows.append(row)
    finally:
        if was_training:
            train_mode(model)
    summary = {"samples": len(rows), "skipped": skipped, "lm_loss": _mean([r["lm_loss"] for r in rows]),
               "seg_loss": _mean([r["seg_loss"] for r in rows]), "tf_iou": _mean([r["tf_iou"] for r in rows])}
    if generate_answers:
        summary["answer_match"] = _mean([float(r["answer_match"]) for r in rows])
        summary["gen_iou"] = _mean([r["gen_iou"] for r in rows])
    return summary
