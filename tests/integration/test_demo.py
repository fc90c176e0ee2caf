"""`unipbench run suites/demo.yaml` end to end (the README's `make demo`), into a tmp dir.

The longest test: 14 short runs on CPU, then the commands that read their results.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.results.store import read_records

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ADAPTERS = ("mae", "crossmae", "deit", "deit3", "dino", "ibot", "unip")


def unipbench(*args: str, cwd: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def test_demo_suite_end_to_end(tmp_path: Path) -> None:
    suite = str(REPO / "suites" / "demo.yaml")
    where = ["--store", str(tmp_path / "store.jsonl"), "--workdir", str(tmp_path / "runs")]
    # cwd = tmp: the suite's relative dataset root (the synthetic SODA) lands there
    done = unipbench("run", suite, *where, "--no-progress", cwd=tmp_path, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "generated a synthetic soda" in done.stdout
    assert (tmp_path / "data" / "demo" / "soda-synthetic").is_dir()
    assert done.stdout.count("] done ") == 14
    board = done.stdout[done.stdout.index("### demo leaderboard"):]
    for adapter in ADAPTERS:
        assert f"| {adapter}-T †" in board  # random init, marked
    assert "FT soda" in board and "LP soda" in board and "GFLOPs" in board

    records = read_records(tmp_path / "store.jsonl")
    assert len(records) == 14 and all(r.status == "done" for r in records)
    assert {r.adapter for r in records} == set(ADAPTERS)
    unip = next(r for r in records if r.adapter == "unip" and r.protocol == "fine_tune")
    assert unip.config["options"] == {}
    assert unip.config["settings"]["neck"] == "llfpn"  # UNIP's fine-tuning default
    assert unip.config["settings"]["rel_pos_bias"] is False

    again = unipbench("run", suite, *where, "--no-progress", cwd=tmp_path, timeout=120)
    assert again.returncode == 0 and "14 done already, 0 to run" in again.stdout
    assert len(read_records(tmp_path / "store.jsonl")) == 14

    listed = unipbench("ls", suite, *where, cwd=tmp_path)
    assert "14 done, 0 failed, 0 partial, 0 pending" in listed.stdout

    latex = unipbench("table", "--suite", suite, "--store", str(tmp_path / "store.jsonl"),
                      "--format", "latex", cwd=tmp_path)
    assert latex.returncode == 0 and r"\begin{tabular}" in latex.stdout

    plots = unipbench("plot", "--suite", "demo", "--store", str(tmp_path / "store.jsonl"),
                      "--out", str(tmp_path / "plots"), cwd=tmp_path)
    assert plots.returncode == 0, plots.stderr
    assert (tmp_path / "plots" / "miou_vs_gflops_ft.png").exists()
