"""``data prepare`` on small archives and folders built in the real releases' structure.

The release trees follow what the publishers ship (docs/datasets.md gives the sources):
SODA's Drive download ``SODA/InfraredSemanticLabel/{JPEGImages, SegmentationClassPNG,
SegmentationClassOne, train_infrared.txt, test_infrared.txt}`` beside
``SODA/TIR_leftImg8bit``; MFNet's ``ir_seg_dataset/{images (RGB-T PNGs), labels, visual,
train.txt, val.txt, test.txt}``; SCUT-Seg's ``images/``, ``gt_instance/<stem>_labelIds.png``
holding the README's ground-truth values, and ``scut_train.txt``/``scut_val.txt`` listing
``image label`` pairs; ``ADEChallengeData2016/{images,annotations}/{training,validation}``.
Sample content comes from ``data synth`` (our layouts), rearranged here into the release.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bench.data.releases as releases
from bench.cli import main
from bench.data import DatasetError
from bench.data.archive import extract
from bench.data.prepare import STAGING, prepare_dataset
from bench.data.synth import synthesize

# The SCUT-Seg README's table: class -> value stored in *_labelIds.png.
SCUT_README_VALUES = {
    "background": 0, "road": 7, "person": 24, "rider": 25, "car": 26, "truck": 27,
    "fence": 13, "tree": 21, "bus": 28, "pole": 17,
}  # fmt: skip


def zip_tree(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(folder).as_posix())
    return archive


def tar_tree(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(folder.iterdir()):
            tf.add(p, p.name)
    return archive


def soda_release(tmp_path: Path) -> Path:
    """``SODA/InfraredSemanticLabel`` + the synthetic Cityscapes part, as Drive zips it."""
    top = tmp_path / "soda-dl"
    isl = top / "SODA" / "InfraredSemanticLabel"
    synthesize("soda", isl, train=4, test=3, size=32, seed=1)
    (isl / "SegmentationClassOne").mkdir()  # another label folder the release carries
    for p in (isl / "SegmentationClassPNG").iterdir():
        shutil.copy(p, isl / "SegmentationClassOne" / p.name)
    (top / "SODA" / "TIR_leftImg8bit" / "train").mkdir(parents=True)
    (top / "SODA" / "TIR_leftImg8bit" / "train" / "x.png").write_bytes(b"not ours")
    return top


def mfnet_release(tmp_path: Path) -> Path:
    """``ir_seg_dataset`` with 4-channel RGB-T images and no val_test.txt."""
    top = tmp_path / "mfnet-dl"
    ir = top / "ir_seg_dataset"
    synthesize("mfnet_thermal", ir, layout="rgbt", train=4, test=2, size=32, seed=2)
    (ir / "val_test.txt").unlink()
    (ir / "visual").mkdir()  # colour renderings of the labels, not read
    return top


def scut_release(tmp_path: Path) -> tuple[Path, Path]:
    """The SCUT-Seg release, and the synthetic copy (class ids 0-9) it was made from."""
    truth = tmp_path / "scut-truth"
    synthesize("scut_seg", truth, layout="unip", train=4, test=3, size=32, seed=3)
    top = tmp_path / "scut-dl"
    classes = releases_classes()
    lut = np.array([SCUT_README_VALUES[c] for c in classes] + [0] * (256 - len(classes)),
                   np.uint8)
    lut[255] = 255
    for split, listing in (("train", "scut_train.txt"), ("val", "scut_val.txt")):
        lines = []
        for stem in (truth / f"{split}.txt").read_text().split():
            sub = "day" if stem.endswith(("0", "2")) else "night"  # nested folders
            (top / "images" / sub).mkdir(parents=True, exist_ok=True)
            (top / "gt_instance" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(truth / "images" / f"{stem}.jpg", top / "images" / sub / f"{stem}.jpg")
            ids = np.array(Image.open(truth / "labels" / f"{stem}.png"))
            Image.fromarray(lut[ids]).save(top / "gt_instance" / sub / f"{stem}_labelIds.png")
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
                top / "gt_instance" / sub / f"{stem}.jpg"  # a colour rendering, not read
            )
            lines.append(f"images/{sub}/{stem}.jpg gt_instance/{sub}/{stem}_labelIds.png")
        (top / listing).write_text("\n".join(lines) + "\n")
    return top, truth


def releases_classes() -> tuple[str, ...]:
    from bench.data import get_dataset_info

    return get_dataset_info("scut_seg").classes


# ------------------------------------------------------------------ read as released
def test_soda_zip_is_extracted_linked_and_checked(tmp_path: Path) -> None:
    archive = zip_tree(soda_release(tmp_path), tmp_path / "SODA-20211127T202136Z-001.zip")
    root = tmp_path / "data" / "SODA"
    res = prepare_dataset("soda", [archive], root)
    assert res.report is not None and res.report.ok, res.report.format()
    assert res.report.counts == {"train": 4, "test": 3}
    assert res.layout == "voc" and res.folder == root / STAGING / "SODA" / "InfraredSemanticLabel"
    assert sorted(res.linked) == ["JPEGImages", "SegmentationClassPNG", "test_infrared.txt",
                                  "train_infrared.txt"]
    assert (root / "JPEGImages").is_symlink()
    again = prepare_dataset("soda", [archive], root)
    assert (again.extracted, again.written, again.linked) == (0, 0, [])
    assert "nothing left to do" in again.summary()


def test_soda_extracted_folder_is_linked(tmp_path: Path) -> None:
    top = soda_release(tmp_path)
    res = prepare_dataset("soda", [top], tmp_path / "root", full_check=False)
    assert res.report.ok and res.folder == top / "SODA" / "InfraredSemanticLabel"


def test_ade20k_zip(tmp_path: Path) -> None:
    src = tmp_path / "ade-dl"
    synthesize("ade20k", src / "ADEChallengeData2016", train=3, test=2, size=32)
    (src / "ADEChallengeData2016" / "objectInfo150.txt").write_text("Idx\tRatio\tName\n")
    archive = zip_tree(src, tmp_path / "ADEChallengeData2016.zip")
    res = prepare_dataset("ade20k", [archive], tmp_path / "ADE20K")
    assert res.report.ok and res.report.counts == {"train": 3, "val": 2}
    assert sorted(res.linked) == ["annotations", "images"]


def test_depth_copy_in_unip_layout_is_linked(tmp_path: Path) -> None:
    synthesize("nyuv2_depth", tmp_path / "dl" / "NYUDepthv2", train=3, test=2, size=32)
    res = prepare_dataset("nyuv2_depth", [tmp_path / "dl"], tmp_path / "NYUv2")
    assert res.report.ok and res.layout == "unip"


def test_official_nyu_mat_is_named_with_the_reason(tmp_path: Path) -> None:
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    mat.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(DatasetError) as err:
        prepare_dataset("nyuv2_depth", [mat], tmp_path / "NYUv2")
    msg = str(err.value)
    assert "\n" not in msg and str(mat) in msg and "neither a folder nor a zip/tar" in msg
    assert "does not publish" in msg and "docs/datasets.md" in msg


# ------------------------------------------------------------------ MFNet: conversion
def test_mfnet_tar_becomes_the_thermal_copy(tmp_path: Path) -> None:
    top = mfnet_release(tmp_path)
    archive = tar_tree(top, tmp_path / "ir_seg_dataset.tar.gz")
    root = tmp_path / "MFNet"
    res = prepare_dataset("mfnet_thermal", [archive], root)
    assert res.report.ok, res.report.format()
    assert res.layout == "thermal" and res.report.layout == "thermal"
    ir = top / "ir_seg_dataset"
    names = (ir / "train.txt").read_text().split()
    for n in names[:2]:
        rgbt = np.asarray(Image.open(ir / "images" / f"{n}.png"))
        thermal = Image.open(root / "thermal_imgs" / f"{n}.png")
        assert thermal.mode == "L"
        assert np.array_equal(np.asarray(thermal), rgbt[:, :, 3])
        assert (root / "labels" / f"{n}.png").read_bytes() == (
            ir / "labels" / f"{n}.png").read_bytes()
    val, test = (ir / "val.txt").read_text().split(), (ir / "test.txt").read_text().split()
    assert (root / "val_test.txt").read_text().split() == val + test
    assert res.report.counts == {"train": 4, "val": 2, "test": 2, "val_test": 4}
    # 8 distinct images, each a thermal PNG and a label.
    assert res.written == 16


def test_interrupted_conversion_resumes_without_redoing(tmp_path: Path, monkeypatch) -> None:
    top = mfnet_release(tmp_path)
    root = tmp_path / "MFNet"
    real_save = releases._save_png
    calls = []

    def crash_after_three(arr, target):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as Ctrl-C or a killed job would stop it
        calls.append(target)
        real_save(arr, target)

    monkeypatch.setattr(releases, "_save_png", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("mfnet_thermal", [top], root)
    monkeypatch.setattr(releases, "_save_png", real_save)
    done = {p: p.stat().st_mtime_ns for p in calls}
    assert not (root / "train.txt").exists()  # split files come last
    res = prepare_dataset("mfnet_thermal", [top], root)
    assert res.report.ok
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # not rewritten
    assert res.written == 16 - 3 - 3  # 3 thermal images, each with its label, were done


def test_interrupted_extraction_resumes(tmp_path: Path) -> None:
    archive = zip_tree(soda_release(tmp_path), tmp_path / "soda.zip")
    dest = tmp_path / "x"
    total = extract(archive, dest)
    files = sorted(p for p in dest.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert total == len(files)
    # An interruption: the completion record never written, one file cut off mid-way
    # (it never got its final name), one never started.
    next(dest.glob(".extracted-*")).unlink()
    files[0].rename(files[0].with_name(f".{files[0].name}.part"))
    files[1].unlink()
    kept = files[2].stat().st_mtime_ns
    assert extract(archive, dest) == 2
    assert files[2].stat().st_mtime_ns == kept
    assert extract(archive, dest) == 0


def test_release_inside_root_is_refused_for_a_conversion(tmp_path: Path) -> None:
    top = mfnet_release(tmp_path)
    with pytest.raises(DatasetError, match="is inside --root"):
        prepare_dataset("mfnet_thermal", [top], top)


# ------------------------------------------------------------------ SCUT-Seg: class ids
def test_scut_release_ids_become_class_ids(tmp_path: Path) -> None:
    top, truth = scut_release(tmp_path)
    archive = zip_tree(top, tmp_path / "SCUT-Seg.zip")
    root = tmp_path / "SCUT-Seg"
    res = prepare_dataset("scut_seg", [archive], root)
    assert res.report.ok, res.report.format()
    assert res.report.counts == {"train": 4, "val": 3}
    for split in ("train", "val"):
        assert (root / f"{split}.txt").read_text() == (truth / f"{split}.txt").read_text()
        for stem in (truth / f"{split}.txt").read_text().split():
            got = np.array(Image.open(root / "labels" / f"{stem}.png"))
            want = np.array(Image.open(truth / "labels" / f"{stem}.png"))
            assert np.array_equal(got, want)
            assert (root / "images" / f"{stem}.jpg").read_bytes() == (
                truth / "images" / f"{stem}.jpg").read_bytes()


def test_scut_label_value_outside_the_table_is_named(tmp_path: Path) -> None:
    top, _ = scut_release(tmp_path)
    label = sorted((top / "gt_instance").rglob("*_labelIds.png"))[0]
    arr = np.array(Image.open(label))
    arr[0, 0] = 3  # no SCUT-Seg class is stored as 3
    Image.fromarray(arr).save(label)
    with pytest.raises(DatasetError) as err:
        prepare_dataset("scut_seg", [top], tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and f"{label.name} [3]" in msg and "0, 7, 24, 25" in msg


# ------------------------------------------------------------------ not the release
def test_another_datasets_archive_is_one_line_naming_it(tmp_path: Path) -> None:
    archive = zip_tree(soda_release(tmp_path), tmp_path / "soda.zip")
    with pytest.raises(DatasetError) as err:
        prepare_dataset("mfnet_thermal", [archive], tmp_path / "MFNet")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{archive} is not a MFNet-T")
    assert "images/ + labels/ + train.txt + val.txt + test.txt" in msg and "Found: SODA/" in msg
    assert not (tmp_path / "MFNet").exists()  # nothing extracted


def test_truncated_archive_is_named(tmp_path: Path) -> None:
    archive = tar_tree(mfnet_release(tmp_path), tmp_path / "ir.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetError, match=rf"cannot read archive {archive}: .*truncated"):
        prepare_dataset("mfnet_thermal", [archive], tmp_path / "MFNet")


def test_member_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../outside.txt", "x")
    with pytest.raises(DatasetError, match="points outside the folder"):
        prepare_dataset("soda", [archive], tmp_path / "root")
    assert not (tmp_path / "outside.txt").exists()


# ------------------------------------------------------------------ command line
def test_cli_prepare_prints_summary_and_check(tmp_path: Path, capsys) -> None:
    archive = zip_tree(soda_release(tmp_path), tmp_path / "soda.zip")
    assert main(["data", "prepare", "soda", "--from", str(archive),
                 "--root", str(tmp_path / "SODA")]) == 0
    out = capsys.readouterr().out
    assert "soda: the SODA release folder InfraredSemanticLabel/" in out
    assert "result: OK" in out


def test_cli_prepare_wrong_release_is_one_line(tmp_path: Path, capsys) -> None:
    archive = zip_tree(soda_release(tmp_path), tmp_path / "soda.zip")
    assert main(["data", "prepare", "scut_seg", "--from", str(archive),
                 "--root", str(tmp_path / "SCUT")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("unipbench data: error: ")
    assert "is not a SCUT-Seg" in err
