"""A few minutes on one GPU: how fast our training steps run, and how close to the peak.

Each check builds its model with the project's own builders (the fine-tuning segmentor of
``bench.protocols.finetune``, its AdamW groups and schedule; the NMI-HAD teacher, student
and distillation step of ``unip``), runs warm-up steps, times the rest and reports step
time, achieved TFLOP/s, model FLOPs utilisation (MFU) and peak memory. Model FLOPs come
from our counter (:func:`bench.backbones.flops.count_macs`, multiply-adds x 2); a training step is
counted as 3 forward passes (forward + backward, the usual convention), a frozen teacher
as one. A check that fails reports its error in its row; the others still run.
:mod:`bench.gpu.report` runs them, prints the table and judges the MFU goal.
"""

from __future__ import annotations

import gc
import os
import platform
import socket
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.gpu.peaks import match_peak, mfu

# The harness's own checks; methods add theirs (UNIP: the distillation step) through the
# entry-point group ``unipbench.gpu_checks``: ``check(runner, row) -> row``.
CHECKS = ("finetune_bf16", "finetune_fp16_scaler", "ddp_syncbn_bf16", "finetune_bf16_compile")


def all_checks() -> tuple[str, ...]:
    """The built-in checks, then every registered plug-in check."""
    from bench.registry import GPU_CHECKS

    return (*CHECKS, *(n for n in GPU_CHECKS.names() if n not in CHECKS))
NO_CUDA = "skipped: no CUDA"


