"""Loading every registered layout, and the errors a user sees for broken folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import DatasetError, build_dataset, dataset_fingerprint, get_dataset_info
from bench.data.imageio import read_image, read_label
from bench.data.synth import synthesize

ALL_LAYOUTS = [
    (name, lay.name)
    for name in ("soda", "mfnet_thermal", "scut_seg", "ade20k", "nyuv2_depth", "sunrgbd_depth")
    for lay in get_dataset_info(name).layouts
]


def make(tmp_path: Path, name: str, layout: str | None = None, **kw) -> Path:
    root = tmp_path / f"{name}-{layout or 'default'}"
    kw = {"train": 3, "test": 2, "size": 32, "seed": 1, **kw}
    synthesize(name, root, layout=layout, **kw)
    return root


@pytest.mark.parametrize(("name", "layout"), ALL_LAYOUTS)
def test_every_layout_loads_and_is_detected(tmp_path: Path, name: str, layout: str) -> None:
    root = make(tmp_path, name, layout)
    info = get_dataset_info(name)
    for split in info.splits:
        ds = build_dataset(name, root, split)  # layout detected, not given
        assert ds.layout.layout.name == layout and ds.layout.detected
        assert len(ds) == (3 if split == "train" else 4 if split == "val_test" else 2)
        item = ds[0]
        assert item["img"].shape == (3, 32, 43) and item["img"].dtype == torch.float32
        assert item["label"].shape == (32, 43) and item["label"].dtype == torch.int64
        values = set(item["label"].unique().tolist())
        assert values <= set(range(info.num_classes)) | {255}
        assert item["name"] == ds.names[0]


def test_reduce_zero_label_maps_zero_to_ignore_and_shifts_the_rest(tmp_path: Path) -> None:
    root = make(tmp_path, "ade20k")
    ds = build_dataset("ade20k", root, "train")
    raw = np.array(Image.open(ds.labels[0])).astype(np.int64)
    raw[0, :5] = 0  # make sure unlabelled pixels are present
    Image.fromarray(raw.astype(np.uint8)).save(ds.labels[0])
    got = ds[0]["label"].numpy()
    assert (got[raw == 0] == 255).all()
    assert (got[raw > 0] == raw[raw > 0] - 1).all()


def test_labels_without_reduction_are_kept(tmp_path: Path) -> None:
    root = make(tmp_path, "scut_seg")
    ds = build_dataset("scut_seg", root, "train")
    raw = np.array(Image.open(ds.labels[1]))
    assert (ds[1]["label"].numpy() == raw).all()


def test_mfnet_rgbt_uses_the_fourth_channel(tmp_path: Path) -> None:
    root = make(tmp_path, "mfnet_thermal", "rgbt")
    ds = build_dataset("mfnet_thermal", root, "test")
    rgba = np.array(Image.open(ds.images[0]))
    assert rgba.shape[2] == 4
    img = ds[0]["img"]
    restored = img[0] * 47.8976 + 96.9255  # the released configs' 0-255 statistics
    assert torch.allclose(restored, torch.from_numpy(rgba[:, :, 3]).float(), atol=1e-3)
    assert torch.equal(img[0], img[2])  # one thermal plane, replicated


def test_layout_in_the_archive_folder_is_found(tmp_path: Path) -> None:
    make(tmp_path / "download", "soda")
    (tmp_path / "download" / "soda-default").rename(tmp_path / "download" / "InfraredSemanticLabel")
    ds = build_dataset("soda", tmp_path / "download", "train")
    assert ds.root.name == "InfraredSemanticLabel"
    assert "in sub-folder InfraredSemanticLabel/" in ds.layout.describe()


def test_two_matching_layouts_need_a_choice(tmp_path: Path) -> None:
    root = make(tmp_path, "mfnet_thermal", "rgbt")
    (root / "thermal_imgs").mkdir()
    with pytest.raises(DatasetError) as err:
        build_dataset("mfnet_thermal", root, "train")
    msg = str(err.value)
    assert f"folder {root} matches several layouts" in msg
    assert "'rgbt'" in msg and "'thermal'" in msg and "--layout" in msg
    assert len(build_dataset("mfnet_thermal", root, "train", layout="rgbt")) == 3


def test_no_matching_layout_says_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError) as err:
        build_dataset("soda", tmp_path, "train")
    msg = str(err.value)
    assert f"folder {tmp_path} does not hold a known layout" in msg
    assert "JPEGImages/*.jpg + SegmentationClassPNG/*.png" in msg
    assert "train_infrared.txt" in msg and "Found: stuff/" in msg


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"dataset folder {tmp_path / 'nope'} does not exist"):
        build_dataset("soda", tmp_path / "nope", "train")
    (tmp_path / "soda.zip").write_bytes(b"PK")  # the archive handed instead of its folder
    with pytest.raises(DatasetError, match=r"soda\.zip is a file, not a folder"):
        build_dataset("soda", tmp_path / "soda.zip", "train")


def test_missing_split_file_and_unknown_split(tmp_path: Path) -> None:
    root = make(tmp_path, "soda")
    (root / "test_infrared.txt").unlink()
    with pytest.raises(DatasetError, match=r"split file .*test_infrared.txt does not exist"):
        build_dataset("soda", root, "test")
    with pytest.raises(DatasetError, match="soda has no split 'val'; its splits are train, test"):
        build_dataset("soda", root, "val")


def test_unpaired_files_are_named(tmp_path: Path) -> None:
    root = make(tmp_path, "soda")
    (root / "SegmentationClassPNG" / "train_00001.png").unlink()
    with pytest.raises(DatasetError) as err:
        build_dataset("soda", root, "train")
    assert "1 sample(s) have no label SegmentationClassPNG/<name>.png" in str(err.value)
    assert "train_00001" in str(err.value)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    root = make(tmp_path, "soda")
    bad = root / "JPEGImages" / "train_00002.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = build_dataset("soda", root, "train")
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        ds[2]


def test_out_of_range_label_values_are_named(tmp_path: Path) -> None:
    root = make(tmp_path, "scut_seg")
    ds = build_dataset("scut_seg", root, "train")
    lab = np.array(Image.open(ds.labels[0]))
    lab[:2, :2] = 30
    lab[3, 3] = 12
    Image.fromarray(lab).save(ds.labels[0])
    with pytest.raises(DatasetError) as err:
        ds[0]
    assert f"label {ds.labels[0]} holds values 12, 30" in str(err.value)
    assert "allowed: 0..9 (classes) or 255 (ignore)" in str(err.value)


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    root = make(tmp_path, "soda")
    ds = build_dataset("soda", root, "test")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(ds.labels[1])
    with pytest.raises(DatasetError) as err:
        ds[1]
    assert f"image {ds.images[1]} is 32x43 but its label {ds.labels[1]} is 10x12" in str(err.value)


def test_sixteen_bit_depth_keeps_the_high_byte(tmp_path: Path) -> None:
    depth = np.array([[0, 255, 256, 65535]], np.uint16)
    Image.fromarray(depth).save(tmp_path / "d.png")
    assert read_image(tmp_path / "d.png", "grey")[:, :, 0].tolist() == [[0, 0, 1, 255]]


def test_colour_coded_label_is_refused(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (128, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "l.png")
    with pytest.raises(DatasetError, match="is a colour image .*expected a single-channel"):
        read_label(tmp_path / "l.png")


def test_rgbt_layout_refuses_three_channel_images(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(DatasetError, match="has 3 channel.*expects 4-channel PNGs"):
        read_image(tmp_path / "x.png", "thermal_of_rgbt")


def test_fingerprint_follows_files_and_sizes(tmp_path: Path) -> None:
    root = make(tmp_path, "soda")
    fp = dataset_fingerprint("soda", root, "train")
    assert len(fp) == 64 and fp == dataset_fingerprint("soda", root, "train")
    assert fp != dataset_fingerprint("soda", root, "test")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert dataset_fingerprint("soda", copy, "train") == fp  # where it lives does not matter
    with open(copy / "JPEGImages" / "train_00000.jpg", "ab") as f:
        f.write(b"\0")
    assert dataset_fingerprint("soda", copy, "train") != fp


def test_grey_label_with_alpha_is_read_as_grey(tmp_path: Path) -> None:
    """An LA label once failed as 'a colour image': its alpha was compared to its grey."""
    grey = np.array([[0, 3], [20, 255]], np.uint8)
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), grey)
