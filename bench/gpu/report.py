"""The GPU check's report: table, environment, the MFU goal's verdict, and the driver."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from bench.gpu.check import CheckSettings, Row, Runner
from bench.gpu.peaks import HOPPER_CLASS, match_peak

# Our goal for the bf16 fine-tuning step on an H100/H200-class GPU.
MFU_GOAL = 0.40


def goal_verdict(rows: list[Row], runner: Runner) -> dict[str, Any]:
    """Whether the bf16 fine-tuning step reached MFU_GOAL (judged on H100/H200 only)."""
    row = next((r for r in rows if r.check == "finetune_bf16"), None)
    value = row.mfu if row is not None else None
    found = match_peak(runner.device_name) if runner.cuda else None
    out: dict[str, Any] = {"target_mfu": MFU_GOAL, "mfu": value, "met": None}
    if value is None:
        out["verdict"] = "not measured (no fine-tuning bf16 MFU: no CUDA, no peak, or it failed)"
    elif found is None or found.label not in HOPPER_CLASS:
        out["verdict"] = (f"not judged: the goal is set for H100/H200-class GPUs "
                          f"(measured {value:.1%} on {runner.device_name})")
    else:
        out["met"] = value >= MFU_GOAL
        out["verdict"] = (f"{'met' if out['met'] else 'NOT met'}: fine-tuning bf16 MFU "
                          f"{value:.1%} (goal {MFU_GOAL:.0%} on {found.label})")
    return out


def environment(runner: Runner) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": runner.device_name,
        "device_type": runner.dev.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "peak_tflops": runner.peak,
        "peak_source": runner.peak_source,
    }
    if runner.cuda:
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(runner.dev)))
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            nccl = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except (AttributeError, RuntimeError):
            env["nccl"] = None
    return env


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _notes_text(row: Row) -> str:
    n = row.notes
    parts = []
    if "compile_s" in n:
        parts.append(f"compile {n['compile_s']:.1f} s ({n['backend']})")
    if "skipped_steps" in n:
        parts.append(f"{n['skipped_steps']} skipped, scale {n['final_scale']:g}")
    if "teacher" in n:
        parts.append(f"{n['teacher']} -> {n['student']}, {n['img']} px x {n['batch']}")
    if "sync_bn_layers" in n:
        parts.append(f"{n['sync_bn_layers']} SyncBN, {n['backend']}")
    return "; ".join(parts)


def format_table(rows: list[Row]) -> str:
    head = ("check", "step ms", "TFLOP/s", "MFU", "mem GiB", "status", "notes")
    lines = [head]
    for r in rows:
        lines.append((r.check, _fmt(r.step_ms, ".1f"), _fmt(r.tflops, ".3g"),
                      "-" if r.mfu is None else f"{r.mfu:.1%}", _fmt(r.mem_gib, ".2f"),
                      r.status, _notes_text(r)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    out = []
    for line in lines:
        cells = [c.ljust(w) if i in (0, 5) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=False))]
        out.append("  ".join(cells + [line[-1]]).rstrip())
    return "\n".join(out)


def run_checks(cfg: CheckSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every check of ``cfg``, print the table and the verdict; return the report."""
    t0 = time.perf_counter()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device: run with --cpu (tiny models) or on a GPU machine")
    runner = Runner(cfg)
    env = environment(runner)
    peak = f"{runner.peak:g} TFLOP/s ({runner.peak_source})" if runner.peak else "unknown"
    log(f"device: {env['device']}; torch {env['torch']}, CUDA {env['cuda']}; dense bf16 "
        f"peak {peak}")
    rows = runner.run(progress=lambda name: log(f"  running {name} ..."))
    verdict = goal_verdict(rows, runner)
    elapsed = time.perf_counter() - t0
    log(format_table(rows))
    log("FLOPs: multiply-adds x 2 of the forward pass (fvcore, attention matmuls included); "
        "a training step = 3 x forward; MFU = model FLOP/s / peak.")
    log(f"goal: {verdict['verdict']}")
    log(f"elapsed: {elapsed:.1f} s")
    return {
        "environment": env,
        "settings": {**asdict(cfg), "checks": list(cfg.checks)},
        "flops_convention": "2 x multiply-adds of the forward pass counted by "
        "bench.backbones.flops (fvcore, attention matmuls included); training step = "
        "3 x forward; a frozen teacher = 1 x forward",
        "rows": [asdict(r) for r in rows],
        "goal": verdict,
        "elapsed_s": round(elapsed, 3),
    }
