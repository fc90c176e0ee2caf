"""``unipbench flops``: multiply-adds and parameters of a backbone (+ neck + decode head)."""

from __future__ import annotations

import argparse
import json

from bench.assignments import parse_assignments
from bench.backbones.flops import model_flops


def run(args: argparse.Namespace) -> int:
    if args.backbone_only and (args.neck or args.head or args.num_classes):
        raise ValueError("--backbone-only counts no neck or head: drop --neck/--head/--num-classes")
    num_classes = args.num_classes
    if num_classes is None and args.dataset is not None:
        from bench.data import get_dataset_info

        num_classes = get_dataset_info(args.dataset).num_classes
    report = model_flops(
        args.adapter,
        args.size,
        args.img_size,
        neck=args.neck,
        head=args.head,
        num_classes=num_classes,
        options=parse_assignments(args.option, "--option"),
        decode_head=not args.backbone_only,
        protocol=args.protocol,
    )
    data = report.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    h, w = report.input_size
    print(f"{args.adapter} ViT-{args.size} at {h}x{w}: {report.convention}, {report.counter}")
    lines = [("backbone", report.backbone_gmacs, report.backbone_gmacs_no_attn,
              report.backbone_params_m)]
    if report.num_classes is not None:  # not --backbone-only
        parts = " + ".join(x for x in (report.neck, report.head) if x) or "heads"
        lines.append((f"+ {parts} (no aux)", report.total_gmacs, report.total_gmacs_no_attn,
                      report.params_m))
    width = max(len(name) for name, *_ in lines)
    for name, with_attn, without, params in lines:
        print(f"  {name:<{width}}  {with_attn:9.3f} GMACs  ({without:.3f} without attention "
              f"matmuls, mmcv's convention)  {params:8.2f} M params")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flops",
        help="count GMACs (one multiply-add = one flop) and parameters",
        description="Backbone alone and the model a protocol evaluates (default: the "
        "fine-tuning model, backbone + neck + decode head without the auxiliary head: "
        "multi-level neck, or LL-FPN for UNIP, + UPerNet; --neck/--head replace them), "
        "counted with fvcore at the given input size. Both "
        "conventions are given: with attention matmuls (timm's tables) and without (mmcv's, "
        "used by the UNIP paper).",
    )
    p.add_argument("--adapter", required=True, help="adapter name (see `unipbench adapters`)")
    p.add_argument("--size", required=True, help="T, S, B or L")
    p.add_argument("--img-size", type=int, default=224, help="square input side (default 224)")
    p.add_argument("--neck", help="neck registry name (default: the adapter's fine-tuning neck)")
    p.add_argument("--head", help="decode head registry name (default: uperhead)")
    p.add_argument("--protocol",
                   help="count the model this protocol evaluates (a registered name or alias; "
                   "default: the first declared, fine-tuning)")
    p.add_argument("--num-classes", type=int,
                   help="classes of the decode head (default: --dataset's, else 21 as SODA)")
    p.add_argument("--dataset", help="take the number of classes from this dataset")
    p.add_argument("--backbone-only", action="store_true",
                   help="count the backbone alone (total = backbone)")
    p.add_argument(
        "--option", action="append", metavar="KEY=VALUE",
        help="adapter option, e.g. last_heads=16 for unip (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)
