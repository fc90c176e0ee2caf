"""fp16 loss scaling per head, so that heads trained together keep their own loss scale.

torch's ``GradScaler`` keeps one scale for the whole model: a gradient overflow anywhere
skips every parameter's step and halves the scale for all. Heads of an lr sweep trained
together would then skip each other's steps and see each other's scale, which a run of
one head alone never does. :class:`HeadwiseGradScaler` keeps GradScaler's state and
arithmetic (the same torch kernels, powers-of-two scales) once per head: head k's loss
gradient is multiplied by its own scale (:func:`bench.models.probe.scale_grad`, placed in
the graph by the probe), and its overflow skips only its own step and backs off only its
own scale.

It stands in for the accelerator's scaler (``Accelerator.backward`` calls ``scale``, the
prepared optimiser ``step`` and ``update``; the training loop saves ``state_dict``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class HeadwiseGradScaler:
    """GradScaler's dynamic loss scaling, one scale and growth tracker per head."""

    def __init__(
        self,
        heads: Sequence[nn.Module],
        device: torch.device,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        self.params = [[p for p in h.parameters() if p.requires_grad] for h in heads]
        self.device = device
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        n = len(self.params)
        self.scales = [torch.full((1,), init_scale, dtype=torch.float32, device=device)
                       for _ in range(n)]
        self.trackers = [torch.zeros((1,), dtype=torch.int32, device=device) for _ in range(n)]
        self._found_inf: list[torch.Tensor] | None = None

    @classmethod
    def like(cls, scaler: Any, heads: Sequence[nn.Module], device: torch.device
             ) -> HeadwiseGradScaler:
        """One per-head scaler with ``scaler``'s (a torch GradScaler) settings and scale."""
        return cls(heads, device, init_scale=float(scaler.get_scale()),
                   growth_factor=scaler.get_growth_factor(),
                   backoff_factor=scaler.get_backoff_factor(),
                   growth_interval=scaler.get_growth_interval())

    # ---- the GradScaler interface the accelerator and its optimiser use
    def is_enabled(self) -> bool:
        return True

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        # The per-head scales are already in the graph (scale_grad): nothing to add.
        return loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Each head's gradients times 1/its scale, noting per head whether any is inf/NaN."""
        if self._found_inf is not None:
            return
        found = []
        for params, scale in zip(self.params, self.scales, strict=True):
            inf = torch.zeros((1,), dtype=torch.float32, device=self.device)
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                inv = scale.double().reciprocal().float()  # as GradScaler computes it
                torch._amp_foreach_non_finite_check_and_unscale_(grads, inf, inv)
            found.append(inf)
        self._found_inf = found

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        """Step the heads whose gradients are finite; an overflowing head keeps its
        weights and optimiser state (its gradients are dropped, which AdamW skips)."""
        self.unscale_(optimizer)
        assert self._found_inf is not None
        skipped = [bool(inf.item()) for inf in self._found_inf]
        for params, skip in zip(self.params, skipped, strict=True):
            if skip:
                for p in params:
                    p.grad = None
        if not all(skipped):
            optimizer.step(*args, **kwargs)

    def update(self) -> None:
        """Per head: back off after an overflow, grow after ``growth_interval`` clean steps."""
        assert self._found_inf is not None, "update() before step()"
        for scale, tracker, inf in zip(self.scales, self.trackers, self._found_inf,
                                       strict=True):
            torch._amp_update_scale_(scale, tracker, inf, self.growth_factor,
                                     self.backoff_factor, self.growth_interval)
        self._found_inf = None

    def get_scale(self) -> float:
        """The first head's scale (what a progress line would show)."""
        return float(self.scales[0].item())

    # ---- resumable state
    def state_dict(self) -> dict[str, Any]:
        return {
            "scales": [float(s.item()) for s in self.scales],
            "growth_trackers": [int(t.item()) for t in self.trackers],
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["scales"]) != len(self.scales):
            raise ValueError(
                f"the saved loss scales are for {len(state['scales'])} heads, this run "
                f"trains {len(self.scales)}"
            )
        for s, v in zip(self.scales, state["scales"], strict=True):
            s.fill_(v)
        for t, v in zip(self.trackers, state["growth_trackers"], strict=True):
            t.fill_(v)
        self.growth_factor = state["growth_factor"]
        self.backoff_factor = state["backoff_factor"]
        self.growth_interval = state["growth_interval"]
