"""Image folders for UNIP: finding images, reading them as grey-replicated RGB, transforms.

UNIP treats every image alike, infrared or RGB: one grey plane replicated to three
channels, then normalised (infrared statistics by default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from bench.backbones.backbone import INFRARED_MEAN, INFRARED_STD
from bench.data.imageio import read_image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def find_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursively, by suffix), sorted for a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p))
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    return paths


def spread_sample(paths: Sequence[Path], n: int | None) -> list[Path]:
    """``n`` paths evenly spaced over ``paths`` (all of them when ``n`` is None or larger)."""
    if n is None or n >= len(paths):
        return list(paths)
    if n <= 0:
        raise ValueError(f"number of images must be positive, got {n}")
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in idx]


def read_grey_rgb(path: str | Path) -> Image.Image:
    """The image as one grey plane replicated to RGB (a PIL image, 8 bits per channel).

    Decoding is the harness's (``bench.data.imageio``: 16-bit images keep their high byte,
    as mmseg's loader does), so analysis and distillation see what fine-tuning sees.
    """
    grey = read_image(path, "grey")[:, :, 0]
    return Image.fromarray(grey, "L").convert("RGB")


def to_normalised_tensor(
    mean: Sequence[float] = INFRARED_MEAN, std: Sequence[float] = INFRARED_STD
) -> T.Compose:
    return T.Compose(
        [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]
    )


def resize_centre_crop(img_size: int) -> T.Compose:
    """Shorter side to ``img_size``, then a centre square: the analysis view of an image."""
    return T.Compose(
        [
            T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(img_size),
        ]
    )


def pretrain_augmentation(
    img_size: int, scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True
) -> T.Compose:
    """RandomResizedCrop (bicubic) + horizontal flip: NMI-HAD's augmentation."""
    steps: list[Callable] = [
        T.RandomResizedCrop(
            img_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC, antialias=True
        )
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


class ImageListDataset(Dataset):
    """Images of a path list as normalised ``3 x H x W`` tensors.

    Each image is read as grey replicated to three channels, passed through ``transform``
    (PIL to PIL: resizing, cropping, flipping), then normalised with ``mean`` / ``std``
    (infrared statistics unless told otherwise).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: Callable | None = None,
        mean: Sequence[float] = INFRARED_MEAN,
        std: Sequence[float] = INFRARED_STD,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.normalise = to_normalised_tensor(mean, std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = read_grey_rgb(self.paths[index])
        if self.transform is not None:
            img = self.transform(img)
        return self.normalise(img)
