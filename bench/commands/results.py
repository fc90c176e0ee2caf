"""``unipbench table | plot``: leaderboards and figures regenerated from the results store."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.results.store import DEFAULT_STORE, RunRecord, read_records


def selected_records(args: argparse.Namespace) -> tuple[list[RunRecord], str]:
    """Records of ``--suite`` (a suite file: its runs; otherwise a suite name) or all."""
    from bench.results.tables import select_records

    store = Path(args.store) if args.store else None
    run_ids = None
    name = None
    title = "leaderboard"
    if args.suite and _looks_like_a_file(args.suite) and not Path(args.suite).is_file():
        what = "is a folder, not" if Path(args.suite).is_dir() else "does not exist: expected"
        raise FileNotFoundError(f"--suite {args.suite} {what} a suite file (or give a suite "
                                "name, as stored with each result)")
    if args.suite and Path(args.suite).is_file():
        from bench.suites.load import load_suite
        from bench.suites.runner import Paths, select_runs

        suite = load_suite(args.suite)
        paths = Paths.resolve(suite, store, None)
        store = paths.store
        run_ids = {r.run_id for r in select_runs(suite, paths)}
        title = f"{suite.name} leaderboard"
    elif args.suite:
        name = args.suite
        title = f"{name} leaderboard"
    store = store or DEFAULT_STORE
    if not Path(store).exists():
        raise FileNotFoundError(f"results store {store} does not exist (run a suite first)")
    records = select_records(
        read_records(store), suite=name, run_ids=run_ids,
        allow_mixed_versions=args.allow_mixed_versions,
    )
    if not records:
        what = f"suite {args.suite!r}" if args.suite else "any suite"
        raise ValueError(f"no finished runs of {what} in {store}")
    return records, title


def _looks_like_a_file(suite: str) -> bool:
    """A YAML file name or a path with a folder: not a suite name."""
    p = Path(suite)
    return p.suffix.lower() in (".yaml", ".yml") or len(p.parts) > 1


def table(args: argparse.Namespace) -> int:
    from bench.results.tables import build_leaderboard, load_reference, render

    records, title = selected_records(args)
    reference = None if args.no_reference else load_reference(args.reference)
    text = render(build_leaderboard(records, reference, title=title), args.format)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def plot(args: argparse.Namespace) -> int:
    from bench.results.plots import plot_layerwise, plot_miou_vs_flops

    records, _ = selected_records(args)
    written = plot_miou_vs_flops(records, args.out) + plot_layerwise(records, args.out)
    if not written:
        raise ValueError("nothing to plot: no results with their primary metric and FLOPs, "
                         "nor per-layer results")
    for p in written:
        print(f"wrote {p}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", help="a suite file (its runs) or a suite name; default: all")
    p.add_argument("--store", help=f"results store (default {DEFAULT_STORE})")
    p.add_argument("--allow-mixed-versions", action="store_true",
                   help="put results of different protocol versions in one table")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="leaderboard from the results store")
    _common(p)
    p.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    p.add_argument("--reference", help="published values (default "
                   "results/reference/paper-figure2.yaml)")
    p.add_argument("--no-reference", action="store_true", help="leave published values out")
    p.add_argument("--out", help="write to this file instead of printing")
    p.set_defaults(func=table)

    p = sub.add_parser("plot", help="metric vs GFLOPs per protocol and per-layer curves as PNG")
    _common(p)
    p.add_argument("--out", default="results/plots", help="folder (default results/plots)")
    p.set_defaults(func=plot)
