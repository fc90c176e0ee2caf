"""``unipbench validate | run | ls``: check a suite, run it, list its runs and their state."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.suites.load import ExecutorSpec, Suite, SuiteError, load_suite
from bench.suites.spec import device_list

# `unipbench run` exit status: 0 every run is done; 1 a run failed (whatever else);
# 3 none failed but some are running in another process, so the results are incomplete.
# (2 is the CLI's for bad input.)
EXIT_FAILED = 1
EXIT_RUNNING_ELSEWHERE = 3


def _load(path: str | None) -> Suite:
    from bench.suites.runner import default_suite_path

    return load_suite(Path(path) if path else default_suite_path())


def validate(args: argparse.Namespace) -> int:
    from bench.suites.checks import check_files

    try:
        suite = _load(args.suite)
    except SuiteError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    from bench.suites.runner import Paths, select_runs

    runs = select_runs(suite, Paths.resolve(suite, None, None))
    print(f"{suite.path}: schema, names and settings OK ({len(runs)} runs)")
    problems = check_files(
        suite,
        load_checkpoints=not args.quick,
        full_data_check=not args.quick,
        log=lambda msg: print(f"  {msg}"),
    )
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("checkpoints and dataset folders OK")
    return 0


def run(args: argparse.Namespace) -> int:
    from bench.results.tables import build_leaderboard, load_reference, render, select_records
    from bench.suites.executors import make_executor
    from bench.suites.runner import Paths, run_suite

    suite = _load(args.suite)
    paths = Paths.resolve(suite, args.store, args.workdir)
    progress = not args.no_progress
    flags = {"partition": args.partition, "gpus_per_node": args.gpus_per_node,
             "nodes": args.nodes, "timeout_min": args.timeout_min, "devices": args.devices}
    spec = ExecutorSpec.model_validate(  # validated like the suite's own section
        {**suite.spec.executor.model_dump(), **{k: v for k, v in flags.items() if v is not None}}
    )
    executor = make_executor(
        args.executor, spec, workers=args.workers, wait=args.wait,
        # On a terminal a bar, elsewhere (nohup, SLURM) periodic plain lines: bench.progress
        job_name=f"unipbench-{suite.name}", progress=progress,
    )
    outcome = run_suite(suite, paths, executor, only=args.only, progress=progress)
    if outcome.submitted and not getattr(executor, "wait", True):
        print(f"{len(outcome.submitted)} job(s) submitted; follow them with "
              f"`unipbench ls {suite.path}` and `unipbench table --suite {suite.path}`")
    from bench.results.store import read_records

    ids = {r.run_id for r in outcome.runs}
    records = select_records(read_records(paths.store), run_ids=ids)
    if records:
        title = f"{suite.name} leaderboard"
        if len({r.run_id for r in records}) < len(ids):  # a table must not pass for complete
            title += f" (partial: {len({r.run_id for r in records})} of {len(ids)} runs)"
        lb = build_leaderboard(records, load_reference(), title=title)
        print()
        print(render(lb, "md"))
    status = 0
    if outcome.busy:
        print(f"{outcome.running_elsewhere()}; the leaderboard lacks them until they finish "
              f"(`unipbench ls {suite.path}` follows them, a rerun then completes it)",
              file=sys.stderr)
        status = EXIT_RUNNING_ELSEWHERE
    if outcome.failed:
        print(f"{len(outcome.failed)} run(s) failed: {', '.join(outcome.failed)} "
              f"(errors in the store; tracebacks in {paths.workdir}/<run id>/traceback.txt)",
              file=sys.stderr)
        status = EXIT_FAILED
    return status


def ls(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from bench.protocols.registry import primary_score
    from bench.suites.runner import Paths, run_states, select_runs

    suite = _load(args.suite)
    paths = Paths.resolve(suite, args.store, args.workdir)
    runs = select_runs(suite, paths, args.only)
    states = run_states(runs, paths)
    rows = []
    for r in runs:
        state, rec = states[r.run_id]
        detail = ""
        if rec is not None and rec.status == "done" and rec.metrics:
            metric, score = primary_score(r.protocol, rec.metrics)
            detail = f"{metric.key} {score:.2f}" if score is not None else ""
        elif rec is not None and rec.error:
            detail = rec.error[:80]
        rows.append([state, r.run_id, r.label, detail])
    print(tabulate(rows, ["state", "run id", "run", ""], tablefmt="plain"))
    counts = {s: sum(1 for v in states.values() if v[0] == s) for s in ("done", "failed",
                                                                          "partial", "pending")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" (store {paths.store})")
    older = _older_version_records(suite.spec.suite, paths.store)
    if older:
        print(
            "the store also holds "
            + ", ".join(f"{n} record(s) of {p} version {v}" for (p, v), n in older.items())
            + f" for suite {suite.spec.suite!r}: not reused (numbers of another protocol "
            "version are not comparable); `unipbench table --allow-mixed-versions` shows them"
        )
    return 0


def _older_version_records(suite_name: str, store: Path) -> dict[tuple[str, str], int]:
    """(protocol, version) -> count of this suite's stored runs made under another
    version of their protocol than the one registered now."""
    from bench.protocols.registry import find_protocol
    from bench.results.store import latest_by_run, read_records

    counts: dict[tuple[str, str], int] = {}
    for rec in latest_by_run(read_records(store)).values():
        declared = find_protocol(rec.protocol)
        current = declared.version if declared is not None else None
        if rec.suite == suite_name and rec.protocol_version != current:
            key = (rec.protocol, rec.protocol_version)
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _paths_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="results store (default: the suite's, else "
                   "results/store/results.jsonl)")
    p.add_argument("--workdir", help="per-run folders (default: the suite's, else results/runs)")
    p.add_argument("--only", metavar="PATTERN",
                   help="runs to include: glob over 'model-S/dataset/protocol/sN', a model, "
                   "dataset or protocol name, or a run-id prefix; comma-separated")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a suite without training")
    p.add_argument("suite", nargs="?", help="suite YAML (default suites/demo.yaml)")
    p.add_argument("--quick", action="store_true",
                   help="do not load checkpoints; sample dataset files instead of reading all")
    p.set_defaults(func=validate)

    p = sub.add_parser("run", help="run a suite (skips finished runs, resumes the rest)")
    p.add_argument("suite", nargs="?", help="suite YAML (default suites/demo.yaml)")
    p.add_argument("--executor", choices=["inline", "local", "slurm"],
                   help="where runs execute (default: the suite's executor.kind, else inline)")
    p.add_argument("--workers", type=int, help="local executor: runs at a time")
    p.add_argument("--devices", type=device_list, metavar="GPUS",
                   help="local executor: GPUs the workers take in turn, e.g. 0,1,2,3 "
                   "(default: every visible GPU; '' for the CPU only)")
    p.add_argument("--wait", action="store_true",
                   help="slurm: follow the jobs until they finish instead of returning")
    p.add_argument("--partition", help="slurm partition (overrides executor.partition)")
    p.add_argument("--gpus-per-node", type=int, help="slurm: GPUs per node for each run")
    p.add_argument("--nodes", type=int, help="slurm: nodes for each run")
    p.add_argument("--timeout-min", type=int, help="time limit per run, in minutes")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (off a terminal: no periodic progress lines)")
    _paths_args(p)
    p.set_defaults(func=run)

    p = sub.add_parser("ls", help="list a suite's runs: done, failed, partial or pending")
    p.add_argument("suite", nargs="?", help="suite YAML (default suites/demo.yaml)")
    _paths_args(p)
    p.set_defaults(func=ls)
