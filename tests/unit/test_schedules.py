"""Learning-rate schedules against mmcv's poly-with-warm-up and MAE's cosine formulas."""

from __future__ import annotations

import math

import pytest

from bench.protocols.schedules import warmup_cosine, warmup_poly


def mmcv_poly_warmup(it: int, total: int, warmup: int, ratio: float, power: float) -> float:
    """Independent transcription of the mmcv hook's arithmetic (min lr 0)."""
    regular = (1 - it / total) ** power
    if it < warmup:
        k = (1 - it / warmup) * (1 - ratio)
        return regular * (1 - k)
    return regular


@pytest.mark.parametrize("it", [0, 1, 750, 1499, 1500, 1501, 7000, 14399, 14400])
def test_poly_with_warmup_matches_mmcv(it: int) -> None:
    f = warmup_poly(14400, 1500, power=1.0, warmup_ratio=1e-6)
    assert f(it) == pytest.approx(mmcv_poly_warmup(it, 14400, 1500, 1e-6, 1.0), abs=1e-12)


def test_poly_joins_continuously_after_warmup() -> None:
    f = warmup_poly(14400, 1500)
    assert abs(f(1500) - f(1499)) < 1e-3  # no jump at the end of the warm-up
    assert f(14400) == 0.0


def test_poly_min_ratio_is_the_floor() -> None:
    f = warmup_poly(100, 0, power=0.9, min_ratio=0.1)
    assert f(100) == pytest.approx(0.1)
    assert f(0) == pytest.approx(1.0)


def test_cosine_warmup_then_half_cosine() -> None:
    f = warmup_cosine(1000, 100)
    assert f(0) == 0.0 and f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(1.0)
    assert f(550) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(1000) == pytest.approx(0.0, abs=1e-12)
