"""Running a suite: expand, skip what the store has, resume the rest, record every outcome.

A run's id covers its inputs' content (see :mod:`bench.suites.matrix`), so a result is reused
only for the same data, weights, settings, seed and protocol version, and says so.

``execute_run`` is what a worker (this process, a local process, a SLURM task) does for
one run: the protocol (which resumes from the run's folder), FLOPs, one store record. A
failing run is recorded as failed with its error and the others go on.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from bench.checkpoints.reader import DigestCache, cache_root
from bench.results.store import (
    DEFAULT_STORE,
    RunRecord,
    append_record,
    done_record,
    latest_by_run,
    read_records,
)
from bench.suites.load import Suite
from bench.suites.matrix import Run, expand

DEFAULT_WORKDIR = Path("results/runs")
DEFAULT_SUITE = Path("suites/demo.yaml")
STATES = ("done", "failed", "partial", "pending")


def default_suite_path() -> Path:
    """suites/demo.yaml of this checkout (or of the working directory)."""
    from bench.results.provenance import REPO_ROOT

    for candidate in (REPO_ROOT / DEFAULT_SUITE, Path.cwd() / DEFAULT_SUITE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no SUITE given and the default {DEFAULT_SUITE} was found neither in {REPO_ROOT} "
        "nor in the working directory (a non-editable install does not ship it); "
        "pass a suite file, e.g. `unipbench run path/to/demo.yaml`"
    )


@dataclass
class Paths:
    """Where results go: the store file and the folder of per-run working directories."""

    store: Path
    workdir: Path

    @classmethod
    def resolve(cls, suite: Suite, store: str | Path | None, workdir: str | Path | None) -> Paths:
        """Command-line flag, else the suite's key, else the default."""
        st = store or suite.spec.store or DEFAULT_STORE
        wd = workdir or suite.spec.workdir or DEFAULT_WORKDIR
        return cls(Path(st).expanduser().resolve(), Path(wd).expanduser().resolve())

    def run_dir(self, run: Run) -> Path:
        return self.workdir / run.run_id

    def digests(self) -> DigestCache:
        """The checkpoint cache's digests: what expanding hashes, loading does not rehash."""
        return DigestCache(cache_root() / "digests")

    def check_writable(self) -> None:
        """Fail now, naming the path, if a run could not write its folder or its record
        (the store and its lock file), instead of after training."""
        from bench.diskio import check_writable_dir, check_writable_file

        check_writable_dir(self.workdir, "workdir")
        check_writable_file(self.store, "results store")
        check_writable_file(Path(f"{self.store}.lock"), "results store's lock file")


# ---------------------------------------------------------------------------- states
def run_states(
    runs: list[Run], paths: Paths, latest: dict[str, RunRecord] | None = None
) -> dict[str, tuple[str, RunRecord | None]]:
    """run id -> (state, record that decided it). Partial: a run folder but no record.
    ``latest``: the store's :func:`latest_by_run`, when the caller has read it already."""
    if latest is None:
        latest = latest_by_run(read_records(paths.store))
    out: dict[str, tuple[str, RunRecord | None]] = {}
    for run in runs:
        rec = latest.get(run.run_id)
        if rec is not None:
            out[run.run_id] = (rec.status, rec)
        elif _has_files(paths.run_dir(run)):
            out[run.run_id] = ("partial", None)
        else:
            out[run.run_id] = ("pending", None)
    return out


def _has_files(d: Path) -> bool:
    return d.is_dir() and any(d.iterdir())


