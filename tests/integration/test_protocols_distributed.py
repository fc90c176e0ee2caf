"""The same fine-tuning on 1 process and on 2 gloo processes (CPU) with the same global
batch: DDP gradients, synced BN, rank-sharded data and summed metrics must agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from local_launch import free_port, rank_env
from protocol_job import TINY_FT, make_soda

JOB = Path(__file__).with_name("protocol_job.py")
# No dropout or drop path: those draw from per-process RNG streams, which differ by
# design between one process and two.
SETTINGS = {
    **TINY_FT, "iters": 8, "log_interval": 1, "drop_path": 0.0, "head_dropout": 0.0,
    "aux_dropout": 0.0,
}



def _launch(workdir: Path, root: Path, world: int) -> None:
    port = free_port()
    args = [sys.executable, str(JOB), "fine_tune", str(workdir), str(root), json.dumps(SETTINGS)]
    procs = []
    for rank in range(world):
        env = rank_env(rank, world, port)
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-3000:]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    root = make_soda(tmp_path / "soda")  # 16 images: batches split evenly over 2 ranks
    _launch(tmp_path / "one", root, 1)
    _launch(tmp_path / "two", root, 2)
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert one["device"]["num_processes"] == 1
    assert two["device"]["num_processes"] == 2
    losses_1 = [x["loss"] for x in one["train_loss"]]
    losses_2 = [x["loss"] for x in two["train_loss"]]
    assert len(losses_1) == len(losses_2) == 8
    for a, b in zip(losses_1, losses_2, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (losses_1, losses_2)
    assert abs(one["metrics"]["mIoU"] - two["metrics"]["mIoU"]) < 0.1
    assert abs(one["metrics"]["aAcc"] - two["metrics"]["aAcc"]) < 0.1
    # Every test pixel was counted once: the ranks' shards were summed, not duplicated.
    assert one["metrics"]["pixels"] == two["metrics"]["pixels"]
