"""Where a run executes: the accelerate Accelerator, mixed precision, per-process batch."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from bench.trackers import tracker_names


def resolve_mixed_precision(setting: str, cuda: bool) -> str:
    """'auto' -> fp16 (with GradScaler) on CUDA, full precision on CPU.

    bf16 on CPU is honoured only when asked for explicitly: it is slower than fp32 on
    most CPUs and changes the numbers.
    """
    if setting == "auto":
        return "fp16" if cuda else "no"
    if setting == "fp16" and not cuda:
        raise ValueError("mixed_precision='fp16' needs a CUDA device; use 'bf16' or 'no' on CPU")
    return setting


def make_accelerator(mixed_precision: str, log_dir: str | Path | None = None) -> Accelerator:
    """One Accelerator per run, on CUDA when available, else CPU (gloo when launched with
    several processes). With ``log_dir``, the trackers ``UNIPBENCH_TRACKERS`` names
    (:mod:`bench.trackers`) write there."""
    cuda = torch.cuda.is_available()
    # Accelerate keeps one process-wide state and refuses a second mixed-precision
    # setting; several runs in one process (suites, tests) need it cleared. The
    # distributed part (PartialState) is kept: the process group outlives a run.
    AcceleratorState._reset_state(reset_partial_state=False)
    trackers = tracker_names() if log_dir is not None else []
    return Accelerator(
        cpu=not cuda,
        mixed_precision=resolve_mixed_precision(mixed_precision, cuda),
        log_with=trackers or None,
        project_dir=str(log_dir) if trackers else None,
    )


def per_process_batch(global_batch: int, world_size: int, accum_steps: int) -> int:
    """Samples per process per micro-batch; the global batch must split evenly."""
    denom = world_size * accum_steps
    if global_batch % denom:
        raise ValueError(
            f"batch_size {global_batch} does not split over {world_size} process(es) x "
            f"{accum_steps} accumulation step(s)"
        )
    return global_batch // denom


def device_description(accelerator: Accelerator) -> dict:
    """What the result records about where it ran."""
    dev = accelerator.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "type": dev.type,
        "name": name,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }
