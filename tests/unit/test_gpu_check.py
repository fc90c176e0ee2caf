"""The GPU check: peak table, MFU arithmetic, verdict, and a quick CPU run of every check."""

from __future__ import annotations

import argparse
import json

import pytest

from bench.gpu.check import CHECKS, NO_CUDA, CheckSettings, Row, Runner, all_checks, quick_settings
from bench.gpu.peaks import match_peak, mfu
from bench.gpu.report import goal_verdict, run_checks


@pytest.mark.parametrize(
    ("name", "label", "tflops"),
    [
        # Names as torch.cuda.get_device_name() reports them.
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", "H100 NVL", None),
        ("NVIDIA H200", "H200 SXM", 989.5),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
        ("NVIDIA A100 80GB PCIe", "A100", 312.0),
        ("NVIDIA L40S", "L40S", 362.05),
        ("NVIDIA A10", "A10", 125.0),
        ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090", 165.2),
    ],
)
def test_peak_table_matches_device_names(name: str, label: str, tflops: float | None) -> None:
    peak = match_peak(name)
    assert peak is not None and (peak.label, peak.tflops) == (label, tflops)


@pytest.mark.parametrize(
    "name", ["NVIDIA A10G", "NVIDIA GH200 480GB", "NVIDIA GeForce RTX 4090 Laptop GPU",
             "Tesla V100-SXM2-16GB"])
def test_other_devices_are_not_guessed(name: str) -> None:
    assert match_peak(name) is None


def test_mfu_by_hand() -> None:
    # 29.1 TFLOP in 100 ms = 291 TFLOP/s; over an H100 SXM's 989.5: 0.29409...
    assert mfu(29.1e12, 0.1, 989.5) == pytest.approx(291 / 989.5)
    with pytest.raises(ValueError, match="positive"):
        mfu(1e12, 0.0, 989.5)


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown check"):
        CheckSettings(checks=("finetune_bf16", "nope"))
    with pytest.raises(ValueError, match="warmup"):
        CheckSettings(warmup=0)
    with pytest.raises(ValueError, match="peak_tflops"):
        CheckSettings(peak_tflops=-1)


class _FakeRunner:
    cuda = True

    def __init__(self, name: str) -> None:
        self.device_name = name


@pytest.mark.parametrize(
    ("name", "value", "met"),
    [("NVIDIA H100 80GB HBM3", 0.41, True), ("NVIDIA H200", 0.39, False),
     ("NVIDIA A100-SXM4-80GB", 0.55, None)],
)
def test_goal_is_judged_on_hopper_only(name: str, value: float, met: bool | None) -> None:
    rows = [Row("finetune_bf16", mfu=value)]
    verdict = goal_verdict(rows, _FakeRunner(name))  # type: ignore[arg-type]
    assert verdict["met"] is met
    assert ("not judged" in verdict["verdict"]) is (met is None)


def test_a_failing_check_leaves_the_others_running() -> None:
    def broken(self: Runner, row: Row) -> Row:
        raise RuntimeError("out of memory\nsecond line")

    from bench.registry import GPU_CHECKS

    # A plug-in check (the entry-point group) that fails, then the built-in ones.
    GPU_CHECKS.register("broken_plugin", broken)
    try:
        cfg = quick_settings(checks=("broken_plugin", "finetune_fp16_scaler", "ddp_syncbn_bf16"))
        rows = Runner(cfg).run()
    finally:
        GPU_CHECKS.unregister("broken_plugin")
    assert [r.status for r in rows] == ["error: RuntimeError: out of memory", NO_CUDA, NO_CUDA]


