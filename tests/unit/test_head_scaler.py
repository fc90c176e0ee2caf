"""Per-head loss scaling against torch's own GradScaler, one per head trained alone.

Head 1's input is blown up at some steps so that its scaled gradients overflow: alone,
torch's GradScaler skips those steps and backs its scale off. Trained together with the
other heads, HeadwiseGradScaler must give every head exactly the weights, optimiser
state and scale of its own solo run, where one shared GradScaler would skip the other
heads' steps too.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.models.probe import scale_grad
from bench.protocols.head_scaler import HeadwiseGradScaler

LRS = [1e-3, 1e-2, 3e-2]
STEPS = 8
BLOW_UP = {1: {2, 5}}  # head -> steps whose input overflows its scaled gradient
KW = {"init_scale": 2.0**16, "growth_factor": 2.0, "backoff_factor": 0.5,
      "growth_interval": 3}


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g))
            for _ in range(STEPS)]


def _input(x: torch.Tensor, head: int, step: int) -> torch.Tensor:
    return x * 1e35 if step in BLOW_UP.get(head, set()) else x


def _loss(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(head(x), y)


def _template() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def _solo(k: int) -> tuple[nn.Module, torch.optim.AdamW, torch.amp.GradScaler]:
    head = _template()
    opt = torch.optim.AdamW(head.parameters(), lr=LRS[k], weight_decay=0.05)
    scaler = torch.amp.GradScaler("cpu", **KW)
    for step, (x, y) in enumerate(_data()):
        scaler.scale(_loss(head, _input(x, k, step), y)).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return head, opt, scaler


def _together(shared: bool):
    heads = [copy.deepcopy(_template()) for _ in LRS]
    opt = torch.optim.AdamW(
        [{"params": h.parameters(), "lr": lr} for h, lr in zip(heads, LRS, strict=True)],
        lr=LRS[0], weight_decay=0.05,
    )
    scaler = (torch.amp.GradScaler("cpu", **KW) if shared
              else HeadwiseGradScaler(heads, torch.device("cpu"), **KW))
    for step, (x, y) in enumerate(_data()):
        losses = [_loss(h, _input(x, k, step), y) for k, h in enumerate(heads)]
        if not shared:
            losses = [scale_grad(v, s) for v, s in zip(losses, scaler.scales, strict=True)]
        scaler.scale(torch.stack(losses).sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return heads, opt, scaler


def test_each_head_keeps_the_scale_and_steps_of_its_solo_run():
    heads, opt, scaler = _together(shared=False)
    solo = [_solo(k) for k in range(len(LRS))]
    for k, (head, solo_opt, solo_scaler) in enumerate(solo):
        for a, b in zip(heads[k].parameters(), head.parameters(), strict=True):
            assert torch.equal(a, b), f"head {k}"
            assert torch.equal(opt.state[a]["step"], solo_opt.state[b]["step"])
            assert torch.equal(opt.state[a]["exp_avg_sq"], solo_opt.state[b]["exp_avg_sq"])
        assert scaler.state_dict()["scales"][k] == solo_scaler.get_scale()
        assert scaler.state_dict()["growth_trackers"][k] == solo_scaler._growth_tracker.item()
    # The overflowing head really skipped steps and backed off, the others did not.
    steps = [int(solo_opt.state[next(iter(h.parameters()))]["step"]) for h, solo_opt, _ in solo]
    assert steps == [STEPS, STEPS - 2, STEPS]
    assert solo[1][2].get_scale() < solo[0][2].get_scale()


def test_one_shared_grad_scaler_would_couple_the_heads():
    # Why per-head scaling exists: with one GradScaler head 0 loses head 1's skipped steps.
    heads, _, _ = _together(shared=True)
    solo_head0 = _solo(0)[0]
    assert not torch.equal(heads[0].weight, solo_head0.weight)


def test_state_round_trip_and_mismatch():
    heads = [nn.Linear(2, 2) for _ in range(2)]
    a = HeadwiseGradScaler(heads, torch.device("cpu"), **KW)
    a.scales[1].fill_(8.0)
    a.trackers[0].fill_(2)
    b = HeadwiseGradScaler(heads, torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    c = HeadwiseGradScaler(heads[:1], torch.device("cpu"))
    with pytest.raises(ValueError, match="for 2 heads, this run trains 1"):
        c.load_state_dict(a.state_dict())
