"""NMI-HAD distillation: a student's last-block attention learns a teacher layer's.

Loss: KL(teacher || student) of the row-wise softmax of the pre-softmax attention logits
(CLS included, temperature 1), summed over keys, averaged over batch, heads and queries.
The training loop is the protocols' engine (:mod:`bench.protocols.engine`): accumulation,
the precision policy, GradScaler, optional ``torch.compile``, the finite-loss check,
logging, and atomic checkpoints with everything a bit-identical resume needs (model,
optimiser, scheduler, scaler, RNG, step; the data position follows from the step). The
checkpoint and loss-log files are distillation's own (:mod:`unip.distill_files`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones.adapter import get_adapter, load_backbone
from bench.backbones.backbone import INFRARED_MEAN, INFRARED_STD, Backbone
from bench.protocols.engine import LoopSettings, StepEnd, TrainingEngine
from bench.protocols.optim import build_adamw
from bench.protocols.runtime import make_accelerator, resolve_compile
from bench.protocols.schedules import warmup_cosine
from bench.protocols.state import atomic_save
from bench.trackers import finish_trackers, start_trackers
from unip.analysis import analyse_attention, image_loader
from unip.distill_config import DistillConfig, recipe_differences
from unip.distill_data import (
    EpochSampler,
    SeededSamples,
    epoch_loader,
    fingerprint,
    pretrain_dataset,
    training_images,
)
from unip.distill_files import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    LOG_NAME,
    DistillCheckpoint,
    LossLogFile,
    read_checkpoint,
)
from unip.images import spread_sample
from unip.student import LastBlockLogits, build_student
from unip.teacher import AttentionTeacher

if TYPE_CHECKING:
    from accelerate import Accelerator

STUDENT_NAME = "student.pth"
__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "LOG_NAME", "STUDENT_NAME", "DistillResult",
    "StepInfo", "attention_kl", "distill", "distill_param_groups",
]  # fmt: skip


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


def _batch_stream(
    dataset: SeededSamples,
    num_images: int,
    micro: int,
    cfg: DistillConfig,
    accelerator: Accelerator,
) -> Callable[[int], Iterator[torch.Tensor]]:
    """Micro-batch stream factory from a micro-batch index on: epoch by epoch, each
    epoch's order and augmentation seeds from (seed, epoch) alone, so a resumed run reads
    exactly the batches the uninterrupted run would have."""
    accum = cfg.optim.accum_steps
    steps_per_epoch = num_images // cfg.optim.batch_size

    def stream(start_micro: int) -> Iterator[torch.Tensor]:
        step = start_micro // accum
        while True:
            epoch, position = divmod(step, steps_per_epoch)
            sampler = EpochSampler(num_images, micro, accum, cfg.seed, epoch, position,
                                   accelerator.process_index, accelerator.num_processes)
            pin = accelerator.device.type == "cuda"
            batches = iter(epoch_loader(dataset, sampler, cfg.data.num_workers, cfg.seed, pin))
            for _ in range((steps_per_epoch - position) * accum):
                yield next(batches)
            step = (epoch + 1) * steps_per_epoch

    return stream


def _runtime(cfg: DistillConfig, out: Path) -> tuple[Accelerator, bool]:
    """The accelerator (the one precision policy of :mod:`bench.protocols.runtime`) and
    whether to compile; a choice this machine cannot honour names its key."""
    try:
        acc = make_accelerator(cfg.mixed_precision, out / "logs")
    except ValueError as exc:
        raise ValueError(f"{cfg.where('mixed_precision')}: mixed_precision: {exc}") from None
    try:
        use_compile = resolve_compile(cfg.compile, acc.device.type == "cuda")
    except ValueError as exc:
        raise ValueError(f"{cfg.where('compile')}: compile: {exc}") from None
    return acc, use_compile


def distill(
    cfg: DistillConfig, callbacks: Sequence[Callable[[StepInfo], None]] = ()
) -> DistillResult:
    """Run (or resume) NMI-HAD distillation as configured; returns where the student is.

    ``callbacks`` are called after every optimiser step with a :class:`StepInfo`.
    """
    from accelerate.utils import broadcast_object_list, set_seed

    out = Path(cfg.output_dir)
    acc, use_compile = _runtime(cfg, out)
    ckpt_path = out / CHECKPOINT_NAME
    o = cfg.optim
    if o.batch_size % (acc.num_processes * o.accum_steps):
        raise ValueError(
            f"{cfg.where('optim.batch_size')}: optim.batch_size {o.batch_size} is not divisible "
            f"by {acc.num_processes} process(es) x optim.accum_steps {o.accum_steps}"
        )
    micro = o.batch_size // (acc.num_processes * o.accum_steps)

    state = read_checkpoint(ckpt_path) if cfg.resume and ckpt_path.exists() else None
    if state is not None:
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

    meta = {"config": cfg.model_dump(mode="json"), "teacher_layer": layer,
            "last_heads": heads, "data_fingerprint": data_id}  # fmt: skip
    store = DistillCheckpoint(ckpt_path, acc, state, meta, steps_per_epoch)
    log = LossLogFile(out / LOG_NAME, steps_per_epoch, write=acc.is_main_process)
    if state is not None:
        log.trim(int(state["step"]))
    # The teacher stays eager: its attention is read by hooks on the attention modules,
    # which torch.compile does not trace; it runs forward only, the student is compiled.
    target_fn = teacher

    def step(student_model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.to(acc.device, non_blocking=True)
        target = target_fn(x)
        return attention_kl(student_model(x), target)

    def report(end: StepEnd) -> None:
        loss = end.loss
        if acc.num_processes > 1:
            loss = float(acc.reduce(torch.tensor(loss, device=acc.device), "mean"))
        info = StepInfo(end.iteration, (end.iteration - 1) // steps_per_epoch, loss, end.lr)
        for cb in callbacks:
            cb(info)

    dataset = pretrain_dataset(images, cfg.data.img_size, cfg.data.scale, cfg.data.hflip)
    loop = LoopSettings(
        iters=total_steps,
        accum_steps=o.accum_steps,
        log_interval=cfg.log_every,
        checkpoint_interval=cfg.save_every,
        checkpoint_at_end=True,
        compile=use_compile,
        divergence_hint="Lower the lr (optim.lr or optim.base_lr) or use mixed_precision: no.",
    )
    engine = TrainingEngine(
        acc, model, optimizer, scheduler, student.vit,
        _batch_stream(dataset, len(images), micro, cfg, acc), step, loop, store,
        progress=cfg.progress, description="distill",
        on_step=[report] if callbacks else [], on_log=[log],
    )  # fmt: skip
    outcome = engine.run()
    finish_trackers(acc)

    student_path = out / STUDENT_NAME
    acc.wait_for_everyone()
    if acc.is_main_process:
        saved = _student_file(cfg, student, teacher_bb, teacher_depth, layer, heads,
                              outcome.iterations)  # fmt: skip
        atomic_save(saved, student_path)
    acc.wait_for_everyone()
    return DistillResult(student_path, outcome.iterations, layer, heads, outcome.last_loss)
