"""Heads of an lr sweep that diverge are dropped; the others train on.

Heads trained together are independent: each has its own parameters, AdamW groups and
(under fp16) loss scale, and the frozen features they share get no gradient, so a head
whose loss turns NaN or infinite only spoils its own gradients. Trained alone, such a
head would stop its run; trained in a sweep, it should not stop the others. At the step
where its loss first is non-finite (on any process), :class:`HeadRetirement` drops it:
its gradients are discarded at that step and every later one (AdamW skips a parameter
without a gradient, so its weights stay as they were), and the step's checked and
logged loss is the sum over the heads still trained. The surviving heads are untouched:
they end exactly as their own runs would.

Heads named ``required`` are never dropped (the head a sweep reports under the paper's
lr, which alone would have stopped its run): their divergence stops the run as before,
and so does the last head's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn


class HeadRetirement:
    """The engine's :class:`bench.protocols.engine.LossParts` for a probe's heads."""

    def __init__(
        self,
        accelerator: Accelerator,
        heads: Sequence[nn.Module],
        names: Sequence[str],
        required: Collection[int] = (),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.acc = accelerator
        self.params = [[p for p in h.parameters() if p.requires_grad] for h in heads]
        self.names = list(names)
        self.required = set(required)
        self.log = log or accelerator.print
        self.diverged: dict[int, int] = {}  # head -> the (1-based) step its loss went bad

    def __call__(self, parts: torch.Tensor, losses: torch.Tensor, it: int) -> torch.Tensor:
        bad = (~torch.isfinite(parts)).any(dim=0).float()
        if self.acc.num_processes > 1:  # every process drops the same heads
            bad = self.acc.reduce(bad, reduction="sum")
        newly = [k for k, b in enumerate(bad.tolist()) if b > 0 and k not in self.diverged]
        droppable = [k for k in newly if k not in self.required]
        trained = len(self.params) - len(self.diverged) - len(droppable)
        if droppable and trained > 0:
            for k in droppable:
                self.diverged[k] = it + 1
                self.log(
                    f"head {self.names[k]} diverged (loss non-finite) at iteration {it + 1}: "
                    "dropped, the other heads train on"
                )
        if not self.diverged:
            return losses
        for k in self.diverged:
            for p in self.params[k]:
                p.grad = None
        kept = [k for k in range(len(self.params)) if k not in self.diverged]
        return parts[:, kept].sum(dim=1)

    def state_dict(self) -> dict[str, Any]:
        return {"diverged": {str(k): v for k, v in self.diverged.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.diverged = {int(k): int(v) for k, v in state["diverged"].items()}
