"""Training linear heads on a frozen backbone: shared by linear and layer-wise probing."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from bench.models.probe import Probe, ProbeHeads
from bench.protocols.context import RunContext
from bench.protocols.engine import Trainer, TrainOutcome, build_scheduler
from bench.protocols.head_scaler import HeadwiseGradScaler
from bench.protocols.optim import build_adamw, param_groups


def head_optimizer(
    heads: ProbeHeads, lrs: Sequence[float], ctx: RunContext
) -> torch.optim.Optimizer:
    """AdamW with head k at ``lrs[k]``; no layer decay (there are no layers to decay).

    Each head has its own parameter groups, so its lr, weight decay, schedule (every
    group is scaled by the same factor) and moments are those of a run of that head alone.
    Weight decay follows ``weight_decay_rule``; the released probing configs decay every
    parameter, the head's bias included (mmcv's default constructor)."""
    s = ctx.settings
    groups: list[dict] = []
    for head, lr in zip(heads.heads, lrs, strict=True):
        groups += param_groups(
            head.named_parameters(), lr=lr, weight_decay=s.weight_decay,
            decay_rule=s.weight_decay_rule,
        )
    return build_adamw(groups, lr=lrs[0], betas=s.betas)


class HeadwiseScaledProbe(nn.Module):
    """The probe's training view under fp16 with one loss scale per head."""

    def __init__(self, probe: Probe, scaler: HeadwiseGradScaler) -> None:
        super().__init__()
        self.probe = probe
        self.scaler = scaler

    def forward(self, img: torch.Tensor, label: torch.Tensor) -> dict[str, Any]:
        return self.probe(img, label, grad_scales=self.scaler.scales)


def train_heads(
    ctx: RunContext,
    probe: Probe,
    lrs: Sequence[float],
    train_model: nn.Module,
    stream: Callable[[int], Iterator[dict]],
    description: str,
    headwise_scaling: bool = False,
) -> TrainOutcome:
    """Train ``probe.heads`` through ``train_model`` (the probe itself, or a wrapper fed
    cached features); evaluate the full probe on the evaluation split.

    ``headwise_scaling`` (``train_model`` must be ``probe``): with fp16 loss scaling, each
    head gets its own scale, so one head's overflow neither skips another head's step nor
    changes its scale (:mod:`bench.protocols.head_scaler`), as in a run of each head alone.
    """
    acc = ctx.accelerator
    optimizer = head_optimizer(probe.heads, lrs, ctx)
    scheduler = build_scheduler(optimizer, ctx.settings)
    probe.to(acc.device)
    train_model.to(acc.device)
    if headwise_scaling and acc.scaler is not None and probe.num_heads > 1:
        if train_model is not probe:
            raise ValueError("headwise loss scaling trains the probe itself")
        # The accelerator's backward and its prepared optimiser use acc.scaler: replace it
        # before prepare() so both see the per-head one (and the checkpoint saves it).
        acc.scaler = HeadwiseGradScaler.like(acc.scaler, probe.heads.heads, acc.device)
        train_model = HeadwiseScaledProbe(probe, acc.scaler)
    prepared, optimizer = acc.prepare(train_model, optimizer)
    eval_set = ctx.eval_set()

    def evaluate() -> list[dict]:
        probe.eval()
        return ctx.evaluate(probe, eval_set, num_heads=probe.num_heads)

    trainer = Trainer(
        acc, prepared, optimizer, scheduler, probe.heads, stream, evaluate, ctx.settings,
        ctx.checkpointer(), num_heads=probe.num_heads, progress=ctx.progress,
        description=description, primary=ctx.primary,
    )
    return trainer.run()
