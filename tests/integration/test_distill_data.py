"""Distillation sampling: resumable positions, disjoint process shards, seeded augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unip.distill_data import EpochSampler, pretrain_dataset, training_images
from unip.infmix import build_infmix, write_manifest


def test_resumed_sampler_continues_where_the_full_one_was() -> None:
    full = list(EpochSampler(50, micro_batch=4, accum_steps=2, seed=3, epoch=1))
    resumed = list(EpochSampler(50, micro_batch=4, accum_steps=2, seed=3, epoch=1, start_step=2))
    assert len(full) == 6 * 8  # 50 // 8 steps, incomplete batch dropped
    assert resumed == full[2 * 8 :]
    assert len({i for i, _ in full}) == len(full)
    other_epoch = list(EpochSampler(50, micro_batch=4, accum_steps=2, seed=3, epoch=2))
    assert [i for i, _ in other_epoch] != [i for i, _ in full]


def test_process_shards_split_each_batch() -> None:
    one = list(EpochSampler(40, micro_batch=2, accum_steps=2, seed=0, epoch=0, world=1))
    # Two processes with half the micro-batch see the same global batches between them.
    shards = [
        list(EpochSampler(40, micro_batch=1, accum_steps=2, seed=0, epoch=0, rank=r, world=2))
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == len(one) // 2
    assert not {i for i, _ in shards[0]} & {i for i, _ in shards[1]}
    for step in range(10):
        batch = {i for i, _ in one[step * 4 : step * 4 + 4]}
        assert batch == {i for s in shards for i, _ in s[step * 2 : step * 2 + 2]}


def test_augmentation_depends_on_the_sample_seed_only(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (40, 56), np.uint8)
    Image.fromarray(arr, "L").save(tmp_path / "a.png")
    ds = pretrain_dataset([tmp_path / "a.png"], 32, (0.2, 1.0), True)
    torch.manual_seed(1)
    x1 = ds[(0, 123)]
    after = torch.rand(3)
    torch.manual_seed(2)
    x2 = ds[(0, 123)]
    torch.manual_seed(1)
    ds[(0, 999)]
    assert torch.equal(torch.rand(3), after)  # the training RNG is left alone
    assert torch.equal(x1, x2) and x1.shape == (3, 32, 32)
    assert not torch.equal(x1, ds[(0, 124)])


def test_training_images_from_folder_or_manifest(tmp_path: Path) -> None:
    for i in range(3):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8), "L").save(tmp_path / f"{i}.png")
    folder = training_images(tmp_path)
    entries, report = build_infmix([tmp_path])
    manifest = write_manifest(entries, report, tmp_path / "out" / "m.jsonl")
    assert [p.resolve() for p in folder] == training_images(manifest)
