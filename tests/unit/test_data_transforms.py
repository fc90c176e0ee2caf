"""The protocol's transforms: mmseg geometry, alignment of image and label, determinism."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from bench.data import get_dataset_info
from bench.data import transforms as T

SODA = get_dataset_info("soda")
ADE = get_dataset_info("ade20k")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def scene(h: int = 60, w: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A label of four quadrant classes and an image whose grey value encodes the label."""
    label = np.zeros((h, w), np.uint8)
    label[: h // 2, w // 2 :] = 1
    label[h // 2 :, : w // 2] = 2
    label[h // 2 :, w // 2 :] = 3
    return (label * 60 + 10)[:, :, None].copy(), label


def test_keep_ratio_rescale_follows_mmcv() -> None:
    assert T.rescale_size(480, 640, (2048, 512)) == (512, 683)
    assert T.rescale_size(480, 640, (1024, 256)) == (256, 341)
    # The long side caps it when the image is very wide.
    assert T.rescale_size(100, 1000, (2048, 512)) == (205, 2048)


def test_random_resize_stays_in_the_ratio_range() -> None:
    img, label = scene(48, 64)
    t = T.RandomResize((128, 32), (0.5, 2.0))
    heights = set()
    for s in range(40):
        out, lab = t(img, label, rng(s))
        assert out.shape[:2] == lab.shape and out.dtype == np.uint8
        assert 16 <= out.shape[0] <= 64
        heights.add(out.shape[0])
    assert len(heights) > 10


def test_crop_flip_keep_image_and_label_aligned() -> None:
    img, label = scene()
    pipe = T.Compose(
        [T.RandomResize((80, 60), (1.0, 1.0)), T.RandomCrop(32, 0.75), T.RandomFlip(0.5)]
    )
    flips = 0
    for s in range(20):
        out, lab = pipe(img, label, rng(s))
        assert out.shape[:2] == lab.shape == (32, 32)
        assert (out[:, :, 0] == lab * 60 + 10).all()
        flips += int(lab[0, 0] == 1 or lab[-1, 0] == 3)  # right half now on the left
    assert 0 < flips < 20


def test_cat_max_ratio_avoids_crops_of_one_class() -> None:
    label = np.zeros((100, 100), np.uint8)
    label[55:, 55:] = 1  # a second class in one corner
    img = label[:, :, None].copy()

    def balanced_share(ratio: float) -> float:
        crop = T.RandomCrop(40, ratio)
        hits = 0
        for s in range(100):
            _, lab = crop(img, label, rng(s))
            counts = np.bincount(lab.ravel(), minlength=2)
            hits += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
        return hits / 100

    assert balanced_share(1.0) < 0.4  # plain random crops are mostly one class
    assert balanced_share(0.75) > 0.8  # up to ten retries find the corner


def test_cat_max_ratio_ignores_the_ignore_label() -> None:
    label = np.full((50, 50), 255, np.uint8)
    label[:, :25] = 0
    crop = T.RandomCrop(50, 0.75)
    assert crop._balanced(label) is False  # ignore + one class is still one class
    label[:25, :25] = 1  # now two classes of 625 pixels each; 1,250 ignored
    assert crop._balanced(label) is True


def test_pad_to_crop_size_with_zero_and_ignore() -> None:
    img, label = scene(20, 30)
    tf = T.train_transform(SODA, crop_size=48, scale=(30, 20), ratio_range=(1.0, 1.0))
    out, lab = tf(img, label, rng(3))
    assert out.shape == (3, 48, 48) and lab.shape == (48, 48)
    assert (out[:, 20:, :] == 0).all() and (out[:, :, 30:] == 0).all()
    assert (lab[20:, :] == 255).all() and (lab[:, 30:] == 255).all()
    assert lab.dtype == torch.int64 and set(lab[:20, :30].unique().tolist()) <= {0, 1, 2, 3}


def test_normalise_replicates_grey_and_uses_the_statistics() -> None:
    img = np.array([[[0], [255]]], np.uint8)
    out, lab = T.Normalize(SODA.mean, SODA.std)(img, np.zeros((1, 2), np.uint8), rng())
    assert out.shape == (3, 1, 2)
    # mmseg's Normalize with the released config's 0-255 statistics
    expected = torch.tensor([(0 - 96.9255) / 47.8976, (255 - 96.9255) / 47.8976])
    for c in range(3):
        assert torch.allclose(out[c, 0], expected, atol=1e-5)


def test_single_channel_distortion_changes_only_brightness_and_contrast() -> None:
    img = np.tile(np.arange(0, 250, 10, dtype=np.uint8)[None, :, None], (4, 1, 1))
    pmd = T.PhotoMetricDistortion(colour=False)
    changed = 0
    for s in range(10):
        out, _ = pmd(img, None, rng(s))
        assert out.shape == img.shape and out.dtype == np.uint8
        # An affine change of the grey levels keeps their order.
        assert (np.diff(out[0, :, 0].astype(int)) >= 0).all()
        changed += int(not np.array_equal(out, img))
    assert changed >= 5


def test_hsv_round_trip_matches_colorsys() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (50, 3)).astype(np.uint8)
    hsv = T.rgb_to_hsv(pixels[None])[0]
    for (r, g, b), (h, s, v) in zip(pixels, hsv, strict=True):
        eh, es, ev = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert v == pytest.approx(ev * 255, abs=1e-3)
        assert s == pytest.approx(es * 255, abs=1e-3)
        if es > 0:  # hue is undefined for greys
            assert min(abs(h - eh * 180), 180 - abs(h - eh * 180)) < 1e-3
    back = T.hsv_to_rgb(hsv[None])[0]
    assert np.abs(back.astype(int) - pixels.astype(int)).max() <= 1


def test_colour_distortion_can_shift_hue() -> None:
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = 200  # pure red
    pmd = T.PhotoMetricDistortion(colour=True, brightness_delta=0, contrast_range=(1, 1))
    outs = [pmd(img, None, rng(s))[0] for s in range(20)]
    assert any(o[0, 0, 1] > 0 or o[0, 0, 2] > 0 for o in outs)  # some hue moved off red


def test_same_seed_same_sample_different_epoch_differs() -> None:
    img, label = scene(120, 160)
    tf = T.train_transform(ADE, crop_size=64, scale=(160, 120))
    img3 = np.repeat(img, 3, axis=2)
    a = tf(img3, label, np.random.default_rng([7, 0, 5]))
    b = tf(img3, label, np.random.default_rng([7, 0, 5]))
    c = tf(img3, label, np.random.default_rng([7, 1, 5]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_test_transform_resizes_the_image_only() -> None:
    img, label = scene(48, 64)
    out, lab = T.test_transform(SODA, scale=(256, 64))(img, label, rng())
    assert out.shape == (3, 64, 85)
    assert lab.shape == (48, 64) and torch.equal(lab, torch.from_numpy(label).long())


def test_nearest_label_resize_uses_floor_indexing() -> None:
    label = np.arange(4, dtype=np.uint8)[None, :].repeat(2, 0)
    assert T.resize_label(label, 2, 8)[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert T.resize_label(label, 2, 2)[0].tolist() == [0, 2]
