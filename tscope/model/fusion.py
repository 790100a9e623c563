"""Optical + SAR: text-guided token-level modality selection (TerraScope, Eq. 4-5).

As the release's training code does it (``internvl.py``, ``fusion_mode == 'query_select'``): for the K
region tokens a mask selects, at the same K positions of the optical image (V_opt, (K, D)) and of the
SAR image (V_sar), with the text-token embeddings Q (L, D) as the query,
``beta_m = mean_over_L softmax_over_K(V_m Q^T / sqrt(D))``; each position takes the SAR token where
``beta_sar > beta_opt`` and the optical one otherwise. The softmax runs over the K selected tokens
(not over the whole image), and the arithmetic stays in the tokens' dtype, as in training.

The release has no optical+SAR inference path; at inference the query is the text present when the
``[SEG]`` is generated (prompt and generated text), where training saw its whole teacher-forced turn.

SAR enters the model as the release prepares it: three channels (VH, VV, their mean), each a 2-98%
stretch of backscatter in dB to uint8 (:func:`sar_to_rgb`).
"""

from __future__ import annotations

import numpy as np
import torch


def relevance(visual: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Selected visual tokens (K, D), query token embeddings (L, D) -> beta (K,), summing to 1."""
    d = query.shape[-1]
    scores = torch.matmul(visual, query.t()) / (d**0.5)  # (K, L)
    return torch.softmax(scores, dim=0).mean(dim=1)


def fuse_region(optical: torch.Tensor, sar: torch.Tensor, query: torch.Tensor,
                index: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Region tokens (K, D) at ``index`` (K,), each from the more relevant modality; and which (K,) 1 = SAR.

    ``optical`` / ``sar``: the images' visual tokens (N, D), spatially aligned; ``query`` (L, D).
    """
    idx = torch.as_tensor(np.asarray(index), device=optical.device, dtype=torch.long)
    v_opt, v_sar = optical[idx], sar[idx]
    query = query.to(v_opt.dtype)
    pick = relevance(v_sar, query) > relevance(v_opt, query)
    return torch.where(pick[:, None], v_sar, v_opt), pick.cpu().numpy().astype(np.uint8)


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
