"""InfMix: manifest building (dedup, ImageNet first-K, corrupt and non-image files), dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.backbones.backbone import INFRARED_MEAN, INFRARED_STD
from bench.cli import main
from unip.infmix import InfMixDataset, build_infmix, read_manifest, summary_path, write_manifest


def grey_png(path: Path, value: int, size: tuple[int, int] = (20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full(size, value, np.uint8)
    arr[0, 0] = (value + 1) % 256  # distinct bytes per value, same size
    Image.fromarray(arr, "L").save(path)
    return path


@pytest.fixture()
def sources(tmp_path: Path) -> dict[str, Path]:
    ir1, ir2 = tmp_path / "ir" / "soda_like", tmp_path / "ir2" / "mfnet_like"
    grey_png(ir1 / "a.png", 10)
    grey_png(ir1 / "sub" / "b.png", 20)
    grey_png(ir2 / "c.png", 30)
    shutil.copy(ir1 / "a.png", ir2 / "copy_of_a.png")  # duplicate across sources
    (ir2 / "broken.png").write_bytes((ir1 / "a.png").read_bytes()[:40])  # truncated
    (ir2 / "readme.txt").write_text("labels are elsewhere")

    imnet = tmp_path / "imagenet"
    for k, cls in enumerate(["n001", "n002"]):
        for i in range(4):
            grey_png(imnet / cls / f"{cls}_{i}.JPEG", 100 + 10 * k + i)
    # Class n002: its first file (sorted) is corrupt, its second a duplicate of an IR image.
    (imnet / "n002" / "n002_0.JPEG").write_bytes(b"not a jpeg at all")
    shutil.copy(ir1 / "sub" / "b.png", imnet / "n002" / "n002_1.JPEG")

    coco = tmp_path / "coco"
    coco.mkdir()
    colour = np.random.default_rng(0).integers(0, 255, (12, 18, 3), np.uint8)
    Image.fromarray(colour, "RGB").save(coco / "000001.jpg")
    grey_png(coco / "000002.png", 200)
    return {"ir1": ir1, "ir2": ir2, "imagenet": imnet, "coco": coco}


def test_build_counts_dedups_and_reports(sources: dict[str, Path]) -> None:
    entries, report = build_infmix(
        [sources["ir1"], sources["ir2"]], sources["imagenet"], sources["coco"], per_class=2,
        workers=2,
    )  # fmt: skip
    assert report.counts == {
        "infrared/soda_like": 2,
        "infrared/mfnet_like": 1,
        "imagenet": 4,
        "coco": 2,
    }
    assert report.total == len(entries) == 9
    assert len({e.sha256 for e in entries}) == len(entries)
    names = [Path(e.path).name for e in entries]
    # First K *kept* images per class, sorted: n002 skips its corrupt and duplicate files.
    assert [n for n in names if n.startswith("n00")] == [
        "n001_0.JPEG", "n001_1.JPEG", "n002_2.JPEG", "n002_3.JPEG",
    ]  # fmt: skip
    dup_names = sorted(Path(d["path"]).name for d in report.duplicates)
    assert dup_names == ["copy_of_a.png", "n002_1.JPEG"]
    first = {Path(d["path"]).name: Path(d["duplicate_of"]).name for d in report.duplicates}
    assert first == {"copy_of_a.png": "a.png", "n002_1.JPEG": "b.png"}
    skipped = {Path(s["path"]).name: s["reason"] for s in report.skipped}
    assert set(skipped) == {"broken.png", "readme.txt", "n002_0.JPEG"}
    assert "not an image file" in skipped["readme.txt"]
    assert "unreadable" in skipped["broken.png"]
    assert all(Path(e.path).is_absolute() for e in entries)


def test_cli_writes_manifest_and_summary(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "mix" / "infmix.jsonl"
    rc = main(
        ["infmix", "build", "--infrared", str(sources["ir1"]), str(sources["ir2"]),
         "--imagenet", str(sources["imagenet"]), "--coco", str(sources["coco"]),
         "--per-class", "3", "--out", str(out), "--workers", "2"]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "imagenet" in printed and "total" in printed and "broken.png" in printed
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert all(set(ln) == {"path", "source", "sha256"} for ln in lines)
    summary = json.loads(summary_path(out).read_text())
    assert summary["counts"]["imagenet"] == 5  # 3 + 2 left in n002
    assert summary["total"] == len(lines) == 10
    assert summary["per_class"] == 3
    assert len(summary["skipped"]) == 3


def test_dataset_reads_grey_three_channels_normalised(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    entries, report = build_infmix([sources["ir1"]], coco=sources["coco"], workers=1)
    manifest = write_manifest(entries, report, tmp_path / "m.jsonl")
    ds = InfMixDataset(manifest)
    assert len(ds) == 4
    assert ds.sources == ["infrared/soda_like"] * 2 + ["coco"] * 2
    x = ds[0]  # a.png: constant 10 but for one pixel
    assert x.shape == (3, 20, 16) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    expected = (10 / 255 - INFRARED_MEAN[0]) / INFRARED_STD[0]
    assert float(x[0, 5, 5]) == pytest.approx(expected, abs=1e-5)
    rgb = ds[2]  # the COCO colour JPEG, turned grey
    assert rgb.shape == (3, 12, 18) and torch.equal(rgb[0], rgb[2])


def test_bad_inputs_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one source"):
        build_infmix([])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_infmix([tmp_path / "missing"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.png", "source": "x", "sha256": "0"}\n{"path": "b.png"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_manifest(bad)


def test_empty_sources_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    grey_png(tmp_path / "ir" / "a.png", 5)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_bytes(b"\x00" * 64)
    out = tmp_path / "m.jsonl"
    rc = main(["infmix", "build", "--infrared", str(tmp_path / "empty"), str(tmp_path / "junk"),
               "--out", str(out), "--workers", "1"])  # fmt: skip
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "empty") in err and str(tmp_path / "junk") in err
    rc = main(["infmix", "build", "--infrared", str(tmp_path / "ir"), str(tmp_path / "junk"),
               "--out", str(out), "--workers", "1"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "warning: source infrared/junk contributed no images" in printed
    reason = json.loads(summary_path(out).read_text())["skipped"][0]["reason"]
    assert reason == "unreadable image: not in a format PIL recognises"  # no buffer address
