"""The segmentation dataset: samples of one split, loaded, checked and transformed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch.utils.data import Dataset

from bench.data.imageio import read_image, read_label
from bench.data.layout import (
    ResolvedLayout,
    SplitListing,
    list_split,
    quote_some,
    resolve_layout,
    unpaired_message,
)
from bench.data.lookup import get_dataset_info
from bench.data.spec import DatasetError, DatasetInfo
from bench.data.transforms import Transform, normalise_only


class SampleKey(NamedTuple):
    """What a sampler hands the dataset: which sample, and what its augmentation RNG is."""

    index: int
    epoch: int = 0
    seed: int = 0


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation RNG of one sample in one epoch; independent of workers and order."""
    return np.random.default_rng([seed, epoch, index])


def invalid_label_values(label: np.ndarray, info: DatasetInfo) -> list[int]:
    """Stored label values that are neither a class id nor the ignore value (sorted)."""
    top = info.num_classes + (1 if info.reduce_zero_label else 0)  # stored 0 -> ignore
    if label.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    else:
        present = np.unique(label)
    return [int(v) for v in present if not (0 <= v < top or v == info.ignore_index)]


def allowed_values(info: DatasetInfo) -> str:
    if info.reduce_zero_label:
        return f"0 (unlabelled), 1..{info.num_classes} (classes) or {info.ignore_index}"
    return f"0..{info.num_classes - 1} (classes) or {info.ignore_index} (ignore)"


def _label_lut(info: DatasetInfo) -> np.ndarray:
    """Stored value -> training label; mmseg's reduce_zero_label maps 0 -> 255, k -> k-1."""
    lut = np.arange(256, dtype=np.uint8)
    if info.reduce_zero_label:
        lut = np.concatenate([[255], np.arange(255)]).astype(np.uint8)
        lut[255] = 255
    return lut


class SegmentationDataset(Dataset):
    """Items are ``{"img": 3xHxW float32, "label": HxW int64 (255 = ignore), "name": str}``.

    Index with an ``int`` or a :class:`SampleKey`; the key's (seed, epoch, index) seeds the
    transform's RNG.
    """

    def __init__(
        self,
        info: DatasetInfo,
        layout: ResolvedLayout,
        listing: SplitListing,
        transform: Transform | None = None,
    ) -> None:
        self.info = info
        self.layout = layout
        self.split = listing.split
        self.names = list(listing.names)
        self.images = list(listing.images)
        self.labels = list(listing.labels)
        self.transform = transform if transform is not None else normalise_only(info)
        self._lut = _label_lut(info)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def root(self) -> Path:
        return self.layout.root

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw sample ``i``: image ``H x W x C`` uint8 and training label ``H x W`` uint8."""
        img_path, ann_path = self.images[i], self.labels[i]
        img = read_image(img_path, self.layout.layout.image_mode)
        raw = read_label(ann_path)
        if img.shape[:2] != raw.shape:
            raise DatasetError(
                f"{self.info.name}: image {img_path} is {img.shape[0]}x{img.shape[1]} but its "
                f"label {ann_path} is {raw.shape[0]}x{raw.shape[1]} (height x width)"
            )
        bad = invalid_label_values(raw, self.info)
        if bad:
            raise DatasetError(
                f"{self.info.name}: label {ann_path} holds values {quote_some(bad)}; allowed: "
                f"{allowed_values(self.info)}"
            )
        return img, self._lut[raw]

    def __getitem__(self, key: int | SampleKey | tuple) -> dict:
        k = SampleKey(*key) if isinstance(key, tuple) else SampleKey(int(key))
        img, label = self.load(k.index)
        img_t, label_t = self.transform(img, label, sample_rng(k.seed, k.epoch, k.index))
        return {"img": img_t, "label": label_t, "name": self.names[k.index]}

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({self.info.name!r}, split={self.split!r}, n={len(self)}, "
            f"{self.layout.describe()}, root={str(self.root)!r})"
        )


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    layout: str | None = None,
) -> SegmentationDataset:
    """The ``split`` of dataset ``name`` stored under ``root`` (layout given or detected)."""
    info = get_dataset_info(name)
    res = resolve_layout(info, root, layout)
    listing = list_split(info, res, split)
    problems = unpaired_message(info, res, listing)
    if problems:
        raise DatasetError("; ".join(problems))
    if not listing.names:
        raise DatasetError(f"{name} {split}: no samples in {listing.source}")
    return SegmentationDataset(info, res, listing, transform)


# Content sampled by the fingerprint: this many image/label pairs, evenly spaced over the
# sorted names (all of them in a small split), each read up to CONTENT_BYTES at its head
# and again at its tail. Bounded cost whatever the dataset's size.
CONTENT_SAMPLE = 16
CONTENT_BYTES = 1 << 20


def _sample_indices(n: int, k: int = CONTENT_SAMPLE) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _hash_content(h: hashlib._Hash, path: Path, size: int) -> None:
    with open(path, "rb") as f:
        if size <= 2 * CONTENT_BYTES:
            h.update(f.read())
            return
        h.update(f.read(CONTENT_BYTES))
        f.seek(-CONTENT_BYTES, 2)
        h.update(f.read(CONTENT_BYTES))


def dataset_fingerprint(name: str, root: str | Path, split: str, layout: str | None = None) -> str:
    """sha256 identifying a split's data, the same wherever the folder is copied or moved.

    It covers the split's sorted relative file names with their sizes (split file
    included, read whole) and the bytes of an evenly spaced sample of image/label pairs
    (see CONTENT_SAMPLE). Modification times are left out: a copy changes them, not the
    data. An image replaced in place by one of exactly the same size outside the sample
    goes unnoticed; any change of names, sizes or of a sampled file is seen.
    """
    info = get_dataset_info(name)
    res = resolve_layout(info, root, layout)
    listing = list_split(info, res, split)
    files = [*listing.images, *listing.labels]
    rows = sorted((p.relative_to(res.root).as_posix(), p.stat().st_size) for p in files)
    h = hashlib.sha256()
    h.update(f"{info.name}\n".encode())
    for rel, size in rows:
        h.update(f"{rel}\t{size}\n".encode())
    if listing.source.is_file():
        h.update(f"{listing.source.relative_to(res.root).as_posix()}\n".encode())
        h.update(listing.source.read_bytes())
    order = sorted(range(len(listing.names)), key=lambda i: listing.names[i])
    for i in (order[j] for j in _sample_indices(len(order))):
        for p in (listing.images[i], listing.labels[i]):
            h.update(f"\n{p.relative_to(res.root).as_posix()}\n".encode())
            _hash_content(h, p, p.stat().st_size)
    return h.hexdigest()
