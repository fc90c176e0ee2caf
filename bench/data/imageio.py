"""Reading images and label maps into uint8 arrays, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.data.spec import DatasetError, ImageMode

_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def _open(path: Path, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()  # decode now so a truncated file fails here, with its name
    except _ERRORS as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc
    return img


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    # OpenCV's colour loader (what mmseg uses) keeps the high byte of 16-bit images.
    return (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)


def read_image(path: str | Path, mode: ImageMode) -> np.ndarray:
    """``H x W x C`` uint8: C = 1 for ``grey`` and ``thermal_of_rgbt``, 3 for ``rgb``.

    Single-channel images stay single-channel here; they are replicated to three channels
    at normalisation, so resizing and distortion touch one plane instead of three.
    """
    path = Path(path)
    img = _open(path, "image")
    if mode == "thermal_of_rgbt":
        if len(img.getbands()) != 4:
            raise DatasetError(
                f"image {path} has {len(img.getbands())} channel(s) ({img.mode}); the RGB-T "
                "layout expects 4-channel PNGs whose 4th channel is thermal"
            )
        return np.asarray(img)[:, :, 3:4].copy()
    if mode == "rgb":
        arr = np.array(img.convert("RGB"))
        return arr
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = _sixteen_to_eight(np.asarray(img))
    elif img.mode == "F":
        arr = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
    else:
        arr = np.array(img if img.mode == "L" else img.convert("L"))
    return arr[:, :, None]


def read_label(path: str | Path) -> np.ndarray:
    """``H x W`` class-id map as stored (uint8, or int32 when values exceed 255)."""
    path = Path(path)
    img = _open(path, "label")
    if img.mode in ("P", "L", "1"):
        return np.array(img, dtype=np.uint8)
    arr = np.asarray(img)
    if arr.ndim == 3:
        # Alpha is not a colour: a grey+alpha (LA) label is a grey label.
        colour = arr[:, :, :1] if img.mode in ("LA", "La") else arr[:, :, :3]
        if not (colour == arr[:, :, :1]).all():
            raise DatasetError(
                f"label {path} is a colour image ({img.mode}); expected a single-channel "
                "or palette PNG whose pixel values are class ids"
            )
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8:
        fits = arr.min() >= 0 and arr.max() <= 255
        arr = arr.astype(np.uint8) if fits else arr.astype(np.int32)
    return arr


def image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except _ERRORS as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc
    return h, w
