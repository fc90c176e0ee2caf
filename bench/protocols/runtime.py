"""Where a run executes: the accelerate Accelerator, mixed precision, compilation,
per-process batch.

One precision policy for every training loop (the protocols and distillation alike):
``mixed_precision: auto`` means fp16 autocast with a dynamic GradScaler on CUDA, as the
released pipelines train (apex O1 for segmentation, ``torch.cuda.amp`` for distillation),
and full precision on CPU. ``bf16`` is honoured on any device when asked for; ``fp16``
needs CUDA; ``no`` never autocasts.

``compile: auto`` compiles the training step's model with ``torch.compile`` on CUDA and
runs eagerly on CPU, where compilation costs more than it saves on short runs; ``on`` and
``off`` force it. Compilation is a runtime choice: it is not part of a run's identity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench.trackers import tracker_names

CompileChoice = Literal["auto", "on", "off"]
# The torch.compile backend of compiled training steps. Tests swap in "aot_eager" (the
# same graph capture and autograd tracing without C++ code generation) to stay fast.
COMPILE_BACKEND = "inductor"


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


def compile_supported() -> bool:
    """Whether this PyTorch build and platform can run ``torch.compile``."""
    if not hasattr(torch, "compile"):
        return False
    try:
        from torch._dynamo import is_dynamo_supported
    except ImportError:
        return False
    return bool(is_dynamo_supported())


def resolve_compile(setting: str, cuda: bool) -> bool:
    """'auto' -> compile on CUDA (where supported), eager on CPU; 'on' / 'off' force it."""
    if setting == "off":
        return False
    if setting == "auto":
        return cuda and compile_supported()
    if setting != "on":
        raise ValueError(f"compile must be 'auto', 'on' or 'off', got {setting!r}")
    if not compile_supported():
        raise ValueError(
            f"compile='on' needs torch.compile, which PyTorch {torch.__version__} does not "
            "support on this platform; use compile='off'"
        )
    return True


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``: a wrapper sharing ``model``'s parameters. Save and load
    state through ``model`` itself, never the wrapper (whose keys gain ``_orig_mod.``).

    The model's forward returns the loss, so the compiled graph is the whole training
    step's forward and loss, and AOTAutograd compiles its backward with it; the optimiser
    step stays eager (under a per-step Python-float lr it would recompile, and it is a few
    per cent of a step).

    Random ops (dropout, drop path) run as in eager mode, drawing from the same global
    generator, so a compiled run follows the eager run's curve to float tolerance and its
    RNG states in a checkpoint mean the same thing; inductor's own generator would not.

    Shapes are static (``dynamic=False``): a training run keeps one batch shape, and a
    second shape (another batch size in the same process) gets its own static graph, not
    dynamo's automatic switch to symbolic shapes, whose kernels are slower on every step.

    On the CPU the model's 4-D weights (convolutions) are first put in channels-last
    order, in place: values and parameter objects are unchanged (the optimiser keeps
    them), but inductor, which runs CPU convolutions channels-last, then no longer
    converts every weight and weight gradient on every step, and the convolutions of a
    UPerNet step run faster (``tests/benchmarks/test_bench_compile.py``). Bilinear
    resizing in a CPU graph is ATen's kernel (:mod:`bench.models.resize_op`). A model
    already wrapped in DDP keeps its layout: its gradient buckets were laid out for the
    weights as they were, and DDP would copy every mismatched gradient (with a warning).
    """
    if _on_cpu(model) and not isinstance(model, DistributedDataParallel):
        model.to(memory_format=torch.channels_last)
    if COMPILE_BACKEND == "inductor":
        return torch.compile(
            model, backend="inductor", dynamic=False, options={"fallback_random": True}
        )
    return torch.compile(model, backend=COMPILE_BACKEND, dynamic=False)


def _on_cpu(model: nn.Module) -> bool:
    first = next(model.parameters(), None)
    return first is not None and first.device.type == "cpu"


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
    """What the result records about where it ran: the device, and the
    ``CUDA_VISIBLE_DEVICES`` the process was given (which GPU of a shared machine)."""
    dev = accelerator.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "type": dev.type,
        "name": name,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
