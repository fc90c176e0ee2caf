"""GPU-hour estimates: the arithmetic on hand-computed cases, and a tiny suite end to end."""

from __future__ import annotations

import pytest

from bench.gpu.estimate import (
    Cost,
    MacCounter,
    estimate_suite,
    evaluation_flops,
    evaluations,
    gpu_hours,
    run_costs,
    slide_windows,
    training_flops,
)


def test_fine_tuning_run_by_hand() -> None:
    # ViT-B fine-tuning on SODA with 600 GMACs per image forward: 14400 iterations x 8
    # images x 3 passes x 2 FLOPs per MAC = 4.1472e17 FLOPs; at 40 % of 989.5 TFLOP/s
    # (395.8e12 FLOP/s) that is 1047.80 s = 0.291056 h.
    cost = Cost(frozen=0, trained=600 * 10**9, backward=2, evaluated=500 * 10**9)
    flops = training_flops(cost, iters=14400, batch=8)
    assert flops == pytest.approx(4.1472e17)
    assert gpu_hours(flops) == pytest.approx(0.291056, rel=1e-5)
    # Evaluation: 18 evaluations x 1000 images x 2 windows x 500 GMACs x 2 = 3.6e16 FLOPs.
    assert evaluation_flops(cost, 18, 1000, 2) == pytest.approx(3.6e16)


def test_probe_pays_one_forward_of_the_backbone() -> None:
    # Frozen 100 GMACs + a 1 GMAC head (forward + weight gradient): 2 x (100 + 2) GFLOPs
    # x 10 steps x 8 images = 16.32 TFLOPs.
    assert training_flops(Cost(100 * 10**9, 10**9, 1, 0), 10, 8) == pytest.approx(16.32e12)
    # Four heads on one forward cost ~ one probe, not four.
    costs = run_costs("linear_probe", {"features": 100 * 10**9, "head": 10**9})
    shared = training_flops(costs["lr sweep, shared"], 10, 8)
    single = training_flops(costs["as written"], 10, 8)
    assert shared == pytest.approx(2 * (100 + 4 * 2) * 1e9 * 80)
    assert single < shared < 1.1 * single


@pytest.mark.parametrize(("iters", "interval", "n"),
                         [(14400, 800, 18), (9800, 700, 14), (16800, 800, 21), (100, 0, 1),
                          (75000, 1000, 75)])
def test_evaluations_as_the_engine_runs_them(iters: int, interval: int, n: int) -> None:
    # Every `interval` steps before the last, then once at the end (engine.Trainer.run).
    assert evaluations(iters, interval) == n


def test_sliding_windows_as_mmseg() -> None:
    # 640 x 480 resized to 683 x 512: one row, two columns of 512 crops at stride 341.
    assert slide_windows(512, 683, 512, 341) == 2
    assert slide_windows(480, 640, 480, 341) == 2
    assert slide_windows(512, 512, 512, 341) == 1
    assert slide_windows(1024, 1366, 512, 341) == 3 * 4


def test_tiny_suite_end_to_end(tmp_path) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        "suite: tiny\nprotocol_version: '2.0'\n"
        "datasets:\n  - {name: soda, root: data/SODA}\n  - {name: mfnet_thermal, root: d}\n"
        "models:\n  - {adapter: mae, size: T}\n  - {adapter: deit, size: T}\n"
        "protocols:\n  linear_probe: {crop_size: 32, slide_crop: 32, slide_stride: 21,"
        " scale: [128, 32], iters: 10, warmup_iters: 1, eval_interval: 4}\n"
        "seeds: [0, 1]\n"
    )
    counter = MacCounter()
    est = estimate_suite(str(suite), counter)
    assert est.runs == 2 * 2 * 2  # models x datasets x seeds
    (macs,) = counter._cache.values()  # both ViT-T share one count
    # The probe's head by hand: a 1x1 conv from 4 x 192 concatenated channels to SODA's 21
    # classes on the 2 x 2 grid, then the logits' bilinear upsampling to 32 x 32 (fvcore
    # counts 4 per output element).
    assert macs["head"] == 4 * 192 * 21 * 4 + 21 * 32 * 32 * 4
    # A 32-pixel ViT-T sees 2 x 2 patches; 3 evaluations (4, 8, end); frames 43 x 32 hold
    # two 32-pixel windows at stride 21; SODA 1000 and MFNet 393 test images.
    cost = run_costs("linear_probe", macs)["as written"]
    train = gpu_hours(training_flops(cost, 10, 8))
    evals = gpu_hours(evaluation_flops(cost, 3, 1000, 2) + evaluation_flops(cost, 3, 393, 2))
    assert est.train_h == pytest.approx(2 * 2 * 2 * train)
    assert est.eval_h == pytest.approx(2 * 2 * evals)
    assert est.alternatives["4-lr sweep, one run per lr"] == pytest.approx(4 * est.total_h)
