"""The protocol's data pipeline with mmseg semantics, driven by an explicit per-sample RNG.

Every random draw comes from the Generator passed in, which the loader seeds from (base
seed, epoch, sample index): results do not depend on workers or on what loaded before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.spec import DatasetInfo

Array = np.ndarray
Transform = Callable[[Array, Array, np.random.Generator], tuple]


class Compose:
    """Apply transforms in order; each takes and returns ``(img, label)``."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img, label, rng: np.random.Generator) -> tuple:
        for t in self.transforms:
            img, label = t(img, label, rng)
        return img, label

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rule: fit the long side to max(scale), the short to min(scale)."""
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def resize_image(img: Array, h: int, w: int) -> Array:
    """Bilinear (half-pixel centres, no antialias, like cv2.INTER_LINEAR), uint8 in and out."""
    if img.shape[:2] == (h, w):
        return img
    # An H x W x C array viewed as 1 x C x H x W is channels-last: torch's fast uint8 path.
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def resize_label(label: Array, h: int, w: int) -> Array:
    """Nearest neighbour with cv2.INTER_NEAREST's rule: source = floor(dest * src/dest)."""
    sh, sw = label.shape
    if (sh, sw) == (h, w):
        return label
    rows = np.minimum((np.arange(h) * (sh / h)).astype(np.int64), sh - 1)
    cols = np.minimum((np.arange(w) * (sw / w)).astype(np.int64), sw - 1)
    return label[rows[:, None], cols[None, :]]


class RandomResize:
    """Scale = ``scale`` x a ratio drawn from ``ratio_range``; keep the aspect ratio."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]) -> None:
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def __call__(self, img: Array, label: Array, rng: np.random.Generator) -> tuple:
        lo, hi = self.ratio_range
        r = rng.random() * (hi - lo) + lo
        target = (int(self.scale[0] * r), int(self.scale[1] * r))
        h, w = rescale_size(*img.shape[:2], target)
        return resize_image(img, h, w), resize_label(label, h, w)

    def __repr__(self) -> str:
        return f"RandomResize(scale={self.scale}, ratio_range={self.ratio_range})"


class Resize:
    """Deterministic keep-ratio resize; the label is left alone unless ``resize_label``."""

    def __init__(self, scale: tuple[int, int], resize_label: bool = False) -> None:
        self.scale = tuple(scale)
        self.resize_label = resize_label

    def __call__(self, img: Array, label: Array, rng: np.random.Generator) -> tuple:
        h, w = rescale_size(*img.shape[:2], self.scale)
        if self.resize_label:
            label = resize_label(label, h, w)
        return resize_image(img, h, w), label

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale}, resize_label={self.resize_label})"


class RandomCrop:
    """mmseg RandomCrop: redraw (up to ``max_tries`` times) while one class dominates."""

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        cat_max_ratio: float = 1.0,
        ignore_index: int = 255,
        max_tries: int = 10,
    ) -> None:
        self.crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def _bbox(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        top = int(rng.integers(0, max(h - self.crop[0], 0) + 1))
        left = int(rng.integers(0, max(w - self.crop[1], 0) + 1))
        return top, left

    def _balanced(self, label: Array) -> bool:
        counts = np.bincount(label.ravel(), minlength=256)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and bool(counts.max() / counts.sum() < self.cat_max_ratio)

    def __call__(self, img: Array, label: Array, rng: np.random.Generator) -> tuple:
        h, w = label.shape
        ch, cw = self.crop
        top, left = self._bbox(h, w, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                if self._balanced(label[top : top + ch, left : left + cw]):
                    break
                top, left = self._bbox(h, w, rng)
        return img[top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]

    def __repr__(self) -> str:
        return f"RandomCrop(crop={self.crop}, cat_max_ratio={self.cat_max_ratio})"


class RandomFlip:
    """Horizontal flip with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(self, img: Array, label: Array, rng: np.random.Generator) -> tuple:
        if rng.random() < self.prob:
            return img[:, ::-1], label[:, ::-1]
        return img, label

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


