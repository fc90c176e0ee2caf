"""``unipbench data``: list the datasets, prepare a download, check a copy on disk, write
synthetic data."""

from __future__ import annotations

import argparse
import json
import time

from bench.data import get_dataset_info, list_datasets
from bench.data.check import check_dataset
from bench.data.synth import synthesize


def run_list(args: argparse.Namespace) -> int:
    infos = [get_dataset_info(n) for n in list_datasets()]
    if args.json:
        print(json.dumps([i.summary() for i in infos], indent=2))
        return 0
    for i in infos:
        layouts = ", ".join(lay.name for lay in i.layouts)
        print(
            f"{i.name:<14} {i.modality:<8} {i.num_classes:>3} classes  "
            f"splits {'/'.join(i.splits):<22} layouts {layouts}"
        )
    return 0


def run_check(args: argparse.Namespace) -> int:
    report = check_dataset(
        args.dataset, args.root, splits=args.split or None, full=not args.quick, layout=args.layout
    )
    print(report.format())
    return 0 if report.ok else 1


def run_prepare(args: argparse.Namespace) -> int:
    from bench.data.prepare import prepare_dataset

    t0 = time.perf_counter()
    result = prepare_dataset(args.name, args.sources, args.root, full_check=not args.quick)
    print(f"{result.summary()} in {time.perf_counter() - t0:.1f} s")
    assert result.report is not None
    print(result.report.format())
    return 0 if result.report.ok else 1


def run_synth(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    res = synthesize(
        args.like,
        args.root,
        train=args.train,
        test=args.test,
        size=args.size,
        seed=args.seed,
        layout=args.layout,
    )
    n = sum(c for s, c in res.counts.items() if s != "val_test")
    counts = ", ".join(f"{s} {c}" for s, c in res.counts.items())
    print(
        f"wrote a synthetic {res.dataset} dataset (layout {res.layout!r}) to {res.root}: "
        f"{counts} ({n} images in {time.perf_counter() - t0:.1f} s)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: list, prepare a download, check a copy, synthesize")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    ls = dsub.add_parser("list", help="registered datasets, their classes, splits and layouts")
    ls.add_argument("--json", action="store_true", help="print JSON instead of text")
    ls.set_defaults(func=run_list)

    pr = dsub.add_parser(
        "prepare",
        help="turn a downloaded release (archive or folder) into a checked dataset folder",
        description="Extract (or read) the public release of NAME, link it into ROOT when the "
        "loader reads it as it is or convert it (MFNet: thermal channel; SCUT-Seg: class ids), "
        "then run `data check`. A rerun resumes an interrupted one. Sources and folder "
        "trees: docs/datasets.md.",
    )
    pr.add_argument("name", help="registered dataset name, e.g. mfnet_thermal")
    pr.add_argument(
        "--from", dest="sources", action="append", required=True, metavar="ARCHIVE_OR_FOLDER",
        help="the release as downloaded: a zip/tar archive (repeat for a download split into "
        "parts) or the extracted folder",
    )
    pr.add_argument("--root", required=True, help="the dataset folder to create or complete")
    pr.add_argument(
        "--quick", action="store_true", help="check a few samples instead of decoding all"
    )
    pr.set_defaults(func=run_prepare)

    ck = dsub.add_parser("check", help="audit a dataset folder; exit 1 when anything is wrong")
    ck.add_argument("--dataset", required=True, help="registered dataset name, e.g. soda")
    ck.add_argument("--root", required=True, help="the dataset's folder")
    ck.add_argument("--layout", help="layout name (default: detected from the folder)")
    ck.add_argument(
        "--split", action="append", help="check only this split (repeatable; default all)"
    )
    ck.add_argument(
        "--quick", action="store_true", help="decode a few samples instead of every file"
    )
    ck.set_defaults(func=run_check)

    sy = dsub.add_parser("synth", help="write a synthetic dataset in a registered layout")
    sy.add_argument("--like", required=True, help="dataset whose classes and layout to copy")
    sy.add_argument("--root", required=True, help="an empty or new folder to write into")
    sy.add_argument("--train", type=int, default=32, help="training images (default 32)")
    sy.add_argument("--test", type=int, default=8, help="images in each other split (default 8)")
    sy.add_argument("--size", type=int, default=128, help="image height; width = 4/3 height")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--layout", help="layout to write (default: the dataset's first)")
    sy.set_defaults(func=run_synth)
