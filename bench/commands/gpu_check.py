"""``unipbench gpu-check``: time our training steps on one GPU and report MFU (a few minutes).

Registered through the ``unipbench.commands`` entry point (``add_gpu_check_command``);
``scripts/gpu_check.py`` runs the same function without an install.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.gpu.check import CHECKS, CheckSettings, quick_settings
from bench.gpu.report import run_checks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu", "--quick", dest="quick", action="store_true",
                   help="tiny models on the CPU (ViT-T, 64 px, 2 timed steps): every code "
                   "path in seconds; CUDA-only checks are skipped")
    p.add_argument("--checks", metavar="LIST",
                   help=f"comma list of checks to run (default: all: {','.join(CHECKS)})")
    p.add_argument("--adapter", help="fine-tuning backbone's adapter (default mae)")
    p.add_argument("--size", help="fine-tuning ViT size (default B)")
    p.add_argument("--crop", type=int, help="fine-tuning crop side (default 512)")
    p.add_argument("--batch", type=int, help="fine-tuning images per GPU (default 8)")
    p.add_argument("--steps", type=int, help="timed steps per check (default 20)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5)")
    p.add_argument("--distill-batch", type=int,
                   help="distillation images per GPU (default 128, at 224 px)")
    p.add_argument("--compile-backend", help="torch.compile backend (default inductor)")
    p.add_argument("--peak-tflops", type=float,
                   help="dense bf16 peak of this GPU in TFLOP/s (default: from the table "
                   "of known GPUs, matched on its name)")
    p.add_argument("--out", type=Path, help="also write the report as JSON here")


def settings_from_args(args: argparse.Namespace) -> CheckSettings:
    """The check settings of the parsed flags (the quick preset first, then each flag)."""
    given: dict[str, Any] = {}
    for flag, key in (("adapter", "adapter"), ("size", "size"), ("crop", "crop"),
                      ("batch", "batch"), ("steps", "steps"), ("warmup", "warmup"),
                      ("distill_batch", "distill_batch"), ("compile_backend", "compile_backend"),
                      ("peak_tflops", "peak_tflops")):
        value = getattr(args, flag, None)
        if value is not None:
            given[key] = value
    if args.checks:
        given["checks"] = tuple(c.strip() for c in args.checks.split(",") if c.strip())
    return quick_settings(**given) if args.quick else CheckSettings(**given)


def run(args: argparse.Namespace) -> int:
    cfg = settings_from_args(args)
    if args.out is not None:  # an unwritable path fails now, not after minutes of checks
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8"):
            pass
    report = run_checks(cfg)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    failed = [r["check"] for r in report["rows"]
              if r["status"].startswith(("error", "FAIL"))]
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gpu-check", help="time the training steps on this GPU and report MFU",
        description="Fine-tuning step of ViT-B + UPerNet + FCN at 512 px (bf16; fp16 with "
        "GradScaler; one-GPU DDP with SyncBN over NCCL; torch.compile), and the NMI-HAD "
        "distillation step: step time, model TFLOP/s, MFU against the GPU's dense bf16 "
        "peak, peak memory. See docs/gpu-check.md.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


add_gpu_check_command = register
