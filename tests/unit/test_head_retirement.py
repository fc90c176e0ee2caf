"""Which heads HeadRetirement drops, and what it leaves the engine to check and log."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from bench.protocols.head_retirement import HeadRetirement

NAN = float("nan")


def _setup(required=()):
    torch.manual_seed(0)
    heads = [nn.Linear(2, 2) for _ in range(3)]
    for h in heads:
        for p in h.parameters():
            p.grad = torch.ones_like(p)
    lines: list[str] = []
    acc = SimpleNamespace(num_processes=1, print=lines.append)
    return heads, HeadRetirement(acc, heads, ["a", "b", "c"], required), lines


def _has_grads(head: nn.Module) -> bool:
    return all(p.grad is not None for p in head.parameters())


def test_finite_heads_leave_the_steps_losses_alone():
    heads, retire, lines = _setup()
    losses = torch.tensor([3.0, 4.0])
    assert retire(torch.ones(2, 3), losses, 0) is losses
    assert retire.diverged == {} and lines == [] and all(map(_has_grads, heads))


def test_a_diverged_head_is_dropped_for_good():
    heads, retire, lines = _setup(required=[1])
    parts = torch.tensor([[1.0, 2.0, NAN], [1.5, 2.5, 4.0]])  # micro-batches x heads
    out = retire(parts, parts.sum(1), 4)
    assert retire.diverged == {2: 5}
    assert out.tolist() == [3.0, 4.0]  # the heads still trained
    assert lines == ["head c diverged (loss non-finite) at iteration 5: dropped, the other "
                     "heads train on"]
    assert [_has_grads(h) for h in heads] == [True, True, False]
    # Later steps: its gradients are dropped again, its (now finite) loss not counted.
    for p in heads[2].parameters():
        p.grad = torch.ones_like(p)
    out = retire(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([12.0]), 5)
    assert out.tolist() == [3.0] and not _has_grads(heads[2])
    state = retire.state_dict()
    _, again, _ = _setup(required=[1])
    again.load_state_dict(state)
    assert again.diverged == {2: 5}


def test_a_required_head_or_the_last_one_is_never_dropped():
    _, retire, _ = _setup(required=[1])
    out = retire(torch.tensor([[1.0, NAN, 2.0]]), torch.tensor([NAN]), 0)
    assert retire.diverged == {} and math.isnan(out.item())  # the engine stops the run
    _, retire, _ = _setup()
    retire(torch.tensor([[NAN, 1.0, 1.0]]), torch.tensor([NAN]), 0)
    out = retire(torch.tensor([[1.0, NAN, NAN]]), torch.tensor([NAN]), 1)
    assert retire.diverged == {0: 1} and math.isnan(out.item())
