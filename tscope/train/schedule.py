"""Learning-rate schedule as a pure function of the step (so a resumed run needs no scheduler state).

Release recipe: linear warmup from ``lr x warmup_start_factor`` to ``lr`` over ``warmup_ratio`` of
the steps, then cosine annealing to ``min_lr`` at the last step (``linear`` decays linearly instead,
``constant`` stays at ``lr``).
"""

from __future__ import annotations

import math


def lr_at(step: int, total: int, lr: float, warmup_ratio: float = 0.3, kind: str = "cosine",
          start_factor: float = 1e-5, min_lr: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total``."""
    warm = int(round(warmup_ratio * total))
    if step < warm:
        return lr * (start_factor + (1 - start_factor) * step / warm)
    if kind == "constant":
        return lr
    progress = min(1.0, (step - warm) / max(1, total - warm))
    if kind == "linear":
        return min_lr + (lr - min_lr) * (1 - progress)
    if kind == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {kind!r}")


def batch_indices(step: int, n: int, batch_size: int, seed: int, drop_last: bool = False) -> list[int]:
    """Sample indices of global step ``step``: epoch ``e`` visits a permutation seeded by ``seed + e``,
    cut into consecutive batches (the last one partial unless ``drop_last``)."""
    import numpy as np

    per_epoch = steps_per_epoch(n, batch_size, drop_last)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(n)
    return [int(i) for i in order[k * batch_size:(k + 1) * batch_size]]


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    steps = n // batch_size if drop_last else -(-n // batch_size)
    if steps < 1:
        raise ValueError(f"{n} samples make no full batch of {batch_size}")
    return steps
