"""NMI-HAD distillation: a student's last-block attention learns a teacher layer's.

Loss: KL(teacher || student) of the row-wise softmax of the pre-softmax attention logits
(CLS included, temperature 1), summed over keys, averaged over batch, heads and queries.
accelerate handles devices, DDP and mixed precision. Checkpoints are atomic and hold
everything a bit-identical resume needs (model, optimiser, scheduler, scaler, RNG, step;
the data position follows from the step).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from bench.adapter import get_adapter, load_backbone
from bench.backbone import INFRARED_MEAN, INFRARED_STD, Backbone
from bench.progress import Progress
from bench.protocols.optim import build_adamw
from bench.protocols.schedules import warmup_cosine
from bench.protocols.state import (
    atomic_save,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
)
from bench.trackers import finish_trackers, start_trackers, tracker_names
from unip.analysis import analyse_attention, image_loader
from unip.distill_config import DistillConfig, recipe_differences
from unip.distill_data import (
    EpochSampler,
    epoch_loader,
    fingerprint,
    pretrain_dataset,
    training_images,
)
from unip.images import spread_sample
from unip.student import LastBlockLogits, build_student
from unip.teacher import AttentionTeacher

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINT_NAME = "checkpoint.pth"
STUDENT_NAME = "student.pth"
LOG_NAME = "log.jsonl"
CHECKPOINT_FORMAT = "unip-distill/1"


def attention_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of row-wise softmax, summed over keys, mean over the rest."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student attention {tuple(student_logits.shape)} and teacher attention "
            f"{tuple(teacher_logits.shape)} differ: heads and tokens must match"
        )
    s = F.log_softmax(student_logits.float(), dim=-1)
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    return F.kl_div(s, t, reduction="none", log_target=True).sum(-1).mean()


@dataclass(frozen=True)
class StepInfo:
    step: int  # optimiser steps done
    epoch: int
    loss: float
    lr: float


@dataclass
class DistillResult:
    student_path: Path
    steps: int
    teacher_layer: int
    last_heads: int
    final_loss: float | None


class Distiller:
    """One optimiser step of NMI-HAD over a list of micro-batches (gradient accumulation)."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        accelerator: Accelerator,
    ) -> None:
        self.teacher = teacher
        self.student = student
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.accelerator = accelerator

    def step(self, micro_batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """Returns the step's mean loss as a 0-d tensor (no device sync)."""
        acc = self.accelerator
        n = len(micro_batches)
        total = torch.zeros((), device=acc.device)
        for i, x in enumerate(micro_batches):
            x = x.to(acc.device, non_blocking=True)
            # Gradients are all-reduced once, on the last micro-batch.
            sync = nullcontext() if i == n - 1 else acc.no_sync(self.student)
            with sync:
                with acc.autocast():
                    target = self.teacher(x)
                    pred = self.student(x)
                loss = attention_kl(pred, target)
                acc.backward(loss / n)
            total += loss.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total / n


def distill_param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float
) -> list[dict]:
    """AdamW groups as in the UNIP release (timm's ``param_groups_weight_decay``): biases
    and 1-D tensors (norms) without weight decay; every other trained tensor, the CLS token
    included, with it. Frozen parameters (position table, unreached last-block parts) are
    left out. ``names`` lists each group's parameter names (``build_adamw`` drops it)."""
    groups = [
        {"params": [], "names": [], "lr": lr, "weight_decay": 0.0},
        {"params": [], "names": [], "lr": lr, "weight_decay": weight_decay},
    ]
    for name, p in named_params:
        if p.requires_grad:
            g = groups[0] if p.ndim <= 1 or name.endswith(".bias") else groups[1]
            g["params"].append(p)
            g["names"].append(name)
    return groups


