"""Resumable, rank-aware sampling and loaders whose batches do not depend on worker count."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch

from bench.data import build_dataset, get_dataset_info
from bench.data import transforms as T
from bench.data.loader import ResumableSampler, build_eval_loader, build_train_loader
from bench.data.synth import synthesize


def indices(sampler: ResumableSampler, n: int) -> list[int]:
    return [k.index for k in islice(iter(sampler), n)]


def test_each_epoch_is_a_permutation_and_epochs_differ() -> None:
    stream = indices(ResumableSampler(10, seed=3), 30)
    epochs = [stream[i : i + 10] for i in (0, 10, 20)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert indices(ResumableSampler(10, seed=3), 30) == stream
    assert indices(ResumableSampler(10, seed=4), 10) != epochs[0]
    assert indices(ResumableSampler(5, shuffle=False), 7) == [0, 1, 2, 3, 4, 0, 1]


def test_keys_carry_epoch_and_seed() -> None:
    keys = list(islice(iter(ResumableSampler(4, seed=9)), 6))
    assert [k.epoch for k in keys] == [0, 0, 0, 0, 1, 1]
    assert {k.seed for k in keys} == {9}


@pytest.mark.parametrize("start", [0, 3, 4, 9])
def test_resume_continues_the_uninterrupted_stream(start: int) -> None:
    full = indices(ResumableSampler(7, seed=1, batch_size=2), 40)
    resumed = indices(ResumableSampler(7, seed=1, batch_size=2, start_iter=start), 40 - 2 * start)
    assert resumed == full[2 * start :]


def test_ranks_share_an_epoch_without_overlap() -> None:
    n, world = 10, 3
    shards = [ResumableSampler(n, seed=5, rank=r, world_size=world) for r in range(world)]
    parts = [indices(s, 4) for s in shards]  # ceil(10 / 3) = 4 each, two padded
    flat = [i for p in parts for i in p]
    assert set(flat) == set(range(n)) and len(flat) == 12
    assert all(len(p) == 4 for p in parts)


def test_per_epoch_mode_has_a_length_and_follows_set_epoch() -> None:
    s = ResumableSampler(6, seed=2, infinite=False)
    first = [k.index for k in s]
    assert len(s) == 6 and sorted(first) == list(range(6))
    s.set_epoch(1)
    assert [k.index for k in s] != first and all(k.epoch == 1 for k in s)
    resumed = ResumableSampler(6, seed=2, infinite=False, start_iter=4)
    assert len(resumed) == 2 and [k.index for k in resumed] == first[4:]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty dataset"):
        ResumableSampler(0)
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        ResumableSampler(5, rank=2, world_size=2)
    with pytest.raises(TypeError, match="infinite"):
        len(ResumableSampler(5))


@pytest.fixture(scope="module")
def soda_train(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("loader") / "soda"
    synthesize("soda", root, train=6, test=1, size=48, seed=4)
    info = get_dataset_info("soda")
    tf = T.train_transform(info, crop_size=32, scale=(64, 48))
    return build_dataset("soda", root, "train", transform=tf)


def batches(loader, n: int) -> list[dict]:
    return list(islice(iter(loader), n))


def test_worker_count_does_not_change_the_batches(soda_train) -> None:
    a = batches(build_train_loader(soda_train, 2, seed=11, num_workers=0), 5)
    b = batches(build_train_loader(soda_train, 2, seed=11, num_workers=2), 5)
    for x, y in zip(a, b, strict=True):
        assert x["name"] == y["name"]
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["label"], y["label"])
    assert a[0]["img"].shape == (2, 3, 32, 32) and a[0]["label"].shape == (2, 32, 32)
    # Same images in a later epoch get a different augmentation.
    c = batches(build_train_loader(soda_train, 2, seed=12, num_workers=0), 5)
    assert any(not torch.equal(x["img"], z["img"]) for x, z in zip(a, c, strict=True))


def test_resumed_loader_matches_the_uninterrupted_one(soda_train) -> None:
    full = batches(build_train_loader(soda_train, 2, seed=3), 6)
    resumed = batches(build_train_loader(soda_train, 2, seed=3, start_iter=4), 2)
    for x, y in zip(full[4:], resumed, strict=True):
        assert x["name"] == y["name"] and torch.equal(x["img"], y["img"])


def test_eval_loader_shards_cover_the_split_once(tmp_path: Path) -> None:
    root = tmp_path / "scut"
    synthesize("scut_seg", root, train=1, test=5, size=24)
    ds = build_dataset("scut_seg", root, "val")
    seen = [b["name"][0] for r in range(2) for b in build_eval_loader(ds, rank=r, world_size=2)]
    assert sorted(seen) == sorted(ds.names)
