"""Training linear heads on a frozen backbone: shared by linear and layer-wise probing."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from bench.models.probe import Probe, ProbeHeads
from bench.protocols.context import RunContext
from bench.protocols.engine import Trainer, TrainOutcome, build_scheduler
from bench.protocols.optim import build_adamw, param_groups


def head_optimizer(
    heads: ProbeHeads, lrs: Sequence[float], ctx: RunContext
) -> torch.optim.Optimizer:
    """AdamW with head k at ``lrs[k]``; no layer decay (there are no layers to decay).

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


def train_heads(
    ctx: RunContext,
    probe: Probe,
    lrs: Sequence[float],
    train_model: nn.Module,
    stream: Callable[[int], Iterator[dict]],
    description: str,
) -> TrainOutcome:
    """Train ``probe.heads`` through ``train_model`` (the probe itself, or a wrapper fed
    cached features); evaluate the full probe on the evaluation split."""
    acc = ctx.accelerator
    optimizer = head_optimizer(probe.heads, lrs, ctx)
    scheduler = build_scheduler(optimizer, ctx.settings)
    probe.to(acc.device)
    train_model.to(acc.device)
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
