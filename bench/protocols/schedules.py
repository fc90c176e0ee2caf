"""Per-iteration learning-rate schedules: linear warm-up, then poly or cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_poly(
    total_iters: int,
    warmup_iters: int,
    power: float = 1.0,
    warmup_ratio: float = 1e-6,
    min_ratio: float = 0.0,
) -> Callable[[int], float]:
    """Multiplier of the base lr at iteration ``it``: mmseg's poly with linear warm-up.

    As in mmcv's ``PolyLrUpdaterHook`` the warm-up scales the *poly* lr of the same
    iteration (it does not ramp to the base lr and then drop), so the curve joins the
    poly decay continuously at ``warmup_iters``.
    """

    def poly(it: int) -> float:
        progress = min(1.0, it / max(1, total_iters))
        return (1.0 - min_ratio) * (1.0 - progress) ** power + min_ratio

    def f(it: int) -> float:
        if warmup_iters > 0 and it < warmup_iters:
            return poly(it) * (warmup_ratio + (1.0 - warmup_ratio) * it / warmup_iters)
        return poly(it)

    return f


def warmup_cosine(
    total_iters: int, warmup_iters: int, min_ratio: float = 0.0
) -> Callable[[int], float]:
    """Linear warm-up from 0, then half-cosine to ``min_ratio`` (MAE-style, per iteration)."""

    def f(it: int) -> float:
        if warmup_iters > 0 and it < warmup_iters:
            return it / warmup_iters
        t = (it - warmup_iters) / max(1, total_iters - warmup_iters)
        t = min(1.0, max(0.0, t))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f
