"""``python hold_run.py SUITE STORE WORKDIR ONLY RELEASE``: another ``unipbench run``.

Runs the suite's runs selected by ONLY in this process, as a second ``unipbench run``
would, but holds each one (lock taken, nothing trained yet) until the file RELEASE
exists; then trains and records it. The concurrency tests need a real second process:
the run lock is a file lock between processes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    suite_path, store, workdir, only, release = argv
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import bench.protocols
    from bench.suites.load import load_suite
    from bench.suites.runner import Paths, execute_run, select_runs

    real = bench.protocols.run_protocol

    def held(*args, **kwargs):
        while not Path(release).exists():
            time.sleep(0.1)
        return real(*args, **kwargs)

    bench.protocols.run_protocol = held  # the runner imports it when a run starts
    suite = load_suite(suite_path)
    for run in select_runs(suite, Paths(Path(store), Path(workdir)), only):
        outcome = execute_run(run, store, workdir)
        print(outcome["status"], run.run_id, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
