"""Data loaders whose stream depends only on (seed, position): resumable, worker-count free.

Keys carry (index, epoch, seed); the dataset seeds each sample's augmentation from them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.data.dataset import SampleKey


class ResumableSampler(Sampler[SampleKey]):
    """Epoch ``e`` = permutation from (seed, e), padded to the world size, dealt by rank.

    Skips ``start_iter * batch_size`` samples. ``infinite``: epochs run on end to end;
    otherwise each iteration yields the epoch set by :meth:`set_epoch`.
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start_iter: int = 0,
        batch_size: int = 1,
        infinite: bool = True,
    ) -> None:
        if length <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if start_iter < 0 or batch_size <= 0:
            raise ValueError("start_iter must be >= 0 and batch_size > 0")
        self.length = length
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.infinite = infinite
        self.per_rank = math.ceil(length / world_size)
        self.start_epoch, self.start_offset = divmod(start_iter * batch_size, self.per_rank)
        self.epoch = self.start_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's share of epoch ``epoch`` (``per_rank`` indices)."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        # Like DistributedSampler: wrap around so every rank gets the same count.
        order = np.resize(order, self.per_rank * self.world_size)
        return order[self.rank :: self.world_size]

    def _keys(self, epoch: int, offset: int) -> Iterator[SampleKey]:
        for i in self.epoch_indices(epoch)[offset:]:
            yield SampleKey(int(i), epoch, self.seed)

    def __iter__(self) -> Iterator[SampleKey]:
        if not self.infinite:
            offset = self.start_offset if self.epoch == self.start_epoch else 0
            yield from self._keys(self.epoch, offset)
            return
        epoch, offset = self.start_epoch, self.start_offset
        while True:
            yield from self._keys(epoch, offset)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite ResumableSampler has no length")
        return self.per_rank - (self.start_offset if self.epoch == self.start_epoch else 0)


def _worker_init(_: int) -> None:
    # Workers decode and resize; intra-op threads in each would oversubscribe the cores.
    torch.set_num_threads(1)


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    start_iter: int = 0,
    infinite: bool = True,
    shuffle: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """Training loader over a :class:`ResumableSampler`; ``start_iter`` counts batches."""
    sampler = ResumableSampler(
        len(dataset),
        seed=seed,
        shuffle=shuffle,
        rank=rank,
        world_size=world_size,
        start_iter=start_iter,
        batch_size=batch_size,
        infinite=infinite,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        persistent_workers=num_workers > 0 and not infinite,
    )


def build_eval_loader(
    dataset: Dataset, num_workers: int = 0, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """Batch-1 loader over this rank's strided shard, no padding: summed metrics are exact."""
    indices = list(range(rank, len(dataset), world_size))
    return DataLoader(
        dataset,
        batch_size=1,
        sampler=indices,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
