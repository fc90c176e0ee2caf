"""User errors reach the terminal as one line naming what is wrong, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.data.synth import synthesize


@pytest.fixture(scope="module")
def soda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("soda")
    synthesize("soda", root, train=2, test=1, size=32, seed=0)
    return root


def _train(soda: Path, tmp_path: Path, *sets: str) -> list[str]:
    args = ["train", "finetune", "--adapter", "mae", "--size", "T", "--dataset", "soda",
            "--root", str(soda), "--workdir", str(tmp_path / "w"), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    return args


def test_invalid_settings_are_one_line_naming_each_field(
    soda: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_train(soda, tmp_path, "lr=-1", "crop_size=0"))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err and "errors.pydantic.dev" not in err
    assert err.startswith("unipbench train: error: invalid FineTuneSettings: ")
    assert "crop_size: Input should be greater than 0" in err
    assert "lr: Input should be greater than 0" in err


def test_cross_field_error_keeps_its_reason(
    soda: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_train(soda, tmp_path, "iters=2")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("warmup_iters 1500 exceeds iters 2")
    assert not (tmp_path / "w" / "result.json").exists()