def test_quick_cpu_run_of_every_check(tmp_path, capsys) -> None:
    from bench.commands.gpu_check import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "check.json"
    # aot_eager: the compiled row still captures forward and backward graphs, without
    # inductor's C++ build (minutes on a small CPU).
    args = parser.parse_args(["--cpu", "--compile-backend", "aot_eager", "--out", str(out)])
    assert run(args) == 0
    report = json.loads(out.read_text())
    rows = {r["check"]: r for r in report["rows"]}
    assert list(rows) == list(all_checks()) == [*CHECKS, "distill_bf16"]
    assert rows["finetune_fp16_scaler"]["status"] == NO_CUDA
    assert rows["ddp_syncbn_bf16"]["status"] == NO_CUDA
    for name in ("finetune_bf16", "distill_bf16", "finetune_bf16_compile"):
        row = rows[name]
        assert row["status"] == "ok", row
        assert row["step_ms"] > 0 and row["flops_per_step"] > 0
        # Achieved TFLOP/s is the step's model FLOPs over its median time.
        assert row["tflops"] == pytest.approx(row["flops_per_step"] / row["step_ms"] / 1e9)
        assert row["mfu"] is None  # no peak for a CPU
    # The compiled model computes what the eager one does: the same count.
    assert rows["finetune_bf16_compile"]["flops_per_step"] == rows["finetune_bf16"][
        "flops_per_step"]
    assert rows["finetune_bf16_compile"]["notes"]["compile_s"] >= 0
    # Distillation: frozen teacher forward + 3 x the student's, per image, times the batch.
    d = rows["distill_bf16"]
    per_image = 2 * (d["notes"]["teacher_macs"] + 3 * d["notes"]["student_macs"])
    assert d["flops_per_step"] == per_image * 2
    assert report["settings"]["size"] == "T" and report["environment"]["device_type"] == "cpu"
    printed = capsys.readouterr().out
    assert "finetune_bf16" in printed and "elapsed:" in printed and "goal:" in printed


def test_no_cuda_without_cpu_flag_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--cpu"):
        run_checks(CheckSettings())


def test_command_is_registered_by_entry_point() -> None:
    import importlib
    import re
    from pathlib import Path

    # The line in the unipbench.commands table (tomllib is not in Python 3.10).
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    section = pyproject.split('[project.entry-points."unipbench.commands"]', 1)[1]
    target = re.search(r'^gpu-check = "([^"]+)"$', section.split("\n[", 1)[0], re.M)
    assert target is not None
    module, _, attr = target.group(1).partition(":")
    add = getattr(importlib.import_module(module), attr)
    parser = argparse.ArgumentParser()
    add(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["gpu-check", "--batch", "4", "--checks", "finetune_bf16"])
    from bench.commands.gpu_check import settings_from_args

    cfg = settings_from_args(args)
    assert (cfg.batch, cfg.size, cfg.crop, cfg.checks) == (4, "B", 512, ("finetune_bf16",))


def test_training_count_adds_the_auxiliary_fcn_by_hand() -> None:
    """What the training forward adds to the counted model is the auxiliary FCN, exactly:
    at 64 px a ViT-T's 1/16 level is 4 x 4 with 192 channels; the FCN's 3x3 conv to 256
    channels is 192*256*9*16 multiply-adds, its BatchNorm 2 per element in eval (fvcore's
    batchnorm rule with affine weights), its 1x1 classifier 256*21*16 (SODA's 21 classes)."""
    import torch

    from bench.gpu.check import TrainForward, build_finetune, forward_macs

    cfg = quick_settings()
    model, s, info = build_finetune(cfg, torch.device("cpu"))
    assert (s.aux_channels, s.aux_num_convs, s.aux_in_index, info.num_classes) == (256, 1, 2, 21)
    with_aux = forward_macs(TrainForward(model), (3, 64, 64), torch.device("cpu"))
    model.aux_head = None
    without = forward_macs(TrainForward(model), (3, 64, 64), torch.device("cpu"))
    assert with_aux - without == 192 * 256 * 9 * 16 + 2 * 256 * 16 + 256 * 21 * 16


class _FakeScaler:
    """GradScaler's scale bookkeeping: halved in place when a step finds inf/nan."""

    def __init__(self, bad_calls: set[int]) -> None:
        import torch

        self._scale = torch.tensor(65536.0)
        self.bad_calls = bad_calls
        self.calls = 0

    def get_scale(self) -> float:
        return float(self._scale)

    def step(self) -> None:
        self.calls += 1
        if self.calls in self.bad_calls:
            self._scale.mul_(0.5)


@pytest.mark.parametrize(("bad", "skipped"), [({1}, 0), ({2}, 0), ({3}, 1), ({3, 4}, 2)])
def test_scaler_skips_are_counted_after_warm_up_only(bad: set[int], skipped: int) -> None:
    # quick settings: 1 warm-up step, then 1 untimed and 2 timed steps (calls 3 and 4).
    runner = Runner(quick_settings())
    scaler = _FakeScaler(bad)
    row = Row("finetune_fp16_scaler")
    runner._time_scaled(scaler.step, scaler, row)
    assert scaler.calls == 4
    assert row.notes["skipped_steps"] == skipped
    assert row.status.startswith("FAIL") is (skipped > 0)
