"""The data tools are fast enough to be used without thinking about it.

1. Synthetic data: ``synthesize`` writes SODA-like 128-px images (JPEG image + PNG label
   + split lists) at 40 images/s or more. Hundreds per second on an idle core; the
   budget leaves room for a busy shared machine.
2. The pre-run quick check (``quick_check``, run before every protocol run) of a
   600-image split reads a fixed sample, not every file: at most 2 s, and at most 0.25x
   the full ``check_dataset`` of the same split, timed in the same run.

``make bench`` asserts the targets (``--benchmark-enable``); otherwise each body runs once
and a missed target only warns.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.data.check import check_dataset, quick_check
from bench.data.synth import synthesize

MIN_IMAGES_PER_S = 40.0
QUICK_BUDGET_S = 2.0
MAX_QUICK_TO_FULL = 0.25
TRAIN = 600


def test_synthesis_writes_40_images_per_second(benchmark, tmp_path: Path, timing_target) -> None:
    rates: list[float] = []

    def generate() -> None:
        root = tmp_path / f"soda{len(rates)}"
        t = time.perf_counter()
        res = synthesize("soda", root, train=100, test=20, size=128, seed=0)
        rates.append(120 / (time.perf_counter() - t))
        assert len(list((res.root / "JPEGImages").iterdir())) == 120

    rounds = 3 if benchmark.enabled else 1
    benchmark.pedantic(generate, rounds=rounds, warmup_rounds=0)
    rate = max(rates)
    benchmark.extra_info.update(images_per_s=rate)
    print(f"\nsynthesize: {rate:.0f} images/s (128 px SODA-like; needs >= {MIN_IMAGES_PER_S})")
    timing_target(rate >= MIN_IMAGES_PER_S, f"{rate:.0f} images/s < {MIN_IMAGES_PER_S}")


def test_quick_check_reads_a_sample_in_a_fraction_of_the_full_check(
    benchmark, tmp_path: Path, timing_target
) -> None:
    root = tmp_path / "big"
    synthesize("scut_seg", root, train=TRAIN, test=2, size=24)
    quick_s: list[float] = []
    full_s: list[float] = []

    def time_full() -> None:  # pedantic's setup: untimed by the benchmark, timed here
        t = time.perf_counter()
        report = check_dataset("scut_seg", root, splits=["train"])
        full_s.append(time.perf_counter() - t)
        assert report.ok and report.files_read == TRAIN

    def time_quick() -> None:
        t = time.perf_counter()
        report = quick_check("scut_seg", root, "train")
        quick_s.append(time.perf_counter() - t)
        assert report.ok and report.counts == {"train": TRAIN} and report.files_read == 4

    rounds = 5 if benchmark.enabled else 1
    benchmark.pedantic(time_quick, setup=time_full, rounds=rounds, warmup_rounds=0)
    quick, full = min(quick_s), min(full_s)
    ratio = quick / full
    benchmark.extra_info.update(quick_s=quick, full_s=full, ratio=ratio)
    print(f"\nquick_check {quick * 1e3:.1f} ms, check_dataset {full * 1e3:.1f} ms on "
          f"{TRAIN} images: ratio {ratio:.3f} (needs <= {MAX_QUICK_TO_FULL}, "
          f"and <= {QUICK_BUDGET_S} s)")
    timing_target(quick <= QUICK_BUDGET_S, f"quick_check took {quick:.2f} s > {QUICK_BUDGET_S}")
    timing_target(ratio <= MAX_QUICK_TO_FULL, f"quick/full ratio {ratio:.3f} > {MAX_QUICK_TO_FULL}")
