"""Synced BN and the all-rank loss on 2 gloo processes equal one process on the full batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from local_launch import free_port
from torch import nn

from bench.models.layers import GlooSyncBatchNorm2d, convert_sync_norm, cross_entropy


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g) * 3 + 5  # a mean that dwarfs the spread
    y = torch.randint(0, 5, (4, 8, 8), generator=g)
    y[:2, :6] = 255  # rank 0's half is mostly unlabelled: per-rank means would differ
    return x, y


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list, list]:
    loss = cross_entropy(model(x), y, 255)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    bn = model[1]
    return loss.item(), grads, [bn.running_mean.clone(), bn.running_var.clone()]


def _worker(rank: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        model = convert_sync_norm(_model())
        assert isinstance(model[1], GlooSyncBatchNorm2d)
        x, y = _data()
        loss, grads, stats = _step(model, x[2 * rank : 2 * rank + 2], y[2 * rank : 2 * rank + 2])
        for g in grads:  # what DDP does with the gradients
            dist.all_reduce(g)
            g /= 2
        t = torch.tensor([loss])
        dist.all_reduce(t)
        out[rank] = (t.item() / 2, grads, stats)
    finally:
        dist.destroy_process_group()



@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_whole_batch():
    ref_model = _model()
    assert convert_sync_norm(ref_model) is ref_model  # no process group: plain BN kept
    ref_loss, ref_grads, ref_stats = _step(ref_model, *_data())

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(free_port(), out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        loss, grads, stats = results[rank]
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
        for s, r in zip(stats, ref_stats, strict=True):
            torch.testing.assert_close(s, r, rtol=1e-5, atol=1e-6)
