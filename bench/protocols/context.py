"""What every protocol gets handed, and the data/evaluation plumbing they share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from bench.backbones.backbone import Backbone
from bench.protocols.checkpointing import Checkpointer
from bench.protocols.config import ProtocolSettings
from bench.protocols.inference import Predictor, evaluate
from bench.protocols.registry import MIOU, Metric
from bench.protocols.runtime import per_process_batch


@dataclass
class RunContext:
    """One protocol run: settings, dataset, backbone, devices and where state goes."""

    protocol: str
    settings: ProtocolSettings
    info: Any  # bench.data DatasetInfo
    dataset: dict[str, Any]  # name, root, layout
    backbone: Backbone
    accelerator: Accelerator
    workdir: Path
    seed: int
    fingerprint: str
    progress: bool = True
    # The protocol's primary metric: what picks the best evaluation of a run.
    primary: Metric = MIOU

    @property
    def train_split(self) -> str:
        return self.settings.train_split or self.info.train_split

    @property
    def eval_split(self) -> str:
        return self.settings.eval_split or self.info.default_eval_split

    @property
    def micro_batch(self) -> int:
        s = self.settings
        return per_process_batch(
            s.batch_size, self.accelerator.num_processes, s.grad_accum_steps
        )

    def checkpointer(self) -> Checkpointer:
        return Checkpointer(self.workdir, self.accelerator, self.fingerprint)

    def build(self, split: str, transform: Any) -> Dataset:
        from bench.data import build_dataset

        d = self.dataset
        return build_dataset(d["name"], d["root"], split, transform=transform,
                             layout=d.get("layout"))

    def train_set(self) -> Dataset:
        """The training split with the protocol's augmentation pipeline."""
        from bench.data.transforms import train_transform

        s = self.settings
        tf = train_transform(
            self.info, crop_size=s.crop_size, scale=s.scale, ratio_range=s.ratio_range,
            cat_max_ratio=s.cat_max_ratio,
        )
        return self.build(self.train_split, tf)

    def eval_set(self) -> Dataset:
        from bench.data.transforms import test_transform

        return self.build(self.eval_split, test_transform(self.info, scale=self.settings.scale))

    def train_stream(self, dataset: Dataset) -> Callable[[int], Iterator[dict]]:
        """Micro-batch stream factory: this rank's shard from a given micro-batch on."""
        from bench.data.loader import build_train_loader

        acc = self.accelerator

        def make(start: int) -> Iterator[dict]:
            loader = build_train_loader(
                dataset,
                batch_size=self.micro_batch,
                seed=self.seed,
                num_workers=self.settings.num_workers,
                rank=acc.process_index,
                world_size=acc.num_processes,
                start_iter=start,
                pin_memory=acc.device.type == "cuda",
            )
            return iter(loader)

        return make

    def evaluate(self, predict: Predictor, dataset: Dataset, num_heads: int) -> list[dict]:
        """Per-head metrics over the whole split: each rank predicts its strided shard,
        confusion counts are summed across ranks."""
        from bench.data.loader import build_eval_loader
        from bench.metrics import IoUAccumulator

        acc = self.accelerator
        s = self.settings
        info = self.info
        accs = [IoUAccumulator(info.num_classes, ignore_index=info.ignore_index)
                for _ in range(num_heads)]
        loader = build_eval_loader(
            dataset, num_workers=s.num_workers, rank=acc.process_index,
            world_size=acc.num_processes,
        )
        with torch.random.fork_rng(devices=[]):  # the iterator's seed draw stays private
            batches = iter(loader)
        with acc.autocast():
            evaluate(predict, batches, accs, info.num_classes, acc.device,
                     s.inference, s.slide_crop, s.slide_stride)
        for a in accs:
            a.sync()  # confusion counts summed over ranks (no-op in one process)
        return [a.compute() for a in accs]
