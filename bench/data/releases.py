"""The public releases of the built-in datasets, as downloaded, and how each becomes a
layout the loader reads (docs/datasets.md has the pages, archives and folder trees).

A release is recognised by the folders and files at its top. Releases the loader reads as
they are (SODA, ADE20K, and the UNIP-layout copies) are linked into the dataset root;
MFNet and SCUT-Seg are converted. Conversions write every file under a temporary name and
rename it when complete, and skip files that exist, so an interrupted run resumes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.data.imageio import read_label
from bench.data.layout import quote_some
from bench.data.spec import DatasetError
from bench.diskio import atomic_replace, atomic_write_text

Converter = Callable[[Path, Path], int]  # (release folder, dataset root) -> files written


@dataclass(frozen=True)
class Release:
    """A folder tree that identifies one published form of a dataset."""

    description: str
    dirs: tuple[str, ...]
    files: tuple[str, ...]
    layout: str  # our layout of the prepared copy
    convert: Converter | None = None  # None: the loader reads the release as it is

    def expected(self) -> str:
        return " + ".join([f"{d}/" for d in self.dirs] + list(self.files))


# ----------------------------------------------------------------------------- writing
def _save_png(arr: np.ndarray, target: Path) -> None:
    atomic_replace(target, lambda p: Image.fromarray(arr).save(p, format="PNG", compress_level=6))


def _place(src: Path, target: Path) -> None:
    """A hard link where the file system allows one (no second copy), else a copy."""

    def write(part: Path) -> None:
        try:
            os.link(src, part)
        except OSError:
            shutil.copyfile(src, part)

    atomic_replace(target, write)


def _stems(split_file: Path, first_path: bool = False) -> list[str]:
    """Sample names listed in a split file, in order, without repeats."""
    out = []
    for line in split_file.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append(Path(line.split()[0]).stem if first_path else line)
    return list(dict.fromkeys(out))


def _write_split(root: Path, name: str, stems: list[str]) -> None:
    atomic_write_text(root / name, "".join(f"{s}\n" for s in stems))


def _missing(what: str, items: list[str], where: Path) -> DatasetError:
    return DatasetError(
        f"{len(items)} sample(s) listed in the split files have no {what} in {where}: "
        f"{quote_some(items)}; the release is incomplete (re-download or re-extract it)"
    )


# ----------------------------------------------------------------------------- MFNet
def convert_mfnet(release: Path, root: Path) -> int:
    """ir_seg_dataset/ (4-channel RGB-T PNGs) -> the thermal-only copy UNIP reads:
    thermal_imgs/<n>.png = channel 4, labels/<n>.png as released, train/val/test.txt, and
    val_test.txt (val + test; UNIP's config validates on it, the release does not ship it)."""
    splits = {s: _stems(release / f"{s}.txt") for s in ("train", "val", "test")}
    if (release / "val_test.txt").is_file():
        splits["val_test"] = _stems(release / "val_test.txt")
    else:
        splits["val_test"] = list(dict.fromkeys(splits["val"] + splits["test"]))
    names = list(dict.fromkeys(n for stems in splits.values() for n in stems))
    no_image = [n for n in names if not (release / "images" / f"{n}.png").is_file()]
    no_label = [n for n in names if not (release / "labels" / f"{n}.png").is_file()]
    if no_image:
        raise _missing("images/<name>.png", no_image, release)
    if no_label:
        raise _missing("labels/<name>.png", no_label, release)
    written = 0
    for n in tqdm(names, unit="image", desc="MFNet: thermal channel", disable=None):
        img_out, lab_out = root / "thermal_imgs" / f"{n}.png", root / "labels" / f"{n}.png"
        if not img_out.is_file():
            src = release / "images" / f"{n}.png"
            try:
                with Image.open(src) as im:
                    bands = im.getbands()
                    arr = np.asarray(im)
            except OSError as exc:
                raise DatasetError(f"cannot read image {src}: {exc}") from None
            if len(bands) != 4:
                raise DatasetError(
                    f"image {src} has {len(bands)} channel(s) ({''.join(bands)}); the MFNet "
                    "release stores 4-channel RGB-T PNGs whose 4th channel is thermal"
                )
            _save_png(np.ascontiguousarray(arr[:, :, 3]), img_out)
            written += 1
        if not lab_out.is_file():
            _place(release / "labels" / f"{n}.png", lab_out)
            written += 1
    for split, stems in splits.items():
        _write_split(root, f"{split}.txt", stems)
    return written


# ----------------------------------------------------------------------------- SCUT-Seg
# Stored value of each class in the release's *_labelIds.png (the release README's
# "Ground Truth value" table; MCNet's BaseDataset.valid_classes), in our class order:
# background, road, person, rider, car, truck, fence, tree, bus, pole.
SCUT_RELEASE_IDS = (0, 7, 24, 25, 26, 27, 13, 21, 28, 17)
IGNORE = 255


def _scut_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    for cls, stored in enumerate(SCUT_RELEASE_IDS):
        lut[stored] = cls
    lut[IGNORE] = IGNORE
    return lut


def convert_scut(release: Path, root: Path) -> int:
    """SCUT-Seg release (images/, gt_instance/<stem>_labelIds.png, scut_train.txt,
    scut_val.txt) -> images/<stem>.jpg, labels/<stem>.png with class ids 0-9, train.txt,
    val.txt, as UNIP's config reads it."""
    images = {p.stem: p for p in sorted((release / "images").rglob("*.jpg"))}
    suffix = "_labelIds.png"
    labels = {
        p.name[: -len(suffix)]: p for p in sorted((release / "gt_instance").rglob(f"*{suffix}"))
    }
    splits = {
        s: _stems(release / f"scut_{s}.txt", first_path=True) for s in ("train", "val")
    }
    names = list(dict.fromkeys(n for stems in splits.values() for n in stems))
    if no_image := [n for n in names if n not in images]:
        raise _missing("images/**/<name>.jpg", no_image, release)
    if no_label := [n for n in names if n not in labels]:
        raise _missing(f"gt_instance/**/<name>{suffix}", no_label, release)
    lut = _scut_lut()
    bad: list[str] = []
    written = 0
    for n in tqdm(names, unit="image", desc="SCUT-Seg: class ids", disable=None):
        img_out, lab_out = root / "images" / f"{n}.jpg", root / "labels" / f"{n}.png"
        if not img_out.is_file():
            _place(images[n], img_out)
            written += 1
        if lab_out.is_file():
            continue
        raw = read_label(labels[n])
        mapped = lut[np.clip(raw, 0, 255)]
        unknown = sorted(set(np.unique(raw[(mapped < 0) | (raw > 255)]).tolist()))
        if unknown:
            bad.append(f"{labels[n].name} {unknown}")
            continue
        _save_png(mapped.astype(np.uint8), lab_out)
        written += 1
    if bad:
        raise DatasetError(
            f"{len(bad)} label file(s) in {release / 'gt_instance'} hold values that are no "
            f"SCUT-Seg class (expected {', '.join(map(str, SCUT_RELEASE_IDS))} or 255): "
            f"{quote_some(bad)}"
        )
    for split, stems in splits.items():
        _write_split(root, f"{split}.txt", stems)
    return written


# ----------------------------------------------------------------------------- the table
RELEASES: dict[str, tuple[Release, ...]] = {
    "soda": (
        Release(
            "the SODA release folder InfraredSemanticLabel/",
            ("JPEGImages", "SegmentationClassPNG"), ("train_infrared.txt", "test_infrared.txt"),
            layout="voc",
        ),
    ),
    "mfnet_thermal": (
        Release(
            "the MFNet release folder ir_seg_dataset/ (4-channel RGB-T PNGs)",
            ("images", "labels"), ("train.txt", "val.txt", "test.txt"),
            layout="thermal", convert=convert_mfnet,
        ),
        Release(
            "a thermal-only copy as UNIP reads it (MFNet_thermal/)",
            ("thermal_imgs", "labels"), ("train.txt", "test.txt"), layout="thermal",
        ),
    ),
    "scut_seg": (
        Release(
            "the SCUT-Seg release (MCNet)",
            ("images", "gt_instance"), ("scut_train.txt", "scut_val.txt"),
            layout="unip", convert=convert_scut,
        ),
        Release(
            "a SCUT-Seg copy as UNIP reads it",
            ("images", "labels"), ("train.txt", "val.txt"), layout="unip",
        ),
    ),
    "ade20k": (
        Release(
            "ADEChallengeData2016/ (the SceneParsing release)",
            ("images/training", "images/validation", "annotations/training",
             "annotations/validation"), (),
            layout="mmseg",
        ),
    ),
    "nyuv2_depth": (
        Release(
            "NYUDepthv2/ as UNIP's config reads it",
            ("Depth", "Lable_single_channel"), ("train_depth.txt", "test_depth.txt"),
            layout="unip",
        ),
    ),
    "sunrgbd_depth": (
        Release(
            "SUNRGBD/ as UNIP's config reads it",
            ("Depth", "labels"), ("train_depth.txt", "test_depth.txt"), layout="unip",
        ),
    ),
}

# What to say when the official release of a dataset whose paper layout we cannot derive
# from it is given instead (docs/datasets.md explains).
NOT_CONVERTED = {
    "nyuv2_depth": (
        "the official NYUv2 file nyu_depth_v2_labeled.mat needs a conversion (depth encoding, "
        "894->40 classes) that the UNIP release does not publish; see docs/datasets.md"
    ),
    "sunrgbd_depth": (
        "the official SUNRGBD.zip + SUNRGBDtoolbox need a conversion (depth encoding, "
        "37-class labels) that the UNIP release does not publish; see docs/datasets.md"
    ),
}
