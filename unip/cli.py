"""UNIP's ``unipbench`` commands (entry points): ``analyze``, ``distill``, ``infmix``.

Each ``add_*`` receives the sub-parsers object; handlers parse, call one function, print.
User errors are raised as ValueError / FileNotFoundError: the CLI prints one line, exit 2.
"""

from __future__ import annotations

import argparse

from unip.nmi import GLOBAL_THRESHOLD, LOCAL_THRESHOLD, NMI_TARGET


def _analyze_attention(args: argparse.Namespace) -> int:
    from unip.analysis import analysis_table
    from unip.analysis_run import run_attention_analysis

    options = {}
    if args.last_heads is not None:
        options["last_heads"] = args.last_heads
    if args.depth is not None:
        options["depth"] = args.depth
    res = run_attention_analysis(
        args.adapter,
        args.size,
        args.data,
        args.out,
        checkpoint=args.checkpoint,
        num_images=args.num_images,
        img_size=args.img_size,
        target=args.target,
        local_threshold=args.local_threshold,
        global_threshold=args.global_threshold,
        normalisation="infrared" if args.infrared_norm else "backbone",
        maps_layers=args.maps_layers,
        query_tokens=args.query_tokens,
        maps_images=args.maps_images,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        **options,
    )
    a = res.analysis
    print(analysis_table(a))
    print(
        f"\nlayer closest to NMI {a.target:g}: {a.teacher_layer} "
        f"(NMI {a.layers[a.teacher_layer - 1].mean:.4f}, {a.heads[a.teacher_layer - 1]} heads)"
    )
    chosen = a.patterns[a.teacher_layer - 1]
    if chosen != "hybrid":
        print(
            f"warning: no layer is hybrid; the closest one to the target is {chosen} "
            f"(NMI {a.layers[a.teacher_layer - 1].mean:.4f} vs {a.target:g}): not a good "
            "NMI-HAD teacher layer (random weights, wrong normalisation or too few images?)"
        )
    print(f"wrote {res.json_path}, {res.plot_path}" + "".join(f", {p}" for p in res.map_paths))
    return 0


def add_analyze_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="UNIP analyses of pre-trained backbones")
    what = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    a = what.add_parser(
        "attention",
        help="NMI of every layer's attention, its pattern, the NMI-HAD layer, attention maps",
    )
    a.add_argument("--adapter", required=True, help="pre-training method (see unipbench adapters)")
    a.add_argument("--size", required=True, help="T, S, B or L")
    a.add_argument("--checkpoint", help="weights file, HF folder or URL; omit for random init")
    a.add_argument("--last-heads", type=int, help="UNIP students: heads of the last block")
    a.add_argument("--depth", type=int, help=argparse.SUPPRESS)  # shallow test models
    a.add_argument("--data", required=True, help="folder of images (searched recursively)")
    a.add_argument("--num-images", type=int, default=64, help="images, spread over the folder")
    a.add_argument("--img-size", type=int, default=224)
    a.add_argument("--target", type=float, default=NMI_TARGET, help="NMI-HAD target NMI")
    a.add_argument(
        "--local-threshold",
        type=float,
        default=LOCAL_THRESHOLD,
        help="mean NMI at or above: local pattern",
    )
    a.add_argument(
        "--global-threshold",
        type=float,
        default=GLOBAL_THRESHOLD,
        help="mean NMI at or below: global pattern (between: hybrid)",
    )
    a.add_argument(
        "--infrared-norm",
        action="store_true",
        help="normalise with the infrared statistics instead of the backbone's",
    )
    a.add_argument("--out", default="attention-analysis", help="output folder")
    a.add_argument(
        "--maps-layers",
        type=int,
        nargs="+",
        help="1-based layers to draw (default: first, closest-to-target, last)",
    )
    a.add_argument(
        "--query-tokens", type=int, nargs="+", help="row-major patch indices of the queries to draw"
    )
    a.add_argument("--maps-images", type=int, default=1, help="images to draw maps for")
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--num-workers", type=int, default=0)
    a.set_defaults(func=_analyze_attention)


def _distill(args: argparse.Namespace) -> int:
    from unip.distill import distill
    from unip.distill_config import load_config

    cfg = load_config(args.config, args.set)
    res = distill(cfg)
    loss = "" if res.final_loss is None else f", last logged loss {res.final_loss:.4f}"
    print(
        f"student ({cfg.student.size}, last block {res.last_heads} heads, teacher layer "
        f"{res.teacher_layer}) after {res.steps} steps{loss}: {res.student_path}"
    )
    return 0


def add_distill_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="pre-train a UNIP student by NMI-HAD distillation")
    p.add_argument("config", help="distillation YAML (see unip/configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.epochs=2 (repeatable)",
    )
    p.set_defaults(func=_distill)


def _infmix_build(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from unip.infmix import build_infmix, summary_path, write_manifest

    entries, report = build_infmix(
        args.infrared, args.imagenet, args.coco, args.per_class, args.workers
    )
    given = [*args.infrared, *(d for d in (args.imagenet, args.coco) if d)]
    if not entries:
        raise ValueError(f"no readable images found in {', '.join(given)}; nothing written")
    out = write_manifest(entries, report, args.out)
    rows = [[src, n] for src, n in report.counts.items()] + [["total", report.total]]
    print(tabulate(rows, headers=["source", "images"], tablefmt="github"))
    print(f"duplicates removed: {len(report.duplicates)}; skipped: {len(report.skipped)}")
    for s in report.skipped:
        print(f"  skipped {s['path']}: {s['reason']}")
    for src, n in report.counts.items():
        if n == 0:
            print(f"warning: source {src} contributed no images (empty folder, or all skipped)")
    print(f"wrote {out} and {summary_path(out)}")
    return 0


def add_infmix_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infmix", help="build the InfMix pre-training manifest")
    what = p.add_subparsers(dest="infmix_command", metavar="ACTION", required=True)
    b = what.add_parser("build", help="collect, deduplicate and list the images of InfMix")
    b.add_argument(
        "--infrared",
        nargs="+",
        default=[],
        metavar="DIR",
        help="infrared image folders (every image, recursively)",
    )
    b.add_argument("--imagenet", metavar="DIR", help="ImageNet-style tree of class folders")
    b.add_argument("--coco", metavar="DIR", help="COCO-style folder (every image)")
    b.add_argument("--per-class", type=int, default=200, help="images per ImageNet class")
    b.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    b.add_argument("--workers", type=int, default=8, help="threads reading and hashing")
    b.set_defaults(func=_infmix_build)
