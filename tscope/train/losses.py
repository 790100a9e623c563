"""Training losses: LM cross-entropy over labelled tokens, and the mask loss (BCE + Dice).

The mask loss has the release's terms and weights (sigmoid BCE averaged over pixels and the "naive"
Dice ``1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)`` with eps = 1, averaged over masks; release
BCE x 2 + Dice x 0.5, paper lambda = 0.5 -> 0.5 and 0.5), computed densely on the logits upsampled to
the image, where the release samples 12544 uncertainty points.

SAM-2 proposes three candidate masks per prompt and tscope's inference keeps the one with the best
*predicted* IoU. :func:`candidate_seg_loss` trains that choice the way SAM itself is trained: the
BCE + Dice loss back-propagates through the candidate closest to the ground truth, and the IoU head
regresses each candidate's actual IoU (MSE, ``iou_weight``), so the candidate inference picks is the
one that learned the mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of positions excluded from the LM loss (prompt, image and region tokens)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy. ``logits`` (L, V) predict position i+1 from i; ``labels`` (L,) with
    ``IGNORE`` where a token is not a target. Returns the mean over target tokens (0 if none)."""
    shift_logits, shift_labels = logits[:-1].float(), labels[1:].to(logits.device)
    if not (shift_labels != IGNORE).any():
        return shift_logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE)


def bce_per_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, H, W) logits and {0, 1} targets -> (N,) mean sigmoid BCE per mask."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1).mean(1)


def dice_per_mask(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(N, H, W) logits and {0, 1} targets -> (N,) naive Dice loss of sigmoid(logits) per mask."""
    prob = logits.float().sigmoid().flatten(1)
    flat = target.float().flatten(1)
    return 1 - (2 * (prob * flat).sum(-1) + eps) / (prob.sum(-1) + flat.sum(-1) + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor, video_side: int) -> list[float | None]:
    """IoU per mask against bool targets (N, H, W) of the mask inference makes from ``logits``
    (:func:`tscope.model.architecture.masks_from_logits`), scored as the bench scores (None when both are empty)."""
    from tscope.bench.evaluate import iou
    from tscope.model.architecture import masks_from_logits

    with torch.no_grad():
        pred = masks_from_logits(logits.detach(), tuple(target.shape[-2:]), video_side)
    truth = target.bool().cpu().numpy()
    return [iou(p, t) for p, t in zip(pred, truth, strict=True)]


def candidate_seg_loss(candidates: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, video_side: int,
                       bce_weight: float = 2.0, dice_weight: float = 0.5,
                       iou_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """SAM-2's candidates (N, C, h, w) with predicted IoUs (N, C) against targets (N, H, W).

    Returns (loss, {"bce", "dice", "iou_mse"} of the trained candidates, the index (N,) of the
    candidate inference would keep: best predicted IoU).
    """
    from tscope.model.architecture import upsample_logits

    n, c = candidates.shape[:2]
    size = tuple(target.shape[-2:])
    full = upsample_logits(candidates.flatten(0, 1), size, video_side).view(n, c, *size)
    flat_target = target[:, None].expand(n, c, *size).flatten(0, 1)
    bce = bce_per_mask(full.flatten(0, 1), flat_target).view(n, c)
    dice = dice_per_mask(full.flatten(0, 1), flat_target).view(n, c)
    per = bce_weight * bce + dice_weight * dice
    best = per.detach().argmin(1)
    rows = torch.arange(n, device=per.device)
    loss = per[rows, best].mean()
    with torch.no_grad():
        # Both empty counts as a perfect mask (IoU 1) for the IoU head.
        actual = torch.tensor([[1.0 if v is None else v for v in mask_iou(candidates[:, j], target, video_side)]
                               for j in range(c)], device=iou_pred.device).T
    iou_mse = F.mse_loss(iou_pred.float(), actual)
    loss = loss + iou_weight * iou_mse
    parts = {"bce": float(bce[rows, best].detach().mean()), "dice": float(dice[rows, best].detach().mean()),
             "iou_mse": float(iou_mse.detach())}
    return loss, parts, iou_pred.detach().argmax(1)
