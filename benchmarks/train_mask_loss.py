"""Time of the training mask loss (forward + backward) per recipe, on SAM-2-sized logits.

    python benchmarks/train_mask_loss.py [--sides 448,1024] [--masks 2] [--repeats 3] [--threads 1]

Random low-res logits (masks x 3 candidates x 256 x 256, SAM-2's decoder output for a 1024 input) against
random ground-truth masks of side x side pixels: the release's loss (best-predicted candidate, 12544
uncertainty-sampled points on the low-res grid) beside tscope's alternative (every candidate, dense, at the
image size, plus the IoU-head MSE). Prints a Markdown table of milliseconds per loss + backward.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tscope.train.config import LossRecipe  # noqa: E402
from tscope.train.losses import candidate_seg_loss  # noqa: E402

RECIPES = {
    "release (predicted, 12544 points, low-res)": LossRecipe(),
    "tscope (closest, dense, image size, IoU MSE)": LossRecipe(candidate="closest", iou_weight=1.0, points=0,
                                                               resolution="image"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="448,1024")
    parser.add_argument("--masks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sides = [int(s) for s in args.sides.split(",")]
    print("| recipe | " + " | ".join(f"{s} x {s} target (ms)" for s in sides) + " |")
    print("|---|" + "---:|" * len(sides))
    for name, recipe in RECIPES.items():
        cells = []
        for side in sides:
            torch.manual_seed(0)
            target = torch.rand(args.masks, side, side) > 0.5
            logits = torch.randn(args.masks, 3, 256, 256, requires_grad=True)
            iou = torch.rand(args.masks, 3, requires_grad=True)
            generator = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            for _ in range(args.repeats):
                loss, _, _ = candidate_seg_loss(logits, iou, target, 1024, recipe, generator)
                loss.backward()
            cells.append(f"{(time.perf_counter() - start) / args.repeats * 1000:.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
