"""Where runs execute: this process (inline), local worker processes, or SLURM.

All three call :func:`bench.suites.runner.execute_run` for each run, which writes the run's
record itself, so a store is complete whichever executor ran it. ``run(runs, paths,
on_result)`` reports each outcome as it arrives and returns cluster job ids, if any.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.suites.load import ExecutorSpec
from bench.suites.matrix import Run
from bench.suites.runner import Paths, execute_run, failed_outcome
from bench.suites.spec import device_list

OnResult = Callable[[str, dict], None]
POLL_S = 1.0


class InlineExecutor:
    """One run after the other in this process; the protocol's own progress bar shows."""

    name = "inline"

    def __init__(self, progress: bool = False) -> None:
        self.progress = progress

    def run(self, runs: list[Run], paths: Paths, on_result: OnResult) -> list[str]:
        for run in runs:
            on_result(run.run_id, execute_run(run, paths.store, paths.workdir, self.progress))
        return []


def _poll(jobs: dict[str, tuple[Run, Any]], paths: Paths, on_result: OnResult) -> None:
    """Report the finished jobs among ``jobs`` and drop them from it."""
    for run_id, (run, job) in list(jobs.items()):
        if not job.done():
            continue
        del jobs[run_id]
        try:
            outcome = job.result()
        except Exception as exc:  # the worker died (killed, timed out) before recording
            text = str(exc).strip().splitlines()
            outcome = failed_outcome(
                run, paths.store, f"worker {job.job_id} died: {text[-1] if text else exc!r}"
            )
        on_result(run_id, outcome)


def visible_gpus() -> list[str]:
    """This process's GPUs, as ``CUDA_VISIBLE_DEVICES`` names them (indices, UUIDs or MIG
    ids), else as the indices CUDA counts; none on a machine without CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return device_list(env)
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def execute_on(devices: str, run: Run, store: str, workdir: str, threads: int) -> dict[str, Any]:
    """A local worker: ``execute_run`` on the GPU(s) ``devices`` names ("" = none).

    Set before the run first touches CUDA (a fresh worker process has not), so it sees
    only its own device, whatever submitit's local controller exported."""
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    return execute_run(run, store, workdir, False, threads)


class LocalExecutor:
    """Up to ``workers`` runs at a time, each in its own process (submitit's local cluster).

    Each worker gets an equal share of this machine's cores for torch's threads and, when
    there are GPUs, one of them: worker slot ``i`` uses ``devices[i % len(devices)]``
    (default: the GPUs this process sees), so 8 workers on 8 GPUs train one run per GPU,
    and more workers than GPUs share them round-robin (said once, at the start).
    """

    name = "local"

    def __init__(self, workers: int = 2, timeout_min: int = 24 * 60,
                 folder: str | Path | None = None,
                 devices: list[str] | None = None) -> None:  # fmt: skip
        self.workers = max(1, workers)
        self.timeout_min = timeout_min
        self.folder = folder
        self.devices = visible_gpus() if devices is None else list(devices)

    def slot_devices(self) -> list[str]:
        """The ``CUDA_VISIBLE_DEVICES`` of each worker slot ("" = the CPU)."""
        if not self.devices:
            return [""] * self.workers
        return [self.devices[i % len(self.devices)] for i in range(self.workers)]

    def describe(self) -> str:
        """One line on how the workers map onto this machine's GPUs."""
        slots = self.slot_devices()
        if not self.devices:
            return f"local: {self.workers} worker(s) on the CPU (no GPU visible)"
        used = sorted(set(slots), key=slots.index)
        line = f"local: {self.workers} worker(s) on GPU(s) {','.join(used)}"
        if self.workers > len(self.devices):
            line += f" ({self.workers} workers for {len(self.devices)} GPU(s): some share one)"
        return line

    def run(self, runs: list[Run], paths: Paths, on_result: OnResult) -> list[str]:
        import submitit

        folder = Path(self.folder or paths.workdir / "_submitit") / "%j"
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(timeout_min=self.timeout_min)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        print(self.describe())
        free = list(enumerate(self.slot_devices()))  # (slot, devices) not running a job
        pending = list(runs)
        running: dict[str, tuple[Run, Any]] = {}
        slot_of: dict[str, tuple[int, str]] = {}
        ids: list[str] = []
        try:
            while pending or running:
                while pending and free:
                    run = pending.pop(0)
                    slot = free.pop(0)
                    job = ex.submit(execute_on, slot[1], run, str(paths.store),
                                    str(paths.workdir), threads)  # fmt: skip
                    running[run.run_id] = (run, job)
                    slot_of[run.run_id] = slot
                    ids.append(str(job.job_id))
                before = set(running)
                _poll(running, paths, on_result)
                for run_id in before - set(running):
                    free.append(slot_of.pop(run_id))
                free.sort()
                if running:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            for _, job in running.values():
                job.cancel(check=False)
            raise
        return ids


