"""The k-NN probe on 1 process and on 2 gloo processes (CPU): each process builds the bank
from its shard of the training images and they all-gather it, so the bank, and every
number after it, must be the same.

Run as a script (``python test_knn_probe_distributed.py WORKDIR ROOT``) it is one process
of such a run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SETTINGS = {"crop_size": 128, "scale": [171, 128], "slide_crop": 128, "slide_stride": 96,
            "num_workers": 0, "memory_size": 480}  # 30 patches per image: sampling too



def _launch(workdir: Path, root: Path, world: int) -> dict:
    from local_launch import free_port, rank_env  # tests/: on the path under pytest only

    port = free_port()
    procs = []
    for rank in range(world):
        env = rank_env(rank, world, port)
        procs.append(subprocess.Popen([sys.executable, __file__, str(workdir), str(root)],
                                      env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out.decode()[-3000:]
    return json.loads((workdir / "result.json").read_text())


@pytest.mark.slow
def test_two_processes_build_the_same_bank_as_one(tmp_path):
    from protocol_job import make_soda

    root = make_soda(tmp_path / "soda")  # 16 training images, 4 test images
    one = _launch(tmp_path / "one", root, 1)
    two = _launch(tmp_path / "two", root, 2)
    assert one["device"]["num_processes"] == 1
    assert two["device"]["num_processes"] == 2
    assert one["bank"] == two["bank"]
    assert one["bank"]["patches"] == 16 * 30
    assert one["metrics"] == two["metrics"]


def main(argv: list[str]) -> int:
    workdir, root = argv
    import torch

    torch.set_num_threads(1)
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]  # protocol_job, test_knn_probe, single_thread
    from protocol_job import MODEL, dataset
    from test_knn_probe import enable_knn_probe

    from bench.protocols import run_protocol

    enable_knn_probe()
    run_protocol("knn_probe", MODEL, dataset(Path(root)), SETTINGS, workdir, progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