# ---------------------------------------------------------------------------- datasets
def prepare_datasets(runs: list[Run], log: Callable[[str], None] = print) -> None:
    """Generate the synthetic datasets the runs need and do not have yet (once, locked).

    This comes before the runs' ids are fixed: an id covers the data's content, so it can
    only be taken once the data exists.
    """
    done: set[str] = set()
    for run in runs:
        if run.synthetic is None or run.dataset_root in done:
            continue
        done.add(run.dataset_root)
        root = Path(run.dataset_root)
        root.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root) + ".lock"):
            if _has_files(root):
                continue
            from bench.data.synth import synthesize

            syn = run.synthetic
            t0 = time.perf_counter()
            res = synthesize(run.dataset, root, train=syn["train"], test=syn["test"],
                             size=syn["size"], seed=syn["seed"], layout=run.layout)
            counts = ", ".join(f"{k} {v}" for k, v in res.counts.items())
            log(f"generated a synthetic {run.dataset} at {root} ({counts}; "
                f"{time.perf_counter() - t0:.1f} s)")


# ---------------------------------------------------------------------------- one run
def _flops(run: Run, settings: Any, num_classes: int) -> dict:
    report = _cached_flops(
        run.protocol, settings.model_dump_json(), run.adapter, run.size, num_classes,
        tuple(sorted(run.options.items())), run.checkpoint,
    )
    return report.to_dict()


@functools.lru_cache(maxsize=64)
def _cached_flops(protocol: str, settings_json: str, adapter: str, size: str,
                  num_classes: int, options: tuple, checkpoint: str | None) -> Any:
    from bench.backbones.flops import protocol_flops
    from bench.protocols.registry import get_protocol

    settings = get_protocol(protocol).settings.model_validate_json(settings_json)
    return protocol_flops(protocol, settings, adapter, size, num_classes, dict(options),
                          checkpoint=checkpoint)


def _base_record(run: Run) -> dict[str, Any]:
    from bench.results.provenance import git_info, host_name, package_versions

    return {
        "run_id": run.run_id,
        "suite": run.suite,
        "protocol": run.protocol,
        "protocol_version": run.protocol_version,
        "config": run.config(),
        "model_name": run.model_name,
        "adapter": run.adapter,
        "size": run.size,
        "checkpoint": run.checkpoint,
        "checkpoint_sha256": run.checkpoint_sha256,
        "random_init": run.checkpoint is None,
        "dataset": run.dataset,
        "dataset_root": run.dataset_root,
        "seed": run.seed,
        "git": git_info(),
        "versions": package_versions(),
        "host": host_name(),
    }


