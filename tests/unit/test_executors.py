"""Executors: what SLURM would be asked for, inspected without a cluster (fake sbatch)."""

from __future__ import annotations

import os
import pickle
import stat
import textwrap
from pathlib import Path

import pytest

from bench.suites.executors import (
    InlineExecutor,
    LocalExecutor,
    SlurmExecutor,
    execute_distributed,
    make_executor,
)
from bench.suites.load import ExecutorSpec, load_suite
from bench.suites.matrix import expand
from bench.suites.runner import Paths, execute_run

SUITE = """\
suite: slurm-unit
protocol_version: "2.0"
models: [{adapter: mae, size: T}, {adapter: deit, size: S}]
datasets: [{name: soda, root: data/soda}]
protocols: {fine_tune: {}}
executor:
  kind: slurm
  partition: gpu
  account: vision
  nodes: 2
  gpus_per_node: 4
  cpus_per_task: 6
  mem_gb: 64
  timeout_min: 600
  array_parallelism: 1
  setup: ["module load cuda/12.4"]
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """sbatch and srun stand-ins on PATH; sbatch logs its arguments and answers like SLURM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    scripts = {
        "sbatch": f'#!/bin/sh\necho "$@" >> {log}\necho "Submitted batch job 4242"\n',
        "srun": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        p = bin_dir / name
        p.write_text(text)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def suite_runs(tmp_path: Path, text: str = SUITE):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(text))
    suite = load_suite(p)
    return suite, expand(suite), Paths(tmp_path / "store.jsonl", tmp_path / "runs")


def submission_files(paths: Paths) -> list[Path]:
    return sorted((paths.workdir / "_submitit").rglob("*_submission.sh"))


def test_multi_gpu_array_submission(tmp_path: Path, fake_slurm: Path) -> None:
    suite, runs, paths = suite_runs(tmp_path)
    ex = make_executor(None, suite.spec.executor, job_name="unipbench-slurm-unit")
    assert isinstance(ex, SlurmExecutor) and ex.processes_per_run == 8
    ids = ex.run(runs, paths, on_result=lambda *_: pytest.fail("must not wait"))
    assert ids == ["4242_0", "4242_1"]  # one job array, a task per run
    assert fake_slurm.read_text().count("\n") == 1  # a single sbatch call
    (script,) = submission_files(paths)
    text = script.read_text()
    for flag in ("--array=0-1%1", "--partition=gpu", "--account=vision", "--nodes=2",
                 "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=6",
                 "--mem=64GB", "--time=600", "--job-name=unipbench-slurm-unit"):
        assert f"#SBATCH {flag}" in text, flag
    assert "module load cuda/12.4" in text
    assert "srun --unbuffered" in text and "submitit.core._submit" in text
    # What each array task will run: one torch process per GPU, then the run itself.
    pickles = sorted((paths.workdir / "_submitit").rglob("4242_*_submitted.pkl"))
    assert len(pickles) == 2
    with open(pickles[0], "rb") as f:
        delayed = pickle.load(f)
    assert delayed.function is execute_distributed
    assert delayed.args[0].run_id == runs[0].run_id
    assert delayed.args[1:] == (str(paths.store), str(paths.workdir))


def test_single_gpu_one_job_per_run(tmp_path: Path, fake_slurm: Path) -> None:
    text = SUITE.replace("nodes: 2", "nodes: 1").replace("gpus_per_node: 4", "gpus_per_node: 1")
    text = text.replace("  array_parallelism: 1\n", "  array: false\n")
    suite, runs, paths = suite_runs(tmp_path, text)
    ex = make_executor("slurm", suite.spec.executor)
    # the fake sbatch answers 4242 every time, so both jobs share one folder
    assert ex.run(runs, paths, on_result=lambda *_: None) == ["4242", "4242"]
    assert fake_slurm.read_text().count("\n") == 2  # sbatch once per run
    script = submission_files(paths)[0].read_text()
    assert "--array" not in script
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --gpus-per-node=1" in script
    with open(sorted((paths.workdir / "_submitit").rglob("*_submitted.pkl"))[0], "rb") as f:
        assert pickle.load(f).function is execute_run


