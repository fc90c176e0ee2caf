"""User errors reach the terminal as one line naming what is wrong, exit code 2."""

from __future__ import annotations

import os
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


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that gets as far as building a model has let a bad value through."""
    import bench.backbones.adapter

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built: the bad value was not refused up front")

    monkeypatch.setattr(bench.backbones.adapter, "load_backbone", refuse)


@pytest.mark.parametrize("value", ["1e45", "inf", "NaN", "-Infinity"])
def test_absurd_or_non_finite_lr_is_refused_before_anything_runs(
    soda: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, no_model: None
) -> None:
    assert main(_train(soda, tmp_path, f"lr={value}")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lr: Input should be" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("setting", ["betas=[0.9, 1.0]", "weight_decay=1e9",
                                     "warmup_ratio=2", "betas=[0.9, NaN]"])
def test_other_optimiser_settings_out_of_range_name_their_key(
    soda: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, no_model: None
) -> None:
    assert main(_train(soda, tmp_path, setting)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{setting.split('=')[0]}" in err.split("invalid")[1]


def _one_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"unipbench {command}: error: ")
    return err


def test_unwritable_workdir_fails_before_training(
    soda: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    (tmp_path / "a-file").write_text("")
    args = _train(soda, tmp_path, "iters=2", "warmup_iters=1")
    args[args.index("--workdir") + 1] = str(tmp_path / "a-file" / "w")
    assert main(args) == 2
    err = _one_line(capsys, "train")
    assert f"workdir {tmp_path / 'a-file' / 'w'} is not writable" in err
    assert "a-file is a file" in err


def _suite(tmp_path: Path, root: Path) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(
        'suite: s\nprotocol_version: "2.1"\n'
        f"datasets: [{{name: soda, root: {root}}}]\n"
        "models: [{adapter: mae, size: T, options: {depth: 1}}]\n"
        "protocols: {linear_probe: {iters: 1, warmup_iters: 0, crop_size: 32, "
        "scale: [48, 32], batch_size: 2, num_workers: 0, inference: whole, "
        "layers: [0, 0, 0, 0]}}\n"
    )
    return p


@pytest.mark.parametrize("read_only", ["store", "workdir"])
def test_read_only_store_or_workdir_fails_before_any_run(
    soda: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch, read_only: str
) -> None:
    """On a read-only mount (root writes through chmod, so os.access says it): refused up
    front, naming the folder, not after training."""
    import bench.diskio
    import bench.suites.runner

    store_dir, workdir = tmp_path / "store", tmp_path / "runs"
    store_dir.mkdir()
    workdir.mkdir()
    blocked = store_dir if read_only == "store" else workdir
    real_access = os.access
    monkeypatch.setattr(bench.diskio.os, "access",
                        lambda p, mode: False if Path(p) == blocked else real_access(p, mode))
    monkeypatch.setattr(bench.suites.runner, "select_runs", lambda *a, **k: pytest.fail("ran"))
    code = main(["run", str(_suite(tmp_path, soda)), "--store", str(store_dir / "r.jsonl"),
                 "--workdir", str(workdir), "--no-progress"])
    assert code == 2
    err = _one_line(capsys, "run")
    assert f"{blocked} is not writable (permission denied or read-only file system)" in err
    assert list(workdir.iterdir()) == []


def test_store_under_a_file_fails_before_any_run(
    soda: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    store = tmp_path / "a-file" / "r.jsonl"
    code = main(["run", str(_suite(tmp_path, soda)), "--store", str(store),
                 "--workdir", str(tmp_path / "runs"), "--no-progress"])
    assert code == 2
    assert str(tmp_path / "a-file") in _one_line(capsys, "run")
    assert not (tmp_path / "runs").exists()


def test_any_os_error_is_one_line_naming_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "soda"
    assert main(["data", "synth", "--like", "soda", "--root", str(target)]) == 2
    assert str(target) in _one_line(capsys, "data")


def test_table_of_a_missing_suite_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["table", "--suite", str(missing), "--store", str(tmp_path / "r.jsonl")]) == 2
    err = _one_line(capsys, "table")
    assert f"--suite {missing} does not exist" in err and "no finished runs" not in err


def test_malformed_sha256_in_a_suite_is_called_malformed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    p = tmp_path / "s.yaml"
    p.write_text(
        'suite: s\nprotocol_version: "2.0"\ndatasets: [{name: soda, root: ' + str(tmp_path)
        + "}]\nmodels:\n  - {adapter: mae, size: T, checkpoint: " + str(weights)
        + ", sha256: 'abc123'}\nprotocols: {fine_tune: {}}\n"
    )
    assert main(["validate", str(p), "--quick"]) == 1
    err = capsys.readouterr().err
    assert f"{p}:5: models[0].sha256: sha256 'abc123' is not a sha256 digest (64 hex" in err
    assert "expects" not in err
