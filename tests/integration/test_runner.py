"""Runner end to end with real (tiny) training: records, failures, skipping, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_suite import tiny_suite

from bench.results.store import read_records
from bench.results.tables import build_leaderboard
from bench.suites.executors import InlineExecutor
from bench.suites.runner import run_states, run_suite

pytestmark = pytest.mark.slow

def test_suite_records_every_outcome_then_skips_done_and_retries_failed(tmp_path: Path) -> None:
    suite, paths = tiny_suite(tmp_path)
    lines: list[str] = []
    out = run_suite(suite, paths, InlineExecutor(), progress=False, log=lines.append)
    assert any("generated a synthetic soda" in line for line in lines)
    status = {o["run_id"]: o["status"] for o in out.outcomes.values()}
    assert sorted(status.values()) == ["done"] * 3 + ["failed"] * 3
    assert sum("[" in line and "/6]" in line for line in lines) == 6  # one line per run

    records = read_records(paths.store)
    assert len(records) == 6
    done = [r for r in records if r.status == "done"]
    ft = next(r for r in done if r.protocol == "fine_tune")
    assert set(ft.metrics) >= {"mIoU", "mAcc", "aAcc", "per_class_iou"}
    assert ft.best is not None and ft.last is not None
    assert ft.random_init and ft.checkpoint is None
    assert ft.flops is not None and ft.flops.input_size == [32, 32]
    assert ft.flops.convention == "multiply-adds" and "fvcore" in ft.flops.counter
    assert ft.flops.total_gmacs > ft.flops.backbone_gmacs > 0
    assert set(ft.dataset_fingerprint or {}) == {"train", "test"}
    assert ft.git.commit and ft.git.dirty is not None
    assert ft.versions["torch"] and ft.versions["timm"] and ft.versions["unip-bench"]
    assert ft.device and ft.wall_time_s and ft.iterations == 4
    assert ft.train_time_s and 0 < ft.train_time_s <= ft.wall_time_s
    assert ft.config["settings"]["iters"] == 4 and ft.protocol_version == "2.0"
    lp = next(r for r in done if r.protocol == "linear_probe")
    assert lp.mode == "on_the_fly" and lp.inference["mode"] == "whole"

    lw = next(r for r in done if r.protocol == "layerwise_probe")
    assert sorted(lw.per_layer) == ["0", "1"] and "mIoU" in lw.per_layer["0"]
    board = build_leaderboard([r for r in done])
    assert [c.title for c in board.columns][:3] == ["FT soda", "LP soda", "LW best soda"]

    failed = [r for r in records if r.status == "failed"]
    assert all("CheckpointError" in r.error and "missing.pth" in r.error for r in failed)
    assert all((paths.workdir / r.run_id / "traceback.txt").exists() for r in failed)

    # Second run: done runs are skipped, failed ones tried again (and fail again).
    again = run_suite(suite, paths, InlineExecutor(), progress=False, log=lines.append)
    assert {r.run_id for r in again.skipped} == {r.run_id for r in done}
    assert set(again.outcomes) == {r.run_id for r in failed}
    assert len(read_records(paths.store)) == 9
    states = run_states(again.runs, paths)
    assert sorted(s for s, _ in states.values()) == ["done"] * 3 + ["failed"] * 3


def test_interrupted_run_is_partial_then_resumes(tmp_path: Path, monkeypatch) -> None:
    from bench.protocols import checkpointing

    suite, paths = tiny_suite(tmp_path)
    original = checkpointing.Checkpointer.save

    def save_then_interrupt(self, iteration, state):
        original(self, iteration, state)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C right after a checkpoint

    monkeypatch.setattr(checkpointing.Checkpointer, "save", save_then_interrupt)
    only = "mae-T/soda/fine_tune/*"
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, paths, InlineExecutor(), only=only, progress=False, log=print)
    monkeypatch.setattr(checkpointing.Checkpointer, "save", original)

    out = run_suite(suite, paths, InlineExecutor(), only=only, progress=False, log=print)
    (run,) = out.runs
    assert read_records(paths.store)[-1].status == "done"
    result = json.loads((paths.workdir / run.run_id / "result.json").read_text())
    assert result["resumed_from"] == 2 and result["iterations"] == 4


def test_partial_state_is_listed(tmp_path: Path) -> None:
    suite, paths = tiny_suite(tmp_path)
    from bench.suites.runner import select_runs

    runs = select_runs(suite, paths, "mae-T/soda/linear_probe/*")
    (paths.workdir / runs[0].run_id).mkdir(parents=True)
    (paths.workdir / runs[0].run_id / "state.pt").write_bytes(b"x")
    assert run_states(runs, paths)[runs[0].run_id][0] == "partial"


def test_a_run_held_by_another_process_is_left_alone(tmp_path: Path) -> None:
    from filelock import FileLock

    from bench.suites.runner import execute_run, select_runs

    suite, paths = tiny_suite(tmp_path)
    (run,) = select_runs(suite, paths, "mae-T/soda/linear_probe/*")
    paths.workdir.mkdir(parents=True)
    with FileLock(str(paths.workdir / f"{run.run_id}.lock")):
        out = execute_run(run, paths.store, paths.workdir)
    assert out["status"] == "busy"
    assert not paths.store.exists() and not (paths.workdir / run.run_id).exists()
