"""Distillation data: resumable, process-sharded sampling with per-sample augmentation seeds.

Every sample's augmentation is seeded from (run seed, epoch, position), so what a step
sees depends on neither the number of loader workers nor an interruption: a resumed run
starts its sampler at the saved position and draws exactly the crops the uninterrupted
run would have drawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from unip.images import ImageListDataset, find_images, pretrain_augmentation
from unip.infmix import read_manifest


def training_images(path: str | Path) -> list[Path]:
    """Images of an InfMix manifest (a file) or of a folder (recursively)."""
    path = Path(path)
    if path.is_file():
        return [Path(e.path) for e in read_manifest(path)]
    if path.is_dir():
        return find_images(path)
    raise FileNotFoundError(f"training data {path} is neither a manifest file nor a folder")


def fingerprint(paths: Sequence[Path]) -> str:
    """sha256 of the ordered path list: a resumed run must see the same images."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode("utf-8") + b"\0")
    return h.hexdigest()


class EpochSampler(Sampler):
    """``(index, seed)`` pairs of one epoch for one process, from step ``start_step`` on.

    The epoch's permutation and per-position seeds come from (seed, epoch). A global batch
    of ``accum_steps x world x micro`` consecutive positions makes one optimiser step; each
    accumulation step gives each process its ``micro`` positions. Incomplete batches at
    the end of an epoch are dropped.
    """

    def __init__(
        self,
        num_items: int,
        micro_batch: int,
        accum_steps: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.n = num_items
        self.micro = micro_batch
        self.accum = accum_steps
        self.world = world
        self.rank = rank
        self.batch = micro_batch * accum_steps * world
        self.steps = num_items // self.batch
        self.start = start_step
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.accum * self.micro

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        for step in range(self.start, self.steps):
            for m in range(self.accum):
                first = step * self.batch + (m * self.world + self.rank) * self.micro
                for j in range(first, first + self.micro):
                    yield perm[j], seeds[j]


class SeededSamples(Dataset):
    """Looks up ``(index, seed)``: the item's random transforms run under that seed only.

    The global generator is saved and restored around each item, so loading in the main
    process does not disturb the training RNG (drop path).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def pretrain_dataset(
    paths: Sequence[Path], img_size: int, scale: tuple[float, float], hflip: bool
) -> SeededSamples:
    """Grey-to-RGB images with NMI-HAD's augmentation and the infrared normalisation."""
    return SeededSamples(ImageListDataset(paths, pretrain_augmentation(img_size, scale, hflip)))


def epoch_loader(
    dataset: SeededSamples, sampler: EpochSampler, num_workers: int, seed: int, pin: bool
) -> DataLoader:
    # An own generator: creating loader iterators must not draw from the training RNG.
    return DataLoader(
        dataset,
        batch_size=sampler.micro,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin,
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
