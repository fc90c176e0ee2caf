"""``check_dataset`` and ``quick_check``: each problem reported the way a user reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import DatasetError
from bench.data.check import check_dataset, quick_check
from bench.data.synth import synthesize


@pytest.fixture
def soda(tmp_path: Path) -> Path:
    root = tmp_path / "soda"
    synthesize("soda", root, train=6, test=3, size=32, seed=2)
    return root


def test_clean_copy_passes(soda: Path) -> None:
    report = check_dataset("soda", soda)
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.counts == {"train": 6, "test": 3}
    assert report.files_read == 9 and report.layout == "voc"
    text = report.format()
    assert "layout 'voc' (detected from the folder structure)" in text
    assert "train" in text and "1168" in text and "result: OK" in text


def test_unpaired_files(soda: Path) -> None:
    (soda / "JPEGImages" / "train_00003.jpg").unlink()
    (soda / "SegmentationClassPNG" / "test_00000.png").unlink()
    report = check_dataset("soda", soda)
    assert not report.ok
    text = "\n".join(report.errors)
    assert "soda train: 1 sample(s) have no image JPEGImages/<name>.jpg" in text
    assert "train_00003" in text
    assert "soda test: 1 sample(s) have no label SegmentationClassPNG/<name>.png" in text
    assert report.counts == {"train": 5, "test": 2}
    # Their partners are listed in a split file: unpaired, not "in no split file".
    assert report.warnings == []


def test_renamed_image_is_unpaired_and_its_new_name_stray(soda: Path) -> None:
    images = soda / "JPEGImages"
    (images / "train_00001.jpg").rename(images / "train_0001.jpg")
    report = check_dataset("soda", soda)
    assert report.errors == [
        f"soda train: 1 sample(s) have no image JPEGImages/<name>.jpg under {soda}: train_00001"
    ]
    assert report.warnings == ["1 image(s) in JPEGImages/ are in no split file: train_0001.jpg"]


def test_unreadable_files(soda: Path) -> None:
    (soda / "JPEGImages" / "train_00001.jpg").write_bytes(b"\xff\xd8garbage")
    report = check_dataset("soda", soda)
    assert len(report.errors) == 1
    assert report.errors[0].startswith("1 file pair(s) cannot be read:")
    assert "train_00001.jpg" in report.errors[0]


def test_out_of_range_values_list_files_and_values(soda: Path) -> None:
    for i, value in ((0, 21), (4, 40)):
        path = soda / "SegmentationClassPNG" / f"train_{i:05d}.png"
        lab = np.array(Image.open(path))
        lab[0, 0] = value
        Image.fromarray(lab).save(path)
    report = check_dataset("soda", soda)
    (err,) = report.errors
    assert err.startswith("2 label file(s) hold values outside 0..20 (classes) or 255 (ignore):")
    assert "SegmentationClassPNG/train_00000.png: 21" in err
    assert "SegmentationClassPNG/train_00004.png: 40" in err


def test_size_mismatch(soda: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(
        soda / "SegmentationClassPNG" / "test_00002.png"
    )
    (err,) = check_dataset("soda", soda).errors
    assert "1 image/label pair(s) differ in size" in err
    assert (
        "JPEGImages/test_00002.jpg is 32x43, its label SegmentationClassPNG/test_00002.png is 8x8"
        in err
    )


def test_missing_root_and_wrong_folder(tmp_path: Path, soda: Path) -> None:
    report = check_dataset("soda", tmp_path / "absent")
    assert not report.ok and "does not exist" in report.errors[0]
    report = check_dataset("scut_seg", soda)
    assert not report.ok and "does not hold a known layout" in report.errors[0]
    assert "result: FAILED (1 error(s), 0 warning(s))" in report.format()


def test_required_split_missing_is_an_error_optional_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "mfnet"
    synthesize("mfnet_thermal", root, train=3, test=2, size=32, layout="thermal")
    (root / "val.txt").unlink()
    report = check_dataset("mfnet_thermal", root)
    assert report.ok and any("val.txt does not exist" in w for w in report.warnings)
    (root / "test.txt").unlink()
    report = check_dataset("mfnet_thermal", root)
    assert not report.ok and any("test.txt does not exist" in e for e in report.errors)


def test_empty_split_and_duplicates(soda: Path) -> None:
    (soda / "test_infrared.txt").write_text("\n")
    assert "soda test: no samples in" in "\n".join(check_dataset("soda", soda).errors)
    (soda / "test_infrared.txt").write_text("test_00000\ntest_00000\ntest_00001\n")
    report = check_dataset("soda", soda)
    assert report.ok and report.counts["test"] == 2
    assert any("lists test_00000 more than once" in w for w in report.warnings)
    assert any("1 image(s) in JPEGImages/ are in no split file: test_00002.jpg" in w
               for w in report.warnings)  # fmt: skip


def test_quick_check_raises_with_everything_wrong(soda: Path) -> None:
    (soda / "SegmentationClassPNG" / "train_00002.png").unlink()
    path = soda / "SegmentationClassPNG" / "train_00005.png"  # last one: always sampled
    lab = np.array(Image.open(path))
    lab[1, 1] = 99
    Image.fromarray(lab).save(path)
    with pytest.raises(DatasetError) as err:
        quick_check("soda", soda, "train")
    msg = str(err.value)
    assert msg.startswith(f"dataset soda at {soda} is not usable:")
    assert "have no label" in msg and "train_00002" in msg
    assert "train_00005.png: 99" in msg


def test_quick_check_reads_a_sample(tmp_path: Path) -> None:
    # Its speed is a benchmark: tests/benchmarks/test_bench_data_tools.py.
    root = tmp_path / "big"
    synthesize("scut_seg", root, train=60, test=2, size=24)
    report = quick_check("scut_seg", root, "train")
    assert report.ok and report.counts == {"train": 60} and report.files_read == 4
