"""``unipbench flops``: multiply-adds and parameters of a backbone (+ neck + decode head)."""

from __future__ import annotations

import argparse
import json

import yaml

from bench.flops import model_flops


def parse_options(pairs: list[str] | None) -> dict:
    """``["last_heads=16", "depth=4"]`` -> ``{"last_heads": 16, "depth": 4}`` (YAML values)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    report = model_flops(
        args.adapter,
        args.size,
        args.img_size,
        neck=args.neck,
        head=args.head,
        num_classes=args.num_classes,
        options=parse_options(args.option),
    )
    data = report.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    h, w = report.input_size
    print(f"{args.adapter} ViT-{args.size} at {h}x{w}: {report.convention}, {report.counter}")
    lines = [("backbone", report.backbone_gmacs, report.backbone_gmacs_no_attn,
              report.backbone_params_m)]
    if report.head is not None:
        lines.append((f"+ {report.neck} + {report.head} (no aux)", report.total_gmacs,
                      report.total_gmacs_no_attn, report.params_m))
    width = max(len(name) for name, *_ in lines)
    for name, with_attn, without, params in lines:
        print(f"  {name:<{width}}  {with_attn:9.3f} GMACs  ({without:.3f} without attention "
              f"matmuls, mmcv's convention)  {params:8.2f} M params")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flops",
        help="count GMACs (one multiply-add = one flop) and parameters",
        description="Backbone alone and, with --neck/--head/--num-classes, backbone + decode "
        "head (no auxiliary head), counted with fvcore at the given input size. Both "
        "conventions are given: with attention matmuls (timm's tables) and without (mmcv's, "
        "used by the UNIP paper).",
    )
    p.add_argument("--adapter", required=True, help="adapter name (see `unipbench adapters`)")
    p.add_argument("--size", required=True, help="T, S, B or L")
    p.add_argument("--img-size", type=int, default=224, help="square input side (default 224)")
    p.add_argument("--neck", help="neck registry name, e.g. multilevel or llfpn")
    p.add_argument("--head", help="decode head registry name, e.g. uperhead or linear")
    p.add_argument("--num-classes", type=int, help="classes of the decode head")
    p.add_argument(
        "--option", action="append", metavar="KEY=VALUE",
        help="adapter option, e.g. last_heads=16 for unip (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)