def _convert(x: Array, alpha: float = 1.0, beta: float = 0.0) -> Array:
    # mmseg's convert: float affine, clip, truncate back to uint8.
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def rgb_to_hsv(rgb: Array) -> Array:
    """uint8 RGB -> float HSV in OpenCV's 8-bit units (H in [0, 180), S and V in [0, 255])."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    c = v - x.min(-1)
    safe = np.where(c > 0, c, 1.0)
    h = np.where(
        v == r, ((g - b) / safe) % 6, np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    h = np.where(c > 0, h * 30.0, 0.0)
    s = np.where(v > 0, c / np.where(v > 0, v, 1.0) * 255.0, 0.0)
    return np.stack([h, s, v], -1)


def hsv_to_rgb(hsv: Array) -> Array:
    """Inverse of :func:`rgb_to_hsv`, rounded to uint8."""
    h6 = (hsv[..., 0] % 180.0) / 30.0
    v = hsv[..., 2]
    c = v * hsv[..., 1] / 255.0
    x = c * (1 - np.abs(h6 % 2 - 1))
    m = v - c
    z = np.zeros_like(c)
    sector = np.floor(h6).astype(np.int64) % 6
    choices = [(c, x, z), (x, c, z), (z, c, x), (z, x, c), (x, z, c), (c, z, x)]
    out = np.zeros(hsv.shape, np.float32)
    for k, (r, g, b) in enumerate(choices):
        sel = sector == k
        out[sel] = np.stack([r[sel], g[sel], b[sel]], -1)
    return np.clip(np.rint(out + m[..., None]), 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """mmseg PhotoMetricDistortion; ``colour=False`` keeps brightness and contrast only.

    Single-channel infrared or depth has no saturation or hue to change. For colour images
    saturation and hue share one HSV round trip (mmseg makes one per step).
    """

    def __init__(
        self,
        colour: bool,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.colour = colour
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def _contrast(self, img: Array, rng: np.random.Generator) -> Array:
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def _colour(self, img: Array, rng: np.random.Generator) -> Array:
        sat = rng.uniform(*self.saturation_range) if rng.integers(2) else None
        hue = int(rng.integers(-self.hue_delta, self.hue_delta)) if rng.integers(2) else None
        if sat is None and hue is None:
            return img
        hsv = rgb_to_hsv(img)
        if sat is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue) % 180
        return hsv_to_rgb(hsv)

    def __call__(self, img: Array, label: Array, rng: np.random.Generator) -> tuple:
        if rng.integers(2):
            d = self.brightness_delta
            img = _convert(img, beta=rng.uniform(-d, d))
        contrast_first = bool(rng.integers(2))
        if contrast_first:
            img = self._contrast(img, rng)
        if self.colour:
            img = self._colour(img, rng)
        if not contrast_first:
            img = self._contrast(img, rng)
        return img, label

    def __repr__(self) -> str:
        return f"PhotoMetricDistortion(colour={self.colour})"


class Normalize:
    """uint8 ``H x W x C`` -> float32 ``3 x H x W`` tensor; label -> int64 tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        # Statistics are in 0-1 units; pixels are 0-255.
        self.mean = torch.tensor([m * 255.0 for m in mean], dtype=torch.float32).view(3, 1, 1)
        self.inv_std = 1.0 / torch.tensor([s * 255.0 for s in std], dtype=torch.float32).view(
            3, 1, 1
        )

    def __call__(self, img: Array, label: Array, rng: np.random.Generator) -> tuple:
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        out = (t.to(torch.float32) - self.mean) * self.inv_std
        return out.contiguous(), torch.from_numpy(np.ascontiguousarray(label)).to(torch.int64)

    def __repr__(self) -> str:
        return "Normalize()"


class Pad:
    """Pad bottom/right to ``size`` (after Normalize): image with ``pad_val``, label with 255."""

    def __init__(self, size: int | tuple[int, int], pad_val: float = 0.0, seg_pad_val: int = 255):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def __call__(self, img: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> tuple:
        ph = max(self.size[0] - img.shape[-2], 0)
        pw = max(self.size[1] - img.shape[-1], 0)
        if ph or pw:
            img = F.pad(img, (0, pw, 0, ph), value=self.pad_val)
            label = F.pad(label, (0, pw, 0, ph), value=self.seg_pad_val)
        return img, label

    def __repr__(self) -> str:
        return f"Pad(size={self.size})"


def train_transform(
    info: DatasetInfo,
    crop_size: int | None = None,
    scale: tuple[int, int] | None = None,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
) -> Compose:
    """Resize x ratio -> crop (cat_max_ratio) -> flip -> photometric -> normalise -> pad.

    Crop and scale default to the dataset's own (512 and (2048, 512) for infrared sets).
    """
    crop = crop_size or info.crop_size
    return Compose(
        [
            RandomResize(scale or info.scale, ratio_range),
            RandomCrop(crop, cat_max_ratio, info.ignore_index),
            RandomFlip(0.5),
            PhotoMetricDistortion(colour=info.modality == "rgb"),
            Normalize(info.mean, info.std),
            Pad(crop, 0.0, info.ignore_index),
        ]
    )


def test_transform(info: DatasetInfo, scale: tuple[int, int] | None = None) -> Compose:
    """Keep-ratio resize of the image only, then normalise; like mmseg, the label keeps its
    size, so predictions are resized to ``label.shape`` and scored at full resolution."""
    return Compose([Resize(scale or info.scale), Normalize(info.mean, info.std)])


def normalise_only(info: DatasetInfo) -> Compose:
    """No geometry change: what a dataset built without a transform returns."""
    return Compose([Normalize(info.mean, info.std)])


# The name starts with "test": tell pytest it is not a test when a test module imports it.
test_transform.__test__ = False  # type: ignore[attr-defined]
