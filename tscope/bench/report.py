"""Accuracy and IoU summaries of scored bench samples, as JSON and Markdown.

Accuracy per task type and their macro average (every task weighs the same, as in the paper's
"Avg."), plus the micro average over samples. Mask IoU (ours: the official release has no IoU
script): mean over samples that have one, mean for correctly vs incorrectly answered samples, and
the Pearson correlation between a sample's IoU and its correctness (0/1, i.e. point-biserial).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from tscope.bench.schema import TASK_TYPES, abbreviation
from tscope.geo.writers import write_json, write_text


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson r, or None with fewer than 2 pairs or a constant variable."""
    if len(x) < 2:
        return None
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def summarise(records: list[dict], model: str = "") -> dict:
    order = {t: i for i, t in enumerate(TASK_TYPES.values())}
    tasks = sorted({r["task_type"] for r in records}, key=lambda t: (order.get(t, len(order)), t))
    per_task = {}
    for task in tasks:
        rows = [r for r in records if r["task_type"] == task]
        correct = sum(bool(r["correct"]) for r in rows)
        ious = [r["iou"] for r in rows if r.get("iou") is not None]
        per_task[task] = {"abbreviation": abbreviation(task), "total": len(rows), "correct": correct,
                          "accuracy": 100.0 * correct / len(rows), "mean_iou": _mean(ious), "with_iou": len(ious)}
    with_iou = [r for r in records if r.get("iou") is not None]
    ious = [r["iou"] for r in with_iou]
    correct = sum(bool(r["correct"]) for r in records)
    return {
        "model": model,
        "samples": len(records),
        "correct": correct,
        "per_task": per_task,
        "macro_accuracy": _mean([v["accuracy"] for v in per_task.values()]),
        "micro_accuracy": 100.0 * correct / len(records) if records else None,
        "iou": {
            "samples": len(ious),
            "mean": _mean(ious),
            "mean_correct": _mean([r["iou"] for r in with_iou if r["correct"]]),
            "mean_incorrect": _mean([r["iou"] for r in with_iou if not r["correct"]]),
            "pearson_r": pearson(ious, [float(bool(r["correct"])) for r in with_iou]),
        },
        "unanswered": dict(Counter(r["reason"] for r in records if r.get("reason"))),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(summary: dict) -> str:
    """The results table in the README's style (tasks as columns, Avg. last), then the details."""
    per_task = summary["per_task"]
    heads = [v["abbreviation"] for v in per_task.values()]
    lines = ["# TerraScope-Bench results", "",
             "| Model | " + " | ".join(heads) + " | Avg. | mIoU |",
             "|---|" + "---:|" * (len(heads) + 2),
             f"| {summary['model'] or 'model'} | " + " | ".join(_fmt(v["accuracy"]) for v in per_task.values())
             + f" | {_fmt(summary['macro_accuracy'])} | {_fmt(summary['iou']['mean'], 3)} |", "",
             "Accuracy in %; Avg. is the macro average over task types; mIoU is the mean mask IoU over samples"
             " with ground-truth masks.", "", "## Per task", "",
             "| task type | total | correct | accuracy % | mean IoU | samples with IoU |",
             "|---|---:|---:|---:|---:|---:|"]
    for task, v in per_task.items():
        lines.append(f"| {task} ({v['abbreviation']}) | {v['total']} | {v['correct']} | {_fmt(v['accuracy'])} |"
                     f" {_fmt(v['mean_iou'], 3)} | {v['with_iou']} |")
    iou = summary["iou"]
    lines += ["", f"Overall: {summary['correct']} / {summary['samples']} correct"
              f" ({_fmt(summary['micro_accuracy'])} %, micro average).", "", "## Mask IoU", "",
              f"- samples with IoU: {iou['samples']}",
              f"- mean IoU: {_fmt(iou['mean'], 3)}",
              f"- mean IoU of correct answers: {_fmt(iou['mean_correct'], 3)}",
              f"- mean IoU of incorrect answers: {_fmt(iou['mean_incorrect'], 3)}",
              f"- Pearson r (IoU vs correct): {_fmt(iou['pearson_r'], 3)}"]
    if summary["unanswered"]:
        lines += ["", "## Counted wrong without an answer", "", "| reason | samples |", "|---|---:|"]
        lines += [f"| {reason} | {n} |" for reason, n in sorted(summary["unanswered"].items(), key=lambda x: -x[1])]
    return "\n".join(lines) + "\n"


def write_report(summary: dict, out_dir: str | Path) -> dict[str, str]:
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / "report.json", summary)
    md_path = write_text(out_dir / "report.md", markdown(summary))
    return {"json": str(json_path), "markdown": str(md_path)}
