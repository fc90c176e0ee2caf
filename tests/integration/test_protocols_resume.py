"""Kill a fine-tuning run with SIGKILL after a checkpoint, rerun it: bit-identical result."""

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
from protocol_job import TINY_FT, make_soda

JOB = Path(__file__).with_name("protocol_job.py")
# Checkpoints every 4 steps, evaluations at 8 and 16: the resumed run has to restore
# the best-so-far, the lr schedule position, the optimiser moments, dropout/drop-path
# RNG streams and the data position.
SETTINGS = {**TINY_FT, "iters": 16, "checkpoint_interval": 4, "eval_interval": 8}


def _start(workdir: Path, root: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(JOB), "fine_tune", str(workdir), str(root), json.dumps(SETTINGS)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()[-3000:]


@pytest.mark.slow
def test_sigkill_then_rerun_gives_bit_identical_metrics(tmp_path):
    root = make_soda(tmp_path / "soda")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _finish(_start(straight, root))

    proc = _start(resumed, root)
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
    _finish(_start(resumed, root))

    a = json.loads((straight / "result.json").read_text())
    b = json.loads((resumed / "result.json").read_text())
    assert a["resumed_from"] == 0
    assert b["resumed_from"] in (4, 8, 12)
    # The reported training time covers both sessions, not only the one after the kill.
    assert before_kill > 0 and b["train_time_s"] > before_kill
    for key in ("metrics", "best", "last", "history", "train_loss"):
        if key == "history":  # evaluation wall times differ, nothing else may
            strip = [{k: v for k, v in h.items() if k != "eval_s"} for h in a[key]]
            assert strip == [{k: v for k, v in h.items() if k != "eval_s"} for h in b[key]]
        else:
            assert json.dumps(a[key]) == json.dumps(b[key]), key