@dataclass
class CheckSettings:
    """What is measured; the defaults are the paper's fine-tuning step (ViT-B, 512, batch 8)."""

    adapter: str = "mae"
    size: str = "B"
    dataset: str = "soda"  # sets the number of classes of the decode heads
    crop: int = 512
    batch: int = 8  # per GPU
    warmup: int = 5
    steps: int = 20
    teacher_adapter: str = "dino"  # the released UNIP-S recipe from DINO-B's layer 9
    teacher_size: str = "B"
    teacher_layer: int = 9
    student_size: str = "S"
    distill_img: int = 224
    distill_batch: int = 128  # per GPU: 4096 / (8 GPUs x 4 accumulation steps)
    compile_backend: str = "inductor"
    # Quick runs only: fewer blocks (the neck then reads the last four) and a narrower
    # UPerNet; None keeps the protocol's model.
    depth: int | None = None
    head_channels: int | None = None
    checks: tuple[str, ...] = field(default_factory=all_checks)
    device: str = "cuda"
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        known = all_checks()
        unknown = [c for c in self.checks if c not in known]
        if unknown:
            raise ValueError(f"unknown check(s) {', '.join(unknown)}; use {', '.join(known)}")
        for name in ("crop", "batch", "steps", "distill_img", "distill_batch", "teacher_layer",
                     "depth", "head_channels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 1:
            # The first step allocates, tunes kernels and (compiled) compiles: never timed.
            raise ValueError(f"warmup must be at least 1, got {self.warmup}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops must be positive, got {self.peak_tflops}")


def quick_settings(**overrides: Any) -> CheckSettings:
    """Tiny models for a CPU run of every code path (seconds): ViT-T, 64 px, 2 timed steps."""
    base: dict[str, Any] = dict(
        adapter="mae", size="T", crop=64, batch=2, warmup=1, steps=2,
        teacher_adapter="mae", teacher_size="T", teacher_layer=2, student_size="T",
        distill_img=64, distill_batch=2, device="cpu",
        # Inductor's C++ code generation takes minutes on a small CPU; aot_eager still
        # captures the forward and backward graphs, which is the path under test.
        compile_backend="aot_eager", depth=4, head_channels=32,
    )
    return CheckSettings(**{**base, **overrides})


@dataclass
class Row:
    check: str
    status: str = "ok"
    step_ms: float | None = None
    tflops: float | None = None  # achieved model TFLOP/s
    mfu: float | None = None
    mem_gib: float | None = None
    flops_per_step: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ building blocks
def _device(cfg: CheckSettings) -> torch.device:
    if cfg.device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(cfg.device)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_steps(step: Callable[[], Any], warmup: int, steps: int, dev: torch.device) -> dict:
    """Run ``warmup`` untimed then ``steps`` timed steps; per-step times in ms.

    On CUDA each step is bracketed by events (no host sync inside the loop, as in
    training); elsewhere by perf_counter. ``first_s`` is the first step's wall time, which
    holds allocation, kernel selection and, for a compiled model, compilation.
    """
    _sync(dev)
    t0 = time.perf_counter()
    step()
    _sync(dev)
    first_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    _sync(dev)
    times: list[float] = []
    if dev.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(steps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        _sync(dev)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(steps):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
    return {"first_s": first_s, "times_ms": times, "median_ms": statistics.median(times),
            "mean_ms": statistics.fmean(times)}


class TrainForward(nn.Module):
    """What a fine-tuning step runs forward, for counting: backbone, neck, decode head and
    auxiliary head (the loss's upsampling and cross-entropy are elementwise and left out)."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seg = self.segmentor
        pyramid = seg.neck(seg.backbone.features(img, seg.neck.layers))
        out = [seg.head(pyramid)]
        if seg.aux_head is not None:
            out.append(seg.aux_head(pyramid))
        return tuple(out)


def forward_macs(model: nn.Module, shape: tuple[int, ...], dev: torch.device) -> int:
    """Multiply-adds of one forward pass of one input of ``shape`` (our fvcore counter)."""
    from bench.backbones.flops import count_macs

    return count_macs(model, (torch.zeros(1, *shape, device=dev),)).total


def build_finetune(cfg: CheckSettings, dev: torch.device) -> tuple[nn.Module, Any, Any]:
    """Segmentor (random backbone) on ``dev``, the resolved settings and the dataset info,
    as the fine-tuning protocol builds them."""
    from bench.backbones.adapter import downstream_options, load_backbone
    from bench.data import get_dataset_info
    from bench.protocols.config import resolve_settings
    from bench.protocols.finetune import build_model

    overrides: dict[str, Any] = {"crop_size": cfg.crop, "batch_size": cfg.batch}
    options = downstream_options(cfg.adapter)
    if cfg.depth is not None:
        options["depth"] = cfg.depth
        overrides["layers"] = list(range(cfg.depth))[-4:]
    if cfg.head_channels is not None:
        overrides["head_channels"] = cfg.head_channels
    s = resolve_settings("fine_tune", cfg.dataset, cfg.adapter, cfg.size, overrides)
    info = get_dataset_info(cfg.dataset)
    backbone = load_backbone(cfg.adapter, cfg.size, None, img_size=cfg.crop,
                             drop_path_rate=s.drop_path, **options)
    model = build_model(backbone, info.num_classes, s, info.ignore_index).to(dev)
    return model, s, info


def finetune_optimizer(model: nn.Module, s: Any) -> tuple[Any, Any]:
    """The protocol's AdamW (layer-wise lr decay groups) and warm-up + poly schedule."""
    from bench.protocols.engine import build_scheduler
    from bench.protocols.finetune import optimizer_groups
    from bench.protocols.optim import build_adamw

    optimizer = build_adamw(optimizer_groups(model, s), lr=s.lr, betas=s.betas)
    return optimizer, build_scheduler(optimizer, s)


def _batch(cfg: CheckSettings, num_classes: int, ignore: int, dev: torch.device):
    g = torch.Generator().manual_seed(0)
    img = torch.randn(cfg.batch, 3, cfg.crop, cfg.crop, generator=g)
    label = torch.randint(0, num_classes, (cfg.batch, cfg.crop, cfg.crop), generator=g)
    label[torch.rand(label.shape, generator=g) < 0.05] = ignore  # some unlabelled pixels
    return img.to(dev), label.to(dev)


def _train_step(model: nn.Module, optimizer: Any, scheduler: Any, img: torch.Tensor,
                label: torch.Tensor, dtype: torch.dtype, scaler: Any = None) -> Callable:
    """The engine's step: autocast forward (loss inside), backward, AdamW, schedule."""
    device_type = img.device.type

    def step() -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            loss = model(img, label)["loss"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def finish(row: Row, timing: dict, flops: float, peak: float | None) -> Row:
    row.step_ms = timing["median_ms"]
    row.flops_per_step = flops
    row.tflops = flops / (timing["median_ms"] / 1e3) / 1e12
    if peak is not None:
        row.mfu = mfu(flops, timing["median_ms"] / 1e3, peak)
    row.notes["mean_ms"] = round(timing["mean_ms"], 3)
    row.notes["first_step_s"] = round(timing["first_s"], 3)
    return row


# ------------------------------------------------------------------ checks
class Runner:
    """Runs the checks of ``cfg`` on one device and collects their rows."""

    def __init__(self, cfg: CheckSettings) -> None:
        self.cfg = cfg
        self.dev = _device(cfg)
        self.cuda = self.dev.type == "cuda"
        self.peak = cfg.peak_tflops
        self.peak_source = "--peak-tflops" if cfg.peak_tflops is not None else None
        self.device_name = torch.cuda.get_device_name(self.dev) if self.cuda else (
            platform.processor() or platform.machine() or "cpu")
        if self.peak is None and self.cuda:
            found = match_peak(self.device_name)
            if found is not None and found.tflops is not None:
                self.peak, self.peak_source = found.tflops, f"table: {found.label}"
        self._ft_macs: int | None = None

    def finetune_macs(self, model: nn.Module) -> int:
        if self._ft_macs is None:  # one count serves every fine-tuning row
            self._ft_macs = forward_macs(TrainForward(model), (3, self.cfg.crop, self.cfg.crop),
                                         self.dev)
        return self._ft_macs

    def finetune_flops(self, model: nn.Module) -> float:
        return 3 * 2 * self.finetune_macs(model) * self.cfg.batch

    def _finetune(self, row: Row, dtype: torch.dtype, *, scaler: bool = False,
                  compiled: bool = False) -> Row:
        cfg = self.cfg
        model, s, info = build_finetune(cfg, self.dev)
        flops = self.finetune_flops(model)
        model.train()
        run_model: nn.Module = model
        if compiled:
            run_model = torch.compile(model, backend=cfg.compile_backend)
        optimizer, scheduler = finetune_optimizer(model, s)
        img, label = _batch(cfg, info.num_classes, info.ignore_index, self.dev)
        amp_scaler = torch.amp.GradScaler("cuda") if scaler else None
        step = _train_step(run_model, optimizer, scheduler, img, label, dtype, amp_scaler)
        if amp_scaler is None:
            timing = time_steps(step, cfg.warmup, cfg.steps, self.dev)
        else:
            timing = self._time_scaled(step, amp_scaler, row)
        if compiled:
            row.notes["compile_s"] = round(timing["first_s"] - timing["median_ms"] / 1e3, 3)
            row.notes["backend"] = cfg.compile_backend
        return finish(row, timing, flops, self.peak)

    def _time_scaled(self, step: Callable, scaler: Any, row: Row) -> dict:
        """Time the GradScaler step and count skipped optimiser steps after warm-up: a
        step is skipped (inf/nan gradients) exactly when the scale shrinks at update."""
        cfg = self.cfg
        with warnings.catch_warnings():
            # A skipped step makes the scheduler step "before" the optimiser: expected.
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            for _ in range(cfg.warmup):
                step()
            scales = [scaler.get_scale()]

            def recorded() -> None:
                step()
                # A copy of the scale tensor (updated in place): no host sync in the loop.
                scales.append(scaler._scale.clone())

            timing = time_steps(recorded, 1, cfg.steps, self.dev)
        after = [float(s) for s in scales[2:]]  # the timed steps (1 extra warm-up first)
        before = [float(scales[1])] + after[:-1]
        skipped = sum(1 for b, a in zip(before, after, strict=True) if a < b)
        row.notes["skipped_steps"] = skipped
        row.notes["final_scale"] = after[-1] if after else None
        if skipped:
            row.status = f"FAIL: {skipped} of {cfg.steps} steps skipped (inf/nan) after warm-up"
        return timing

    def finetune_bf16(self, row: Row) -> Row:
        return self._finetune(row, torch.bfloat16)

    def finetune_fp16_scaler(self, row: Row) -> Row:
        if not self.cuda:
            row.status = NO_CUDA
            return row
        return self._finetune(row, torch.float16, scaler=True)

    def finetune_bf16_compile(self, row: Row) -> Row:
        try:
            return self._finetune(row, torch.bfloat16, compiled=True)
        finally:
            torch._dynamo.reset()  # compiled graphs hold memory and guards

    def ddp_syncbn_bf16(self, row: Row) -> Row:
        if not self.cuda:
            row.status = NO_CUDA
            return row
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        cfg = self.cfg
        if dist.is_initialized():
            raise RuntimeError("a torch.distributed process group is already running")
        with _rendezvous_env():
            dist.init_process_group("nccl", init_method="env://", rank=0, world_size=1,
                                    device_id=self.dev)
            try:
                model, s, info = build_finetune(cfg, self.dev)
                flops = self.finetune_flops(model)
                # The protocol converts only when world size > 1; at 1 we convert ourselves
                # so the SyncBatchNorm modules are the ones measured.
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model).train()
                row.notes["sync_bn_layers"] = sum(
                    isinstance(m, nn.SyncBatchNorm) for m in model.modules())
                ddp = DistributedDataParallel(model, device_ids=[self.dev.index])
                optimizer, scheduler = finetune_optimizer(model, s)
                img, label = _batch(cfg, info.num_classes, info.ignore_index, self.dev)
                step = _train_step(ddp, optimizer, scheduler, img, label, torch.bfloat16)
                timing = time_steps(step, cfg.warmup, cfg.steps, self.dev)
                row.notes["backend"] = dist.get_backend()
                return finish(row, timing, flops, self.peak)
            finally:
                dist.destroy_process_group()

    # -------------------------------------------------------------- driver
    def run_one(self, name: str) -> Row:
        row = Row(check=name)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.dev)
        try:
            if name in CHECKS:
                getattr(self, name)(row)
            else:
                from bench.registry import GPU_CHECKS

                GPU_CHECKS.get(name)(self, row)
        except Exception as exc:  # one broken check must not hide the others
            first = (str(exc).strip().splitlines() or [""])[0]
            row.status = f"error: {type(exc).__name__}: {first}"[:300]
        finally:
            gc.collect()
            if self.cuda:
                if row.status == "ok" or row.step_ms is not None:
                    row.mem_gib = torch.cuda.max_memory_allocated(self.dev) / 2**30
                torch.cuda.empty_cache()
        return row

    def run(self, progress: Callable[[str], None] | None = None) -> list[Row]:
        rows = []
        for name in self.cfg.checks:
            if progress is not None:
                progress(name)
            rows.append(self.run_one(name))
        return rows


@contextmanager
def _rendezvous_env():
    """MASTER_ADDR/MASTER_PORT for an in-process env:// rendezvous on a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
