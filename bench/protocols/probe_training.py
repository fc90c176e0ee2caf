"""Training linear heads on a frozen backbone: shared by linear and layer-wise probing."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from bench.models.probe import Probe, ProbeHeads
from bench.protocols.context import RunContext
from bench.protocols.engine import Trainer, TrainOutcome, build_scheduler
from bench.protocols.head_retirement import HeadRetirement
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


class HeadwiseScaled(nn.Module):
    """A probe's training view (the probe, or its heads on cached features) under fp16,
    with one loss scale per head: ``forward(*inputs)`` is the view's with the scaler's
    per-head scales."""

    def __init__(self, view: nn.Module, scaler: HeadwiseGradScaler) -> None:
        super().__init__()
        self.view = view
        self.scaler = scaler

    def forward(self, *inputs: torch.Tensor) -> dict[str, Any]:
        return self.view(*inputs, grad_scales=self.scaler.scales)


def train_heads(
    ctx: RunContext,
    probe: Probe,
    lrs: Sequence[float],
    train_model: nn.Module,
    stream: Callable[[int], Iterator[dict]],
    description: str,
    droppable: Sequence[str] | None = None,
    required: Collection[int] = (),
) -> TrainOutcome:
    """Train ``probe.heads`` through ``train_model`` (the probe itself, or a view fed
    cached features, whose ``forward`` takes ``grad_scales``); evaluate the full probe on
    the evaluation split.

    Under fp16 loss scaling, heads trained together get one scale each, so one head's
    overflow neither skips another head's step nor changes its scale
    (:mod:`bench.protocols.head_scaler`), as in a run of each head alone.

    ``droppable`` (a name per head): a head whose loss diverges is dropped and the others
    train on (:mod:`bench.protocols.head_retirement`), except the heads in ``required``;
    the outcome's ``diverged`` says which, and when. Without it, any divergence stops the
    run.
    """
    acc = ctx.accelerator
    optimizer = head_optimizer(probe.heads, lrs, ctx)
    scheduler = build_scheduler(optimizer, ctx.settings)
    probe.to(acc.device)
    train_model.to(acc.device)
    if acc.scaler is not None and probe.num_heads > 1:
        # The accelerator's backward and its prepared optimiser use acc.scaler: replace it
        # before prepare() so both see the per-head one (and the checkpoint saves it).
        acc.scaler = HeadwiseGradScaler.like(acc.scaler, probe.heads.heads, acc.device)
        train_model = HeadwiseScaled(train_model, acc.scaler)
    prepared, optimizer = acc.prepare(train_model, optimizer)
    eval_set = ctx.eval_set()
    retirement = (
        HeadRetirement(acc, probe.heads.heads, droppable, required)
        if droppable is not None and probe.num_heads > 1
        else None
    )

    def evaluate() -> list[dict]:
        probe.eval()
        return ctx.evaluate(probe, eval_set, num_heads=probe.num_heads)

    trainer = Trainer(
        acc, prepared, optimizer, scheduler, probe.heads, stream, evaluate, ctx.settings,
        ctx.checkpointer(), num_heads=probe.num_heads, progress=ctx.progress,
        description=description, primary=ctx.primary, loss_parts=retirement,
    )
    out = trainer.run()
    if retirement is not None:
        out.drop_heads(retirement.diverged)
    return out