def test_no_slurm_no_submission(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither srun nor sbatch
    suite, runs, paths = suite_runs(tmp_path)
    with pytest.raises(RuntimeError, match="srun"):
        make_executor(None, suite.spec.executor).run(runs, paths, lambda *_: None)


def test_flags_override_the_suites_executor() -> None:
    spec = ExecutorSpec(kind="slurm", workers=3)
    assert isinstance(make_executor("inline", spec), InlineExecutor)
    local = make_executor("local", spec, workers=5)
    assert isinstance(local, LocalExecutor) and local.workers == 5
    assert make_executor("local", spec).workers == 3
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("cloud", spec)


def test_cli_flags_reach_the_sbatch_script(tmp_path: Path, fake_slurm: Path, capsys) -> None:
    from bench.cli import main

    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(SUITE))
    rc = main(["run", str(p), "--executor", "slurm", "--partition", "a100", "--nodes", "1",
               "--gpus-per-node", "2", "--timeout-min", "90", "--store",
               str(tmp_path / "store.jsonl"), "--workdir", str(tmp_path / "runs"),
               "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 job(s) submitted" in out and "as SLURM job 4242_1" in out
    (script,) = sorted((tmp_path / "runs" / "_submitit").rglob("*_submission.sh"))
    text = script.read_text()
    for flag in ("--partition=a100", "--nodes=1", "--gpus-per-node=2", "--ntasks-per-node=2",
                 "--time=90"):
        assert f"#SBATCH {flag}" in text, flag
    assert main(["run", str(p), "--executor", "slurm", "--gpus-per-node", "-1"]) == 2


class _DoneJob:
    """A submitit job stand-in that has finished by the first poll."""

    def __init__(self, job_id: int, run_id: str) -> None:
        self.job_id = job_id
        self.run_id = run_id

    def done(self) -> bool:
        return True

    def result(self) -> dict:
        return {"run_id": self.run_id, "status": "done", "score": None, "seconds": 0.0}


def test_local_workers_take_the_gpus_in_turn(tmp_path: Path, monkeypatch, capsys) -> None:
    """Slot i runs on devices[i % n]; a finished run's slot, GPU included, is reused."""
    import submitit

    submitted: list[tuple[str, str]] = []  # (CUDA_VISIBLE_DEVICES, run id)

    class FakeLocal:
        def __init__(self, folder: Path, cluster: str) -> None:
            assert cluster == "local"

        def update_parameters(self, **kwargs) -> None:
            pass

        def submit(self, fn, devices, run, store, workdir, threads):  # noqa: ANN001, ANN201
            assert fn is executors.execute_on
            submitted.append((devices, run.run_id))
            return _DoneJob(len(submitted), run.run_id)

    from bench.suites import executors

    monkeypatch.setattr(submitit, "AutoExecutor", FakeLocal)
    models = [("mae", "T"), ("mae", "S"), ("mae", "B"), ("deit", "S"), ("deit", "B")]
    five_models = "models: [" + ", ".join(f"{{adapter: {a}, size: {z}}}" for a, z in models) + "]"
    text = SUITE.replace("kind: slurm", "kind: local").splitlines()
    text[2] = five_models
    _, runs, paths = suite_runs(tmp_path, "\n".join(text))
    assert len({r.run_id for r in runs}) == 5
    ex = LocalExecutor(workers=3, devices=["GPU-a", "GPU-b"])
    seen: list[str] = []
    ex.run(runs, paths, lambda run_id, outcome: seen.append(run_id))
    assert [d for d, _ in submitted] == ["GPU-a", "GPU-b", "GPU-a", "GPU-a", "GPU-b"]
    assert [r for _, r in submitted] == [r.run_id for r in runs]
    assert len(seen) == 5
    assert "3 worker(s) on GPU(s) GPU-a,GPU-b (3 workers for 2 GPU(s): some share one)" in (
        capsys.readouterr().out
    )


def test_local_workers_default_to_the_visible_gpus(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert LocalExecutor(workers=4).slot_devices() == ["3", "5", "3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert LocalExecutor(workers=2).slot_devices() == ["", ""]
    assert "on the CPU" in LocalExecutor(workers=2).describe()
    # The suite's executor.devices, then the flag, choose instead.
    spec = ExecutorSpec(kind="local", devices=["7"])
    assert make_executor(None, spec, workers=2).slot_devices() == ["7", "7"]


def test_a_local_worker_sees_only_its_gpu(monkeypatch) -> None:
    from bench.suites import executors

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what submitit's controller exports
    seen = {}

    def fake_execute_run(run, store, workdir, progress, threads):  # noqa: ANN001, ANN202
        seen.update(env=os.environ["CUDA_VISIBLE_DEVICES"], threads=threads, run=run)
        return {"status": "done"}

    monkeypatch.setattr(executors, "execute_run", fake_execute_run)
    assert executors.execute_on("5", "RUN", "store", "work", 3) == {"status": "done"}
    assert seen == {"env": "5", "threads": 3, "run": "RUN"}
