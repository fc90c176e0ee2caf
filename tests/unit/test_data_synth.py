"""Synthetic data: readable by the loader and the checker, thermal-looking, learnable.

Its speed is a benchmark: tests/benchmarks/test_bench_data_tools.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import DatasetError, build_dataset, get_dataset_info, list_datasets
from bench.data.check import check_dataset
from bench.data.synth import box_blur, synthesize
from bench.metrics import IoUAccumulator


@pytest.mark.parametrize("name", ["soda", "mfnet_thermal", "scut_seg", "ade20k", "nyuv2_depth",
                                  "sunrgbd_depth"])  # fmt: skip
def test_every_dataset_passes_the_full_check(tmp_path: Path, name: str) -> None:
    res = synthesize(name, tmp_path / name, train=4, test=2, size=40, seed=3)
    report = check_dataset(name, res.root)
    assert report.ok, report.format()
    assert report.warnings == []
    info = get_dataset_info(name)
    assert report.counts[info.train_split] == 4 and report.counts[info.default_eval_split] == 2


def test_all_registered_datasets_can_be_synthesized(tmp_path: Path) -> None:
    for name in list_datasets():
        synthesize(name, tmp_path / name, train=1, test=1, size=16)


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = synthesize("soda", tmp_path / "a", train=3, test=1, size=32, seed=5).root
    b = synthesize("soda", tmp_path / "b", train=3, test=1, size=32, seed=5).root
    c = synthesize("soda", tmp_path / "c", train=3, test=1, size=32, seed=6).root
    rel = "SegmentationClassPNG/train_00002.png"
    assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / rel).read_bytes() != (c / rel).read_bytes()


def test_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match=f"folder {tmp_path} is not empty"):
        synthesize("soda", tmp_path)


def class_mean(name: str, ds, wanted: str) -> float:
    """Mean grey level of pixels of class ``wanted`` over the split."""
    cls = ds.info.classes.index(wanted)
    vals = [img[:, :, 0][lab == cls] for img, lab in (ds.load(i) for i in range(len(ds)))]
    vals = np.concatenate(vals)
    assert vals.size > 0, f"no {wanted} pixels in synthetic {name}"
    return float(vals.mean())


def test_infrared_scenes_have_thermal_statistics(tmp_path: Path) -> None:
    root = synthesize("soda", tmp_path / "soda", train=24, test=1, size=64, seed=0).root
    ds = build_dataset("soda", root, "train")
    person, road = class_mean("soda", ds, "person"), class_mean("soda", ds, "road")
    building, sky = class_mean("soda", ds, "building"), class_mean("soda", ds, "sky")
    assert person > road + 40 and road > sky + 40 and building > sky + 40
    ground = [ds.info.classes.index(c) for c in ("road", "grass", "sidewalk")]
    sky_rows, ground_rows = [], []
    for i in range(len(ds)):
        _, lab = ds.load(i)
        h = lab.shape[0]
        sky_rows.append((lab == ds.info.classes.index("sky")).mean(1))  # sky share per row
        ground_rows.append(np.isin(lab, ground).mean(1))
    sky_rows, ground_rows = np.mean(sky_rows, 0), np.mean(ground_rows, 0)
    assert sky_rows[: h // 4].mean() > 0.5 > sky_rows[-h // 4 :].mean()  # sky on top
    assert ground_rows[-h // 4 :].mean() > 0.5 > ground_rows[: h // 4].mean()  # ground below
    img, _ = ds.load(0)
    grey = img[:, :, 0].astype(np.float32)
    # Low texture: neighbouring pixels differ little (not noise), yet the frame is not flat.
    assert np.abs(np.diff(grey, axis=1)).mean() < 8 and grey.std() > 20


def test_images_use_several_classes(tmp_path: Path) -> None:
    root = synthesize("scut_seg", tmp_path / "s", train=10, test=1, size=48, seed=1).root
    ds = build_dataset("scut_seg", root, "train")
    per_image = [len(set(np.unique(ds.load(i)[1])) - {255}) for i in range(len(ds))]
    assert np.mean(per_image) >= 3
    seen = set().union(*(set(np.unique(ds.load(i)[1])) for i in range(len(ds)))) - {255}
    assert len(seen) >= 7  # most of the ten classes appear somewhere


def pixel_features(ds) -> tuple[np.ndarray, np.ndarray]:
    """Grey level, two local means and the row: what a tiny model could learn from."""
    xs, ys = [], []
    for i in range(len(ds)):
        img, lab = ds.load(i)
        g = img[:, :, 0].astype(np.float32) / 255
        row = np.broadcast_to(np.linspace(0, 0.5, g.shape[0], dtype=np.float32)[:, None], g.shape)
        xs.append(np.stack([g, box_blur(g, 2), box_blur(g, 6), row], -1).reshape(-1, 4))
        ys.append(lab.reshape(-1))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


@pytest.mark.parametrize("name", ["soda", "scut_seg"])
def test_classes_are_learnable(tmp_path: Path, name: str) -> None:
    root = synthesize(name, tmp_path / name, train=16, test=8, size=64, seed=0).root
    info = get_dataset_info(name)
    xtr, ytr = pixel_features(build_dataset(name, root, "train"))
    xte, yte = pixel_features(build_dataset(name, root, info.default_eval_split))
    # Nearest class mean: no training loop, yet it must beat always-the-majority clearly.
    means = np.stack([
        xtr[ytr == c].mean(0) if (ytr == c).any() else np.full(4, 1e3)
        for c in range(info.num_classes)
    ])  # fmt: skip
    pred = ((xte[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    model = IoUAccumulator(info.num_classes)
    model.update(torch.from_numpy(pred), torch.from_numpy(yte))
    counts = np.bincount(yte[yte != 255], minlength=info.num_classes)
    chance = IoUAccumulator(info.num_classes)
    chance.update(torch.full((len(yte),), int(counts.argmax())), torch.from_numpy(yte))
    got, base = model.compute(), chance.compute()
    assert got["mIoU"] > 3 * base["mIoU"] and got["aAcc"] > base["aAcc"] + 5
