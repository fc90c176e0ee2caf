"""The local executor: runs in parallel worker processes (submitit), each recording itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_suite import tiny_suite

from bench.results.store import read_records
from bench.suites.executors import LocalExecutor
from bench.suites.runner import run_suite

pytestmark = pytest.mark.slow


def test_local_workers_run_and_record(tmp_path: Path) -> None:
    suite, paths = tiny_suite(tmp_path)
    lines: list[str] = []
    # Two (pretend) GPUs: each worker process runs with its own CUDA_VISIBLE_DEVICES,
    # which the record keeps.
    ex = LocalExecutor(workers=2, timeout_min=10, devices=["3", "5"])
    out = run_suite(suite, paths, ex, progress=False, log=lines.append)
    assert len(out.submitted) == 6  # one worker process per run
    expected = ["done"] * 3 + ["failed"] * 3
    assert sorted(o["status"] for o in out.outcomes.values()) == expected
    records = read_records(paths.store)
    assert sorted(r.status for r in records) == expected
    assert all(r.flops is not None for r in records if r.status == "done")
    assert {r.device["visible_devices"] for r in records if r.status == "done"} <= {"3", "5"}
    assert (paths.workdir / "_submitit").is_dir()