def execute_run(
    run: Run,
    store: str | Path,
    workdir: str | Path,
    progress: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run one protocol, count its FLOPs and append its record (done or failed).

    Returns a short outcome (run id, status, primary metric and its value, error,
    seconds) for progress lines.
    Status ``busy`` when another process holds the run (two ``unipbench run`` of one
    suite must not train, or resume from, the same folder at once), with ``holder``
    saying which process when it is known; ``done`` with ``elsewhere`` set when another
    process finished and recorded it first (nothing is run or recorded again). In a
    multi-process run every rank trains; only rank 0 writes the record.
    """
    from filelock import Timeout

    if threads:
        import torch

        torch.set_num_threads(threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank must take part
        return _execute(run, store, workdir, progress)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(workdir) / f"{run.run_id}.lock"), timeout=0)
    holder_file = Path(workdir) / f"{run.run_id}.holder"
    try:
        lock.acquire()
    except Timeout:
        return {"run_id": run.run_id, "status": "busy", "score": None, "seconds": 0.0,
                "holder": _holder(holder_file),
                "error": "another process is running it; this one left it alone"}
    try:
        recorded = done_record(store, run.run_id)
        if recorded is not None:  # finished by another process since this one looked
            return _elsewhere(run, recorded)
        _write_holder(holder_file)
        return _execute(run, store, workdir, progress)
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()


def _write_holder(path: Path) -> None:
    """Who holds a run, for the message another process prints when it finds it busy."""
    import json

    from bench.diskio import atomic_write_text
    from bench.results.provenance import host_name

    atomic_write_text(path, json.dumps({"pid": os.getpid(), "host": host_name()}))


def _holder(path: Path) -> str | None:
    import json

    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet, or already gone


def _elsewhere(run: Run, rec: RunRecord) -> dict[str, Any]:
    return {"run_id": run.run_id, "status": "done", "elsewhere": True, "seconds": None,
            **_score(run.protocol, rec.metrics), "error": None}


def _score(protocol: str, metrics: dict | None) -> dict[str, Any]:
    """``metric`` (its label) and ``score`` (its value or None) of a run's primary metric."""
    from bench.protocols.registry import primary_score

    metric, value = primary_score(protocol, metrics)
    return {"metric": metric.key, "score": value}


def _check_same_inputs(run: Run, result: dict, run_dir: Path) -> None:
    """The data and weights the protocol read must be those the run id was made from."""
    from bench.identity import differences

    measured = result.get("identity") or {}
    expected = run.identity
    old = {"data": expected["dataset"]["content"]}
    new = {"data": (measured.get("dataset") or {}).get("content")}
    if run.checkpoint_sha256:
        old["weights"] = run.checkpoint_sha256
        new["weights"] = (measured.get("model") or {}).get("weights")
    if old != new:
        import shutil

        # What the folder holds was made from other inputs than its id says: never resume
        # from it, nor return it later as this run's result.
        shutil.rmtree(run_dir, ignore_errors=True)
        raise RuntimeError(
            "the data or checkpoint changed after the suite's run ids were taken ("
            + "; ".join(differences(old, new)) + "); run the suite again"
        )


def _execute(run: Run, store: str | Path, workdir: str | Path, progress: bool) -> dict:
    from bench.data import get_dataset_info
    from bench.protocols import run_protocol
    from bench.protocols.config import settings_from_dict

    run_dir = Path(workdir) / run.run_id
    rec = _base_record(run)
    t0 = time.perf_counter()
    try:
        settings = settings_from_dict(run.protocol, run.settings)
        result = run_protocol(
            run.protocol,
            model={"adapter": run.adapter, "size": run.size, "checkpoint": run.checkpoint,
                   "sha256": run.checkpoint_sha256, "options": run.options},
            dataset={"name": run.dataset, "root": run.dataset_root, "layout": run.layout},
            settings=settings,
            workdir=run_dir,
            seed=run.seed,
            progress=progress,
        )
        _check_same_inputs(run, result, run_dir)
        num_classes = get_dataset_info(run.dataset).num_classes
        flops = _flops(run, settings, num_classes)
        backbone = result.get("backbone", {})
        rec.update(
            status="done",
            checkpoint_sha256=backbone.get("checkpoint_sha256") or run.checkpoint_sha256,
            random_init=bool(backbone.get("random_init", run.checkpoint is None)),
            dataset_fingerprint=run.identity["dataset"]["content"],
            metrics=result.get("metrics"),
            best=result.get("best"),
            last=result.get("last"),
            extra=protocol_fields(result),
            inference=result.get("inference"),
            iterations=result.get("iterations"),
            flops=flops,
            params_m=flops["params_m"] if flops else None,
            wall_time_s=result.get("wall_time_s"),
            train_time_s=result.get("train_time_s"),
            device=result.get("device"),
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded, and the suite goes on with the next run
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "traceback.txt").write_text(traceback.format_exc())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        rec.update(status="failed", error=f"{type(exc).__name__}: {first}",
                   wall_time_s=round(time.perf_counter() - t0, 3))
    written = True
    if int(os.environ.get("RANK", "0")) == 0:
        written = append_record(store, rec)
    return {"run_id": run.run_id, "status": rec["status"],
            **_score(run.protocol, rec.get("metrics")),
            "error": rec.get("error"), "seconds": round(time.perf_counter() - t0, 1),
            "elsewhere": not written}


# What a result holds besides the protocol's own fields: the runner's bookkeeping, the
# training loop's common fields, and what the record stores under its own names.
COMMON_RESULT_FIELDS = frozenset({
    "protocol", "protocol_version", "settings", "backbone", "model", "dataset", "seed",
    "inference", "device", "wall_time_s", "identity", "fingerprint", "metrics", "best",
    "last", "history", "train_loss", "iterations", "resumed_from", "train_time_s",
})


def protocol_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The fields a protocol adds to its result (``mode``, ``per_layer``, ``lr_sweep``, a
    plug-in's own): kept in the record's ``extra`` without the store knowing them."""
    return {k: v for k, v in result.items() if k not in COMMON_RESULT_FIELDS}


def failed_outcome(run: Run, store: str | Path, error: str) -> dict[str, Any]:
    """Record a run whose worker died before it could record anything itself."""
    rec = _base_record(run)
    rec.update(status="failed", error=error)
    append_record(store, rec)
    return {"run_id": run.run_id, "status": "failed", "score": None, "error": error,
            "seconds": None}


# ---------------------------------------------------------------------------- a suite
@dataclass
class SuiteOutcome:
    runs: list[Run]
    skipped: list[Run] = field(default_factory=list)
    outcomes: dict[str, dict] = field(default_factory=dict)
    submitted: list[str] = field(default_factory=list)  # job ids of a cluster executor

    @property
    def failed(self) -> list[str]:
        return [k for k, o in self.outcomes.items() if o["status"] == "failed"]

    @property
    def busy(self) -> list[str]:
        """Runs another process held to the end: their results are not in yet."""
        return [k for k, o in self.outcomes.items() if o["status"] == "busy"]

    def running_elsewhere(self) -> str:
        """``running elsewhere: N runs (pid P on H, ...)`` for the busy runs."""
        holders = dict.fromkeys(self.outcomes[k].get("holder") or "holder unknown"
                                for k in self.busy)
        n = len(self.busy)
        return f"running elsewhere: {n} run{'s' if n != 1 else ''} ({', '.join(holders)})"


def outcome_line(run: Run, outcome: dict, index: int, total: int) -> str:
    head = f"[{index}/{total}] {outcome['status']:<6} {run.label}  ({run.run_id})"
    if outcome["status"] == "done":
        score = outcome.get("score")
        secs = outcome.get("seconds")
        metric = outcome.get("metric") or "score"
        return head + (f"  {metric} {score:.2f}" if score is not None else "") + (
            f"  {secs:.0f} s" if secs is not None else ""
        ) + ("  (recorded by another process)" if outcome.get("elsewhere") else "")
    if outcome["status"] == "busy":
        return head + f"  running elsewhere ({outcome.get('holder') or 'holder unknown'})"
    return head + f"  {outcome.get('error')}"


def select_runs(
    suite: Suite, paths: Paths, only: str | None = None, data: bool = True
) -> list[Run]:
    runs = expand(suite, paths.digests(), data=data)
    if only:
        runs = [r for r in runs if r.matches(only)]
        if not runs:
            raise ValueError(f"--only {only!r} matches none of the suite's runs")
    return runs


def reuse_line(run: Run, rec: RunRecord, commit: str | None) -> str:
    """One line for a result taken from the store: which, and what it was matched on."""
    from bench.identity import matched_on
    from bench.protocols.registry import primary_score

    metric, score = primary_score(run.protocol, rec.metrics)
    line = (f"  reusing {run.label} ({run.run_id}): done {rec.timestamp}"
            + (f", {metric.key} {score:.2f}" if score is not None else "")
            + f"; matched on {matched_on(run.identity)}")
    if commit and rec.git.commit and rec.git.commit != commit:
        line += f"; made at commit {rec.git.commit[:10]} (now {commit[:10]})"
    return line


def replaced_line(run: Run, old: RunRecord) -> str:
    """One line for a run whose earlier result in the store was of other inputs."""
    from bench.identity import differences

    before = old.config.get("identity")
    what = ("; ".join(differences(before, run.identity)) if isinstance(before, dict)
            else "recorded before run ids covered the data's content")
    return (f"  new run {run.label} ({run.run_id}): the stored result {old.run_id} of "
            f"{old.timestamp} is not reused: {what}")


def _slot(suite: str, model: str, size: str, dataset: str, protocol: str, seed: int) -> tuple:
    return (suite, model, size, dataset, protocol, seed)


def earlier_results(runs: list[Run], latest: dict[str, RunRecord]) -> dict[str, RunRecord]:
    """run id -> the last done record of the same suite row, model, dataset, protocol and
    seed made under another id (other data, weights or settings), for runs that have one."""
    current = {r.run_id for r in runs}
    by_slot: dict[tuple, RunRecord] = {}
    for rec in latest.values():  # store order: a later record of a slot wins
        if rec.status == "done" and rec.run_id not in current:
            by_slot[_slot(rec.suite, rec.model_name, rec.size, rec.dataset, rec.protocol,
                          rec.seed)] = rec
    out = {}
    for r in runs:
        rec = by_slot.get(_slot(r.suite, r.model_name, r.size, r.dataset, r.protocol, r.seed))
        if rec is not None:
            out[r.run_id] = rec
    return out


def run_suite(
    suite: Suite,
    paths: Paths,
    executor: Any,
    *,
    only: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> SuiteOutcome:
    """Run what is not done yet with ``executor`` (see :mod:`bench.suites.executors`).

    Each result taken from the store is named with what it matched on; each run whose
    row has a stored result of other inputs says what changed. Runs that another process
    holds are reported as ``busy`` (see :attr:`SuiteOutcome.busy`); one that process
    finishes meanwhile counts as done.
    """
    from tqdm import tqdm

    from bench.results.provenance import git_info

    paths.check_writable()
    # Synthetic data first: the run ids cover the data's content, taken after generation.
    plan = expand(suite, paths.digests(), data=False)
    prepare_datasets([r for r in plan if not only or r.matches(only)] or plan, log)
    runs = select_runs(suite, paths, only)
    latest = latest_by_run(read_records(paths.store))
    states = run_states(runs, paths, latest)
    todo = [r for r in runs if states[r.run_id][0] != "done"]
    result = SuiteOutcome(runs, skipped=[r for r in runs if states[r.run_id][0] == "done"])
    log(f"suite {suite.name}: {len(runs)} runs, {len(result.skipped)} done already, "
        f"{len(todo)} to run ({executor.name} executor); store {paths.store}")
    if result.skipped:
        commit = git_info()["commit"]
        for r in result.skipped:
            rec = states[r.run_id][1]
            assert rec is not None  # a done state always comes from a record
            log(reuse_line(r, rec, commit if isinstance(commit, str) else None))
    if not todo:
        return result
    earlier = earlier_results(todo, latest)
    for r in todo:
        if r.run_id in earlier:
            log(replaced_line(r, earlier[r.run_id]))
        if states[r.run_id][0] in ("partial", "failed"):
            log(f"  resuming {r.label} ({r.run_id}, {states[r.run_id][0]})")
    # The bar only on a terminal; logs and captured output get the per-run lines alone.
    show_bar = progress and sys.stderr.isatty()
    bar = tqdm(total=len(todo), desc=suite.name, unit="run", disable=not show_bar,
               dynamic_ncols=True)
    by_id = {r.run_id: r for r in todo}

    def on_result(run_id: str, outcome: dict) -> None:
        result.outcomes[run_id] = outcome
        line = outcome_line(by_id[run_id], outcome, len(result.outcomes), len(todo))
        (bar.write if show_bar else log)(line)
        bar.update(1)

    try:
        result.submitted = executor.run(todo, paths, on_result) or []
    finally:
        bar.close()
    for run_id in result.busy:  # the other process may have finished it meanwhile
        rec = done_record(paths.store, run_id)
        if rec is not None:
            result.outcomes[run_id] = _elsewhere(by_id[run_id], rec)
    if result.busy:
        log(result.running_elsewhere())
    return result