def resolve_mixed_precision(choice: str) -> str:
    """``auto``: bf16 where the GPU has it, fp16 on other GPUs, full precision on CPU."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def load_teacher_backbone(cfg: DistillConfig) -> Backbone:
    t = cfg.teacher
    options = dict(t.options)
    if t.depth is not None:
        options["depth"] = t.depth
    return load_backbone(
        t.adapter, t.size, checkpoint=t.checkpoint, img_size=cfg.data.img_size, **options
    )


def choose_teacher_layer(
    cfg: DistillConfig, teacher: Backbone, images: Sequence[Path], out: Path | None
) -> int:
    """The configured layer, or the one whose NMI on a sample of ``images`` is closest to
    the target (infrared normalisation, as in training); the analysis is saved in ``out``."""
    if cfg.teacher.layer is not None:
        if cfg.teacher.layer > teacher.depth:
            raise ValueError(
                f"{cfg.where('teacher.layer')}: teacher.layer {cfg.teacher.layer} is beyond "
                f"the teacher's {teacher.depth} blocks"
            )
        return cfg.teacher.layer
    sample = spread_sample(images, cfg.teacher.nmi_images)
    loader = image_loader(sample, cfg.data.img_size, INFRARED_MEAN, INFRARED_STD)
    analysis = analyse_attention(
        teacher, loader, cfg.data.img_size, "infrared", target=cfg.teacher.nmi_target
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "teacher_nmi.json").write_text(json.dumps(analysis.to_dict(), indent=2) + "\n")
    return analysis.teacher_layer


def _student_file(
    cfg: DistillConfig,
    student: Backbone,
    teacher: Backbone,
    teacher_depth: int,
    layer: int,
    heads: int,
    steps: int,
) -> dict:
    """What ``load_backbone("unip", size, checkpoint=...)`` reads: plain types only."""
    return {
        "model": {k: v.detach().cpu() for k, v in student.vit.state_dict().items()},
        "unip": {
            "last_heads": heads,
            "teacher_layer": layer,
            "teacher": {
                "adapter": cfg.teacher.adapter,
                "size": get_adapter(cfg.teacher.adapter).canonical_size(cfg.teacher.size),
                "checkpoint": cfg.teacher.checkpoint,
                "checkpoint_sha256": teacher.meta.checkpoint_sha256,
                "depth": teacher_depth,
                "heads": heads,
            },
            "size": get_adapter("unip").canonical_size(cfg.student.size),
            "depth": student.depth,
            "img_size": cfg.data.img_size,
            "steps": steps,
            "mean": list(INFRARED_MEAN),
            "std": list(INFRARED_STD),
        },
    }


class LossLog:
    """Mean loss over each ``log_every`` window, appended to a JSONL file (main process).

    The window's running sum is part of the checkpoint, so a resumed run logs exactly the
    values the uninterrupted run would have (timings aside).
    """

    def __init__(self, path: Path, every: int, accelerator: Accelerator, write: bool) -> None:
        self.path = path
        self.every = every
        self.acc = accelerator
        self.write = write
        self.total = torch.zeros((), device=accelerator.device)
        self.count = 0
        self.last: float | None = None
        self.tick = time.perf_counter()

    def state_dict(self) -> dict:
        # Collective: every process calls it; the reduced sum is what all of them restore.
        return {"total": float(self.acc.reduce(self.total, "mean")), "count": self.count}

    def load_state_dict(self, state: dict, step: int) -> None:
        self.total.fill_(state["total"])
        self.count = int(state["count"])
        if self.write and self.path.exists():
            # Keep the records up to the checkpoint: later ones (and a line torn by the
            # kill) belong to steps that will be redone.
            keep = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= step:
                        keep.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
            self.path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")

    def add(self, loss: torch.Tensor, step: int, epoch: int, lr: float, final: bool) -> bool:
        """Accumulate one step; at a window's end write a record. True when written."""
        self.total += loss
        self.count += 1
        if step % self.every and not final:
            return False
        self.last = float(self.acc.reduce(self.total, "mean")) / self.count
        now = time.perf_counter()
        record = {
            "step": step,
            "epoch": epoch,
            "loss": self.last,
            "lr": lr,
            "sec_per_step": (now - self.tick) / self.count,
        }
        if self.write:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        self.total.zero_()
        self.count, self.tick = 0, now
        return True


