"""Optical + SAR: text-guided token-level modality selection (TerraScope, Eq. 4-5), at inference.

For each modality m the relevance of its visual tokens V_m (N, D) to the question tokens Q (L, D) is
``beta_m = mean_over_L softmax_N(V_m Q^T / sqrt(D))`` -- a distribution over the N token positions.
Optical and SAR tokens are spatially aligned (same layout), so for every region token position the
SAR token is taken where ``beta_SAR > beta_opt`` and the optical one otherwise.

SAR enters the model as the release prepares it: three channels (VH, VV, their mean), each a 2-98%
stretch of backscatter in dB to uint8 (:func:`sar_to_rgb`).
"""

from __future__ import annotations

import numpy as np
import torch


def relevance(visual: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
    """Visual tokens (N, D), question token embeddings (L, D) -> beta (N,), summing to 1."""
    d = visual.shape[-1]
    scores = visual.float() @ question.float().T / d**0.5  # (N, L)
    return scores.softmax(dim=0).mean(dim=1)


def select_modality(optical: torch.Tensor, sar: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
    """bool (N,): True where the SAR token is more relevant to the question than the optical one."""
    return relevance(sar, question) > relevance(optical, question)


def fuse_region(optical: torch.Tensor, sar: torch.Tensor, question: torch.Tensor,
                index: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Region tokens (K, D) at ``index`` (K,) taking each from the more relevant modality; and which (K,) 1=SAR."""
    use_sar = select_modality(optical, sar, question)
    idx = torch.as_tensor(index, device=optical.device, dtype=torch.long)
    pick = use_sar[idx]
    tokens = torch.where(pick[:, None], sar[idx], optical[idx])
    return tokens, pick.cpu().numpy().astype(np.uint8)


def stretch_to_uint8(band: np.ndarray, valid: np.ndarray | None = None,
                     limits: tuple[float, float] | None = None) -> np.ndarray:
    """Linear 2-98% stretch of a float band to uint8 (limits computed on valid finite pixels unless given)."""
    if limits is None:
        sample = band[np.isfinite(band) & (valid if valid is not None else True)]
        limits = tuple(np.percentile(sample, [2, 98])) if sample.size else (0.0, 1.0)
    lo, hi = limits
    scaled = (band - lo) / (hi - lo if hi > lo else 1.0)
    return (np.clip(np.nan_to_num(scaled), 0, 1) * 255).astype(np.uint8)


def sar_db(power: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (10 * np.log10(power)).astype(np.float32)


def sar_to_rgb(vh: np.ndarray, vv: np.ndarray, limits: dict[str, tuple[float, float]] | None = None,
               valid: np.ndarray | None = None) -> np.ndarray:
    """Linear power VH, VV (H, W) -> uint8 (H, W, 3): [VH, VV, mean] in dB, each stretched."""
    vh_db, vv_db = sar_db(vh), sar_db(vv)
    mean_db = (vh_db + vv_db) / 2
    limits = limits or {}
    return np.stack([stretch_to_uint8(vh_db, valid, limits.get("vh")), stretch_to_uint8(vv_db, valid, limits.get("vv")),
                     stretch_to_uint8(mean_db, valid, limits.get("mean"))], axis=-1)
