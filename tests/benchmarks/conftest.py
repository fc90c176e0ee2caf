"""Benchmarks check their speed targets when timing is on (`make bench`).

In the ordinary test run (``--benchmark-disable``) each body still runs once, so the code
paths are exercised and the ratio is printed, but a missed *timing* target only warns:
one timing on a shared, noisy machine is no verdict. Memory targets always assert.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest


class TimingTargetMissed(UserWarning):
    """A speed ratio outside its target in a run without benchmark timing."""


@pytest.fixture
def timing_target(benchmark) -> Callable[[bool, str], None]:
    def check(ok: bool, what: str) -> None:
        if benchmark.enabled:
            assert ok, what
        elif not ok:
            warnings.warn(f"{what} (asserted under `make bench`)", TimingTargetMissed, stacklevel=2)

    return check
