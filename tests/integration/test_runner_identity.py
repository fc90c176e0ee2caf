"""No stale results: a run's identity covers its data and weights, reuse says so, and two
processes on one store neither record a run twice nor pass a partial result for complete.

Tiny real runs: ViT-T cut to 2 blocks, 32-px synthetic SODA, a few steps each.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from tiny_suite import TINY

from bench.cli import main
from bench.identity import data_content
from bench.results.store import read_records
from bench.suites.executors import InlineExecutor
from bench.suites.load import load_suite
from bench.suites.runner import Paths, execute_run, run_suite, select_runs

pytestmark = pytest.mark.slow

LP = "mae-T/soda/linear_probe/*"
HERE = Path(__file__).parent


def suite_at(tmp_path: Path, root: Path, name: str = "tiny.yaml") -> Path:
    """The tiny suite with its dataset at ``root`` (generated there when missing)."""
    p = tmp_path / name
    p.write_text(textwrap.dedent(TINY.format(root=root)))
    return p


def paths_of(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "store" / "results.jsonl", tmp_path / "runs")


def synth(root: Path, seed: int) -> Path:
    rc = main(["data", "synth", "--like", "soda", "--root", str(root), "--train", "4",
               "--test", "2", "--size", "32", "--seed", str(seed)])
    assert rc == 0
    return root


def run(suite: Path, paths: Paths, only: str = LP) -> tuple[list[str], object]:
    lines: list[str] = []
    out = run_suite(load_suite(suite), paths, InlineExecutor(), only=only, progress=False,
                    log=lines.append)
    return lines, out


def test_changed_dataset_root_is_a_new_run_that_says_what_changed(tmp_path: Path) -> None:
    paths = paths_of(tmp_path)
    a = tmp_path / "data" / "a"
    lines, first = run(suite_at(tmp_path, a), paths)
    assert any("generated a synthetic soda" in line for line in lines)
    (rec,) = read_records(paths.store)
    (run_a,) = first.runs
    # The id was taken after generation: it is the one of the data now on disk.
    assert rec.run_id == run_a.run_id
    assert rec.dataset_fingerprint == data_content("soda", a, ["train", "test"])

    # Another `unipbench data synth` folder: same names, other images. Not reused.
    b = synth(tmp_path / "data" / "b", seed=1)
    lines, second = run(suite_at(tmp_path, b), paths)
    assert "1 runs, 0 done already, 1 to run" in lines[0]
    (new,) = [line for line in lines if "new run" in line]
    assert f"the stored result {run_a.run_id} of {rec.timestamp} is not reused" in new
    assert "dataset.content.test: " in new and "dataset.content.train: " in new
    assert "settings" not in new and "weights" not in new  # only what changed is named
    (run_b,) = second.runs
    assert second.outcomes[run_b.run_id]["status"] == "done" and run_b.run_id != run_a.run_id
    assert [r.run_id for r in read_records(paths.store)] == [run_a.run_id, run_b.run_id]

    # A copy of the first folder elsewhere is the same data: reused, and it says so.
    moved = tmp_path / "moved" / "soda"
    shutil.copytree(a, moved)
    lines, third = run(suite_at(tmp_path, moved), paths)
    assert "1 runs, 1 done already, 0 to run" in lines[0]
    content = rec.dataset_fingerprint
    assert lines[1] == (
        f"  reusing mae-T/soda/linear_probe/s0 ({run_a.run_id}): done {rec.timestamp}, "
        f"mIoU {rec.metrics['mIoU']:.2f}; matched on random init, data train "
        f"{content['train'][:12]}, test {content['test'][:12]}, protocol 2.1, seed 0, settings"
    )
    assert len(read_records(paths.store)) == 2


def tiny_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    vit = VisionTransformer(embed_dim=192, depth=2, num_heads=3, num_classes=0)
    torch.save({"model": vit.state_dict()}, path)
    return path


def train(root: Path, workdir: Path, ckpt: Path) -> list[str]:
    sets = []
    for k, v in {"iters": 2, "warmup_iters": 1, "batch_size": 2, "num_workers": 0,
                 "crop_size": 32, "scale": [48, 32], "inference": "whole",
                 "layers": [0, 1, 1, 1]}.items():
        sets += ["--set", f"{k}={json.dumps(v)}"]
    return ["train", "linear-probe", "--adapter", "mae", "--size", "T", "--option", "depth=2",
            "--checkpoint", str(ckpt), "--dataset", "soda", "--root", str(root),
            "--workdir", str(workdir), "--no-progress", *sets]


def test_train_checks_data_and_checkpoint_before_reusing(tmp_path: Path, capsys) -> None:
    from bench.checkpoints.reader import sha256_file

    a, b = synth(tmp_path / "a", seed=0), synth(tmp_path / "b", seed=1)
    ckpt = tiny_weights(tmp_path / "w.pth", seed=0)
    wd = tmp_path / "work"
    capsys.readouterr()
    assert main(train(a, wd, ckpt)) == 0
    first = capsys.readouterr()
    assert "reusing" not in first.err

    assert main(train(a, wd, ckpt)) == 0  # the same run: reused, and it says so
    again = capsys.readouterr()
    content = data_content("soda", a, ["train", "test"])
    assert again.err.strip() == (
        f"reusing the finished run in {wd} (matched on weights {sha256_file(ckpt)[:12]}, "
        f"data train {content['train'][:12]}, test {content['test'][:12]}, protocol 2.1, "
        "seed 0, settings)"
    )
    assert again.out == first.out

    # No data there: an error, not the stored numbers.
    assert main(train(tmp_path / "nowhere", wd, ckpt)) == 2
    missing = capsys.readouterr()
    assert missing.out == "" and "nowhere" in missing.err and "not usable" in missing.err

    # Other images under the same file names.
    assert main(train(b, wd, ckpt)) == 2
    other = capsys.readouterr()
    assert other.out == ""
    assert f"{wd / 'result.json'} holds the result of a different run" in other.err
    assert "dataset.content.test: " in other.err and "dataset.content.train: " in other.err

    # The checkpoint file replaced by other weights, same name.
    old = sha256_file(ckpt)
    tiny_weights(ckpt, seed=1)
    assert main(train(a, wd, ckpt)) == 2
    swapped = capsys.readouterr()
    assert swapped.out == ""
    assert f"(model.weights: {old[:12]} -> {sha256_file(ckpt)[:12]})" in swapped.err


class OtherProcessFinishesFirst(InlineExecutor):
    """This process decided to run the runs; another one finishes each just before."""

    def run(self, runs, paths, on_result):
        for r in runs:
            execute_run(r, paths.store, paths.workdir)  # the other process
        return super().run(runs, paths, on_result)


def test_a_run_finished_by_another_process_is_not_recorded_twice(tmp_path: Path) -> None:
    paths = paths_of(tmp_path)
    suite = load_suite(suite_at(tmp_path, tmp_path / "data" / "soda"))
    lines: list[str] = []
    out = run_suite(suite, paths, OtherProcessFinishesFirst(), only=LP, progress=False,
                    log=lines.append)
    (r,) = out.runs
    records = read_records(paths.store)
    assert [(x.run_id, x.status) for x in records] == [(r.run_id, "done")]
    assert out.outcomes[r.run_id]["status"] == "done" and not out.failed and not out.busy
    assert lines[-1].endswith("(recorded by another process)")


def test_a_run_held_by_another_process_is_reported_not_passed_as_done(tmp_path: Path,
                                                                      capsys) -> None:
    """Two `unipbench run` on one store: the second says what runs elsewhere, exits 3 with
    a leaderboard marked partial; once the first is done a rerun is complete, exit 0."""
    store, workdir = tmp_path / "store" / "results.jsonl", tmp_path / "runs"
    root = tmp_path / "data" / "soda"
    suite = suite_at(tmp_path, root)
    synth(root, seed=0)
    both = "mae-T/soda/linear_probe/*,mae-T/soda/fine_tune/*"
    release = tmp_path / "release"
    other = subprocess.Popen(
        [sys.executable, str(HERE / "hold_run.py"), str(suite), str(store), str(workdir), LP,
         str(release)], stdout=subprocess.PIPE, text=True,
    )
    try:
        (held,) = select_runs(load_suite(suite), Paths(store, workdir), LP)
        holder = workdir / f"{held.run_id}.holder"
        deadline = time.monotonic() + 120
        while not holder.exists():
            assert other.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        capsys.readouterr()
        cli = ["run", str(suite), "--store", str(store), "--workdir", str(workdir),
               "--only", both, "--no-progress"]
        assert main(cli) == 3
        out = capsys.readouterr()
        host = json.loads(holder.read_text())["host"]
        assert f"running elsewhere: 1 run (pid {other.pid} on {host})" in out.err
        assert "tiny leaderboard (partial: 1 of 2 runs)" in out.out
        assert [r.protocol for r in read_records(store)] == ["fine_tune"]
    finally:
        release.touch()
        stdout, _ = other.communicate(timeout=300)
    assert other.returncode == 0 and stdout.split() == ["done", held.run_id]

    assert main(cli) == 0
    out = capsys.readouterr()
    assert "2 runs, 2 done already, 0 to run" in out.out
    assert out.out.count("  reusing mae-T/soda/") == 2
    assert "partial" not in out.out and out.err == ""
    records = read_records(store)
    assert sorted((r.protocol, r.status) for r in records) == [
        ("fine_tune", "done"), ("linear_probe", "done")]
