"""Kill a run with SIGKILL after a checkpoint, rerun it: bit-identical result.

Fine-tuning, and the linear probe's on-the-fly lr sweep (several heads, one optimiser
with per-head groups, the reported head and every head's numbers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from protocol_job import TINY, TINY_FT, make_soda

JOB = Path(__file__).with_name("protocol_job.py")
# Checkpoints every 4 steps, evaluations at 8 and 16: the resumed run has to restore
# the best-so-far, the lr schedule position, the optimiser moments, dropout/drop-path
# RNG streams and the data position.
SETTINGS = {**TINY_FT, "iters": 16, "checkpoint_interval": 4, "eval_interval": 8}
SWEEP = {**TINY, "iters": 16, "checkpoint_interval": 4, "eval_interval": 8, "sweep": True,
         "sweep_lrs": [3e-4, 1e-3, 1e-2]}
RUNS = {"fine_tune": ("fine_tune", SETTINGS), "linear_probe_sweep": ("linear_probe", SWEEP)}


def _start(workdir: Path, root: Path, run: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    protocol, settings = RUNS[run]
    return subprocess.Popen(
        [sys.executable, str(JOB), protocol, str(workdir), str(root), json.dumps(settings)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_sigkill_then_rerun_gives_bit_identical_metrics(tmp_path, run):
    root = make_soda(tmp_path / "soda")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _finish(_start(straight, root, run))

    proc = _start(resumed, root, run)
    ckpt = resumed / "checkpoint.pt"
    deadline = time.monotonic() + 90
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "result.json").exists(), "the run finished before it was killed"
    before_kill = torch.load(ckpt, map_location="cpu", weights_only=True)["elapsed_s"]
    _finish(_start(resumed, root, run))

    a = json.loads((straight / "result.json").read_text())
    b = json.loads((resumed / "result.json").read_text())
    assert a["resumed_from"] == 0
    assert b["resumed_from"] in (4, 8, 12)
    # The reported training time covers both sessions, not only the one after the kill.
    assert before_kill > 0 and b["train_time_s"] > before_kill
    keys = ["metrics", "best", "last", "history", "train_loss"]
    if run == "linear_probe_sweep":
        assert len(a["lr_sweep"]) == 3 and a["reported_lr"] == b["reported_lr"] == 1e-3
        keys += ["lr_sweep", "selected_by"]
    for key in keys:
        if key == "history":  # evaluation wall times differ, nothing else may
            strip = [{k: v for k, v in h.items() if k != "eval_s"} for h in a[key]]
            assert strip == [{k: v for k, v in h.items() if k != "eval_s"} for h in b[key]]
        else:
            assert json.dumps(a[key]) == json.dumps(b[key]), key
