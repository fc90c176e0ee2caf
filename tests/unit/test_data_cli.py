"""``unipbench data``: exit codes and what the user reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main


def test_synth_then_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "soda"
    args = ["--like", "soda", "--root", str(root), "--train", "4", "--test", "2", "--size", "32"]
    assert main(["data", "synth", *args, "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote a synthetic soda dataset (layout 'voc')" in out and "train 4, test 2" in out
    assert main(["data", "check", "--dataset", "soda", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "result: OK" in out and "layout 'voc' (detected" in out


def test_check_fails_with_exit_1_and_a_report(tmp_path: Path, capsys) -> None:
    root = tmp_path / "scut"
    main(["data", "synth", "--like", "scut_seg", "--root", str(root), "--size", "24"])
    lab = root / "labels" / "train_00000.png"
    arr = np.array(Image.open(lab))
    arr[0, 0] = 17
    Image.fromarray(arr).save(lab)
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "scut_seg", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "labels/train_00000.png: 17" in out and "result: FAILED (1 error(s)" in out
    # --quick samples a few files and so may miss it; --split narrows the audit.
    assert main(["data", "check", "--dataset", "scut_seg", "--root", str(root), "--split",
                 "val"]) == 0  # fmt: skip


def test_wrong_folder_and_layout(tmp_path: Path, capsys) -> None:
    assert main(["data", "check", "--dataset", "soda", "--root", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().out
    code = main(["data", "check", "--dataset", "mfnet_thermal", "--root", str(tmp_path),
                 "--layout", "rgbx"])  # fmt: skip
    assert code == 2
    assert "no layout 'rgbx'" in capsys.readouterr().err


def test_misspelt_split_is_a_user_error(tmp_path: Path, capsys) -> None:
    root = tmp_path / "soda"
    main(["data", "synth", "--like", "soda", "--root", str(root), "--size", "24"])
    capsys.readouterr()
    code = main(["data", "check", "--dataset", "soda", "--root", str(root), "--split", "tset"])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("unipbench data: error: soda has no split 'tset'")
    assert "Did you mean 'test'?" in captured.err


def test_unknown_dataset_is_a_user_error(tmp_path: Path, capsys) -> None:
    assert main(["data", "synth", "--like", "mfnet", "--root", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unipbench data: error: unknown dataset 'mfnet'")
    assert "Did you mean 'mfnet_thermal'?" in err


def test_synth_into_a_used_folder_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.txt").write_text("x")
    assert main(["data", "synth", "--like", "soda", "--root", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_list(capsys) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "mfnet_thermal" in out and "rgbt, thermal" in out
    assert main(["data", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ade20k"]["num_classes"] == 150 and rows["ade20k"]["reduce_zero_label"]


@pytest.mark.parametrize("size", ["8", "100000"])
def test_synth_size_out_of_bounds_is_a_user_error(tmp_path: Path, capsys, size: str) -> None:
    """--size 100000 once tried to allocate 25 GiB and died with a numpy traceback."""
    root = tmp_path / "s"
    assert main(["data", "synth", "--like", "soda", "--root", str(root), "--size", size]) == 2
    assert "must be 16 to 4096 pixels a side" in capsys.readouterr().err
    assert not root.exists()
