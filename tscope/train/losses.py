"""Training losses: LM cross-entropy over labelled tokens, and the mask loss (BCE + Dice).

The mask loss reproduces the release's (``VideoLLaVASAMModel_zero3.forward``, ``loss_sample_points=True``):
SAM-2's multimask output keeps the candidate with the best *predicted* IoU; its low-res logits are compared
with the ground truth resized (nearest) to the same grid, on 12544 points per mask drawn as Mask2Former
does (:func:`uncertain_points`: 3x oversampled uniform points, the 75% most uncertain -- logit nearest 0 --
kept, the rest uniform), with sigmoid BCE averaged over points and the "naive" Dice
``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` averaged over masks; BCE x 2 + Dice x 0.5. SAM-2's IoU
head gets no loss there.

tscope's alternative (:class:`tscope.train.config.LossRecipe`): back-propagate through the candidate
*closest* to the ground truth and regress the IoU head on every candidate's actual IoU (MSE), as SAM itself
is trained, so the candidate inference keeps is the one that learned the mask; densely (``points: 0``) and
at the image size (``resolution: image``, the logits upsampled as inference upsamples them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tscope.train.config import LossRecipe

IGNORE = -100  # label of positions excluded from the LM loss (prompt, image and region tokens)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy. ``logits`` (L, V) predict position i+1 from i; ``labels`` (L,) with
    ``IGNORE`` where a token is not a target. Returns the mean over target tokens (0 if none)."""
    shift_logits, shift_labels = logits[:-1].float(), labels[1:].to(logits.device)
    if not (shift_labels != IGNORE).any():
        return shift_logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE)


def bce_per_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, ...) logits and targets in [0, 1] -> (N,) mean sigmoid BCE per mask."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1).mean(1)


def dice_per_mask(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(N, ...) logits and targets in [0, 1] -> (N,) naive Dice loss of sigmoid(logits) per mask."""
    prob = logits.float().sigmoid().flatten(1)
    flat = target.float().flatten(1)
    return 1 - (2 * (prob * flat).sum(-1) + eps) / (prob.sum(-1) + flat.sum(-1) + eps)


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of maps (N, h, w) at points (N, P, 2), (x, y) in [0, 1] over the whole map
    (pixel centres at (i + 0.5) / w, zero outside) -> (N, P)."""
    grid = coords[:, :, None, :].float() * 2 - 1  # grid_sample's [-1, 1], align_corners=False
    return F.grid_sample(maps[:, None].float(), grid, mode="bilinear", align_corners=False)[:, 0, :, 0]


def uncertain_points(logits: torch.Tensor, points: int, oversample_ratio: float = 3.0, importance_ratio: float = 0.75,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Points (N, ``points``, 2) in [0, 1] for logits (N, h, w): ``points x oversample_ratio`` uniform
    draws, of which the ``importance_ratio`` share with the logit closest to 0 (the most uncertain,
    judged at the drawn point itself, not at the nearest pixel) are kept, the rest fresh uniform points.
    Draws from ``generator`` (torch's default RNG if None)."""
    n = logits.shape[0]
    drawn = torch.rand(n, int(points * oversample_ratio), 2, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits.detach(), drawn).abs()
    keep = int(importance_ratio * points)
    index = uncertainty.topk(keep, dim=1).indices
    picked = torch.gather(drawn, 1, index[..., None].expand(-1, -1, 2))
    fresh = torch.rand(n, points - keep, 2, device=logits.device, generator=generator)
    return torch.cat([picked, fresh], dim=1)


def mask_terms(logits: torch.Tensor, target: torch.Tensor, recipe: LossRecipe,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask (BCE, Dice), each (N,), of logits (N, h, w) against targets (N, h, w) of the same size:
    on ``recipe.points`` uncertainty-sampled points per mask, or every pixel when that is 0."""
    if recipe.points:
        with torch.no_grad():
            coords = uncertain_points(logits.float(), recipe.points, recipe.oversample_ratio, recipe.importance_ratio,
                                      generator)
            target = point_sample(target.float(), coords)
        logits = point_sample(logits.float(), coords)
    return bce_per_mask(logits, target), dice_per_mask(logits, target)


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
                       recipe: LossRecipe | None = None, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """SAM-2's candidates (N, C, h, w) with predicted IoUs (N, C) against targets (N, H, W).

    Returns (loss, {"bce", "dice", "iou_mse"} of the trained candidates -- iou_mse 0 unless
    ``recipe.iou_weight`` -- and the index (N,) of the candidate inference keeps: best predicted IoU).
    ``generator`` draws the sample points.
    """
    from tscope.model.architecture import upsample_logits

    recipe = recipe or LossRecipe()
    n, c = candidates.shape[:2]
    rows = torch.arange(n, device=candidates.device)
    kept = iou_pred.detach().argmax(1)
    pool = candidates[rows, kept][:, None] if recipe.candidate == "predicted" else candidates
    k, low = pool.shape[1], tuple(candidates.shape[-2:])
    if recipe.resolution == "low":  # the release: the ground truth goes to the decoder's grid
        truth = F.interpolate(target[:, None].float(), size=low, mode="nearest")[:, 0]
        logits = pool.flatten(0, 1)
    else:  # the logits go to the image, as inference upsamples them
        truth = target.float()
        logits = upsample_logits(pool.flatten(0, 1), tuple(target.shape[-2:]), video_side)
    truth = truth[:, None].expand(n, k, *truth.shape[-2:]).flatten(0, 1)
    bce, dice = (t.view(n, k) for t in mask_terms(logits, truth, recipe, generator))
    per = recipe.bce_weight * bce + recipe.dice_weight * dice
    choice = per.detach().argmin(1)  # a single column for "predicted"
    loss = per[rows, choice].mean()
    iou_mse = 0.0
    if recipe.iou_weight:
        with torch.no_grad():
            # Both empty counts as a perfect mask (IoU 1) for the IoU head.
            actual = torch.tensor([[1.0 if v is None else v for v in mask_iou(candidates[:, j], target, video_side)]
                                   for j in range(c)], device=iou_pred.device).T
        mse = F.mse_loss(iou_pred.float(), actual)
        loss = loss + recipe.iou_weight * mse
        iou_mse = float(mse.detach())
    parts = {"bce": float(bce[rows, choice].detach().mean()), "dice": float(dice[rows, choice].detach().mean()),
             "iou_mse": iou_mse}
    return loss, parts, kept
