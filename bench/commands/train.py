"""``unipbench train``: one fine-tuning, linear-probing or layer-wise-probing run.

Several processes: ``accelerate launch --multi_gpu --num_processes N -m bench.cli train ...``
on GPUs; on CPUs (gloo) ``torchrun --nproc_per_node N -m bench.cli train ...``, since
``accelerate launch --cpu`` starts a single process unless given an MPI hostfile.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

PROTOCOL_CHOICES = {
    "finetune": "fine_tune",
    "linear-probe": "linear_probe",
    "layerwise": "layerwise_probe",
}


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, lists,
    booleans, null), else kept as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def summary(result: dict, class_names: list[str]) -> str:
    """Metrics summary with per-class IoU, and per-layer / per-lr tables where present."""
    from bench.metrics import format_per_class_table

    mode = f" ({result['mode']})" if "mode" in result else ""
    lines = [f"{result['protocol']}{mode} on {result['dataset']['name']} "
             f"{result['dataset']['eval_split']}, {result['iterations']} iterations, "
             f"{result['wall_time_s']:.0f}s"]
    if "per_layer" in result:
        lines.append("block  mIoU")
        lines += [f"{int(k):>5}  {m['mIoU']:.2f}" for k, m in result["per_layer"].items()]
        lines.append(f"best block: {result['best_layer']}")
    if "lr_sweep" in result:
        lines += lr_sweep_table(result)
    lines.append(format_per_class_table(result["metrics"], class_names))
    best = result["best"]
    lines.append(f"best mIoU {best['mIoU']:.2f} at iteration {best['iteration']}")
    return "\n".join(lines)


def lr_sweep_table(result: dict) -> list[str]:
    """One line per head of an lr sweep, the reported one marked, and the rule that chose
    it (results written before ``selected_by`` existed reported the best final mIoU)."""
    reported = result.get("reported_lr", result.get("best_lr"))
    rule = result.get("selected_by", "best_on_eval")
    lines = ["  lr        head       mIoU (last)  mIoU (best)"]
    for r in result["lr_sweep"]:
        mark = "*" if r.get("reported", r["lr"] == reported) else " "
        lines.append(f"{mark} {r['lr']:<9g} {r.get('head', ''):<10} "
                     f"{r['last']['mIoU']:11.2f}  {r['best']['mIoU']:11.2f}")
    why = {"paper_lr": "the settings' lr", "best_on_eval": "best final mIoU on "
           f"{result['dataset']['eval_split']}"}.get(rule, rule)
    head = f" ({result['reported_head']} head)" if "reported_head" in result else ""
    lines.append(f"reported lr (*): {reported:g}{head}, selected by {rule} ({why})")
    return lines


def run(args: argparse.Namespace) -> int:
    from bench.cli import CommandError
    from bench.data import get_dataset_info
    from bench.protocols import run_protocol
    from bench.protocols.engine import TrainingDiverged

    model = {
        "adapter": args.adapter,
        "size": args.size,
        "checkpoint": args.checkpoint,
        "sha256": args.sha256,
        "options": parse_assignments(args.option, "--option"),
    }
    dataset = {"name": args.dataset, "root": args.root, "layout": args.layout}
    try:
        result = run_protocol(
            PROTOCOL_CHOICES[args.protocol], model, dataset,
            settings=parse_assignments(args.set, "--set"), workdir=args.workdir,
            seed=args.seed, progress=not args.no_progress,
        )
    except TrainingDiverged as exc:
        raise CommandError(str(exc)) from None
    if int(os.environ.get("RANK", "0")) != 0:  # launched on several processes: print once
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(summary(result, list(get_dataset_info(args.dataset).classes)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune, linear-probe or layer-wise-probe one backbone on one dataset",
        description="Runs one protocol; a rerun in the same workdir resumes. A finished "
        "workdir prints its stored result, saying so, when the data (a fingerprint of each "
        "split) and the checkpoint (its sha256) are those it was made from, with the same "
        "settings and seed; otherwise it is refused, naming what differs.",
    )
    p.add_argument("protocol", choices=list(PROTOCOL_CHOICES))
    p.add_argument("--adapter", required=True, help="pre-training method (unipbench adapters)")
    p.add_argument("--size", required=True, help="ViT size: T, S, B or L")
    p.add_argument(
        "--checkpoint",
        help="weights file, HF export folder, URL or hf://owner/repo/FILE (default: random)",
    )
    p.add_argument("--sha256", help="expected sha256 of the checkpoint")
    p.add_argument("--dataset", required=True, help="registered dataset name (e.g. soda)")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--layout", help="on-disk layout (default: detected)")
    p.add_argument("--workdir", required=True, help="checkpoints and result.json go here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a protocol setting (repeatable), e.g. --set iters=2000")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="adapter option (repeatable), e.g. --option last_heads=16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)