def distill(
    cfg: DistillConfig, callbacks: Sequence[Callable[[StepInfo], None]] = ()
) -> DistillResult:
    """Run (or resume) NMI-HAD distillation as configured; returns where the student is.

    ``callbacks`` are called after every optimiser step with a :class:`StepInfo`.
    """
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed

    out = Path(cfg.output_dir)
    trackers = tracker_names()
    acc = Accelerator(
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
        log_with=trackers or None,
        project_dir=str(out / "logs") if trackers else None,
    )
    ckpt_path = out / CHECKPOINT_NAME
    o = cfg.optim
    if o.batch_size % (acc.num_processes * o.accum_steps):
        raise ValueError(
            f"{cfg.where('optim.batch_size')}: optim.batch_size {o.batch_size} is not divisible "
            f"by {acc.num_processes} process(es) x optim.accum_steps {o.accum_steps}"
        )
    micro = o.batch_size // (acc.num_processes * o.accum_steps)

    state = load_training_state(ckpt_path) if cfg.resume and ckpt_path.exists() else None
    if state is not None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path} is not a UNIP distillation checkpoint")
        diffs = recipe_differences(state["config"], cfg.model_dump(mode="json"))
        if diffs:
            raise ValueError(
                f"{ckpt_path} was written with another recipe ({'; '.join(diffs)}); use a new "
                "output_dir, or resume: false to start over"
            )

    set_seed(cfg.seed)
    try:
        images = training_images(cfg.data.path)
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"{cfg.where('data.path')}: data.path: {exc}") from None
    if len(images) < o.batch_size:
        raise ValueError(
            f"{cfg.where('optim.batch_size')}: optim.batch_size {o.batch_size} is more than the "
            f"{len(images)} images under data.path {cfg.data.path}"
        )
    data_id = fingerprint(images)
    if state is not None and state["data_fingerprint"] != data_id:
        raise ValueError(f"the images under {cfg.data.path} changed since {ckpt_path} was written")
    teacher_bb = load_teacher_backbone(cfg)
    teacher_depth = teacher_bb.depth
    if state is not None:
        layer = int(state["teacher_layer"])
    else:
        layer = choose_teacher_layer(cfg, teacher_bb, images, out if acc.is_main_process else None)
        if acc.num_processes > 1:
            layer = broadcast_object_list([layer])[0]
    heads = teacher_bb.num_heads[layer - 1]
    if acc.is_main_process:  # only now: a refused config leaves no empty output folder
        out.mkdir(parents=True, exist_ok=True)
    start_trackers(acc, f"distill-{out.name}", cfg.model_dump(mode="json"))
    teacher = AttentionTeacher(teacher_bb, layer).to(acc.device)
    student = build_student(
        cfg.student.size, heads, cfg.data.img_size, cfg.student.depth, cfg.student.drop_path
    )

    lr = o.effective_lr
    groups = distill_param_groups(student.named_parameters(), lr, o.weight_decay)
    optimizer = build_adamw(groups, lr, betas=o.betas)
    steps_per_epoch = len(images) // o.batch_size
    total_steps = o.epochs * steps_per_epoch
    warmup = round(o.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup))
    model, optimizer = acc.prepare(LastBlockLogits(student), optimizer)
    losses = LossLog(out / LOG_NAME, cfg.log_every, acc, write=acc.is_main_process)

    step = 0
    if state is not None:
        acc.unwrap_model(model).backbone.vit.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if acc.scaler is not None and state.get("scaler") is not None:
            acc.scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        losses.load_state_dict(state["loss_log"], step)
        restore_rng_state(state["rng"])

    def save_checkpoint() -> None:
        loss_state = losses.state_dict()
        acc.wait_for_everyone()
        if acc.is_main_process:
            atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "step": step,
                    "epoch": step // steps_per_epoch,
                    "position": step % steps_per_epoch,  # steps into the epoch
                    "student": acc.unwrap_model(model).backbone.vit.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                    "rng": capture_rng_state(),
                    "loss_log": loss_state,
                    "config": cfg.model_dump(mode="json"),
                    "teacher_layer": layer,
                    "last_heads": heads,
                    "data_fingerprint": data_id,
                },
                ckpt_path,
            )

    distiller = Distiller(teacher, model, optimizer, scheduler, acc)
    dataset = pretrain_dataset(images, cfg.data.img_size, cfg.data.scale, cfg.data.hflip)
    bar = Progress(total_steps, step, "distill", enabled=cfg.progress and acc.is_main_process)
    if state is not None:
        bar.resumed(f"checkpoint {ckpt_path}")
    model.train()
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        sampler = EpochSampler(len(images), micro, o.accum_steps, cfg.seed, epoch, position,
                               acc.process_index, acc.num_processes)  # fmt: skip
        batches = iter(epoch_loader(dataset, sampler, cfg.data.num_workers, cfg.seed,
                                    pin=acc.device.type == "cuda"))  # fmt: skip
        for _ in range(position, steps_per_epoch):
            lr_now = optimizer.param_groups[0]["lr"]  # the lr this step uses
            loss = distiller.step([next(batches) for _ in range(o.accum_steps)])
            step += 1
            if callbacks:
                info = StepInfo(step, epoch, float(acc.reduce(loss, "mean")), lr_now)
                for cb in callbacks:
                    cb(info)
            if losses.add(loss, step, epoch, lr_now, final=step == total_steps):
                bar.set(loss=losses.last, lr=lr_now)
                acc.log({"train/loss": losses.last, "train/lr": lr_now}, step=step)
            bar.update(1)
            if step % cfg.save_every == 0 or step == total_steps:
                save_checkpoint()
    bar.close()
    finish_trackers(acc)

    student_path = out / STUDENT_NAME
    acc.wait_for_everyone()
    if acc.is_main_process:
        final = acc.unwrap_model(model).backbone
        saved = _student_file(cfg, final, teacher_bb, teacher_depth, layer, heads, step)
        atomic_save(saved, student_path)
    acc.wait_for_everyone()
    return DistillResult(student_path, step, layer, heads, losses.last)
