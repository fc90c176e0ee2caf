"""Frozen-backbone features computed once per training image, kept on disk for many heads.

Each image goes through the test pipeline (keep-ratio resize, no augmentation), is
centre-cropped (or padded) to ``crop_size``, and its concatenated block features and
label are written to two ``.npy`` memory maps in the workdir. A finished cache survives
a killed run; an unfinished one is rebuilt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bench.protocols.checkpointing import FEATURE_CACHE_DIR
from bench.protocols.context import RunContext

CACHE_DIR = FEATURE_CACHE_DIR


def centre_crop(
    img: torch.Tensor, label: torch.Tensor, size: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed centre crop to ``size`` x ``size``; smaller sides are padded (label: ignore)."""
    h, w = img.shape[-2:]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), value=0.0)
        label = F.pad(label, (0, pw, 0, ph), value=ignore_index)
        h, w = img.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    rows, cols = slice(top, top + size), slice(left, left + size)
    return img[..., rows, cols], label[rows, cols]


class FeatureCache:
    """This rank's share (indices rank, rank+W, ...) of the training split's features."""

    def __init__(self, ctx: RunContext) -> None:
        acc = ctx.accelerator
        self.ctx = ctx
        self.dir = ctx.workdir / CACHE_DIR
        tag = f"rank{acc.process_index}of{acc.num_processes}"
        self.feat_path = self.dir / f"{tag}.features.npy"
        self.label_path = self.dir / f"{tag}.labels.npy"
        self.done_path = self.dir / f"{tag}.done.json"
        self.features: np.ndarray | None = None
        self.labels: np.ndarray | None = None

    def _complete(self) -> bool:
        if not self.done_path.exists():
            return False
        done = json.loads(self.done_path.read_text())
        return done.get("fingerprint") == self.ctx.fingerprint

    def _dataset(self):
        from bench.data.transforms import Compose, Normalize, Resize

        info, s = self.ctx.info, self.ctx.settings
        # The test pipeline, with the label resized too so the centre crop stays aligned.
        tf = Compose([Resize(s.scale, resize_label=True), Normalize(info.mean, info.std)])
        return self.ctx.build(self.ctx.train_split, tf)

    @torch.no_grad()
    def build(self, extract: nn.Module, progress: bool = True) -> None:
        """Run ``extract`` (frozen features, list of maps) over every image of this shard."""
        if self._complete():
            self._open()
            return
        ctx, s = self.ctx, self.ctx.settings
        acc = ctx.accelerator
        dataset = self._dataset()
        indices = list(range(acc.process_index, len(dataset), acc.num_processes))
        self.dir.mkdir(parents=True, exist_ok=True)
        extract.eval()
        feats = labels = None
        dtype = np.float16 if s.cache_dtype == "float16" else np.float32
        for row, i in enumerate(tqdm(indices, desc="caching features",
                                     disable=not (progress and acc.is_main_process))):
            sample = dataset[i]
            img, label = centre_crop(sample["img"], sample["label"], s.crop_size,
                                     ctx.info.ignore_index)
            with acc.autocast():
                maps = extract(img[None].to(acc.device))
            f = torch.cat(maps, dim=1)[0].float().cpu().numpy()
            if feats is None:
                feats = np.lib.format.open_memmap(
                    self.feat_path, mode="w+", dtype=dtype, shape=(len(indices), *f.shape)
                )
                labels = np.lib.format.open_memmap(
                    self.label_path, mode="w+", dtype=np.uint8,
                    shape=(len(indices), *label.shape),
                )
            feats[row] = f
            labels[row] = label.numpy().astype(np.uint8)
        assert feats is not None and labels is not None
        feats.flush()
        labels.flush()
        del feats, labels
        self.done_path.write_text(json.dumps({"fingerprint": ctx.fingerprint,
                                              "images": len(indices)}))
        self._open()

    def _open(self) -> None:
        self.features = np.load(self.feat_path, mmap_mode="r")
        self.labels = np.load(self.label_path, mmap_mode="r")

    def __len__(self) -> int:
        return 0 if self.features is None else len(self.features)

    def stream(self, batch: int, seed: int) -> Callable[[int], Iterator[dict]]:
        """Micro-batches of cached ``{"img": features, "label": labels}`` from a position
        on; the order depends on (seed, position) only, as the image loaders' does."""
        from bench.data.loader import ResumableSampler

        feats, labels = self.features, self.labels
        assert feats is not None and labels is not None

        def make(start: int) -> Iterator[dict]:
            keys = iter(ResumableSampler(len(feats), seed=seed, start_iter=start,
                                         batch_size=batch))
            while True:
                idx = [next(keys).index for _ in range(batch)]
                yield {
                    "img": torch.from_numpy(np.asarray(feats[idx], dtype=np.float32)),
                    "label": torch.from_numpy(np.asarray(labels[idx], dtype=np.int64)),
                }

        return make