def execute_distributed(run: Run, store: str, workdir: str) -> dict[str, Any]:
    """A SLURM task of a multi-GPU run: one task per GPU, torch's env:// variables exported
    from SLURM's, so accelerate (inside the protocol) joins the process group."""
    import submitit

    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return execute_run(run, store, workdir)


class SlurmExecutor:
    """One SLURM job per run (as one job array by default), submitted with submitit.

    A run using more than one GPU gets one task per GPU on each node; the tasks export
    torch's distributed environment and accelerate takes it from there. By default the
    command returns after submitting; ``wait=True`` follows the jobs to the end.
    """

    name = "slurm"

    def __init__(self, spec: ExecutorSpec, wait: bool = False, job_name: str = "unipbench",
                 python: str | None = None) -> None:
        self.spec = spec
        self.wait = wait
        self.job_name = job_name
        self.python = python

    @property
    def processes_per_run(self) -> int:
        return max(1, self.spec.gpus_per_node) * self.spec.nodes

    def parameters(self) -> dict[str, Any]:
        """submitit SlurmExecutor parameters (its names, which become #SBATCH options)."""
        s = self.spec
        params: dict[str, Any] = {
            "job_name": self.job_name,
            "time": s.timeout_min,
            "nodes": s.nodes,
            "ntasks_per_node": max(1, s.gpus_per_node) if self.processes_per_run > 1 else 1,
            "setup": list(s.setup),
        }
        if s.gpus_per_node:
            params["gpus_per_node"] = s.gpus_per_node
        optional = {
            "partition": s.partition,
            "account": s.account,
            "qos": s.qos,
            "constraint": s.constraint,
            "cpus_per_task": s.cpus_per_task,
            "mem": f"{s.mem_gb:g}GB" if s.mem_gb else None,
            "array_parallelism": s.array_parallelism,
            "additional_parameters": dict(s.additional_parameters) or None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return params

    def run(self, runs: list[Run], paths: Paths, on_result: OnResult) -> list[str]:
        import submitit

        folder = Path(self.spec.folder or paths.workdir / "_submitit") / "%j"
        ex = submitit.SlurmExecutor(folder=folder, python=self.python)
        ex.update_parameters(**self.parameters())
        fn: Callable[..., dict] = (
            execute_distributed if self.processes_per_run > 1 else execute_run
        )
        args = (str(paths.store), str(paths.workdir))
        if self.spec.array and len(runs) > 1:
            with ex.batch():
                jobs = [ex.submit(fn, run, *args) for run in runs]
        else:
            jobs = [ex.submit(fn, run, *args) for run in runs]
        ids = [str(j.job_id) for j in jobs]
        for run, job in zip(runs, jobs, strict=True):
            print(f"submitted {run.label} ({run.run_id}) as SLURM job {job.job_id}")
        if self.wait:
            running = {run.run_id: (run, job) for run, job in zip(runs, jobs, strict=True)}
            while running:
                _poll(running, paths, on_result)
                if running:
                    time.sleep(30 * POLL_S)
        return ids


def make_executor(
    kind: str | None,
    spec: ExecutorSpec,
    *,
    workers: int | None = None,
    wait: bool = False,
    job_name: str = "unipbench",
    progress: bool = False,
) -> InlineExecutor | LocalExecutor | SlurmExecutor:
    """The executor ``kind`` (flag) or the suite's, configured from the suite's section."""
    kind = kind or spec.kind
    if kind == "inline":
        return InlineExecutor(progress=progress)
    if kind == "local":
        return LocalExecutor(workers or spec.workers, spec.timeout_min, spec.folder, spec.devices)
    if kind == "slurm":
        return SlurmExecutor(spec, wait=wait, job_name=job_name)
    raise ValueError(f"unknown executor {kind!r}; use inline, local or slurm")
