"""``unipbench train PROTOCOL``: one run of a registered protocol (fine-tuning, linear or
layer-wise probing, or a plug-in's), named by its name or an alias.

Several processes: ``accelerate launch --multi_gpu --num_processes N -m bench.cli train ...``
on GPUs; on CPUs (gloo) ``torchrun --nproc_per_node N -m bench.cli train ...``, since
``accelerate launch --cpu`` starts a single process unless given an MPI hostfile.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from bench.assignments import parse_assignments


def _number(value: Any, digits: int = 2) -> str:
    return "nan" if value is None else f"{float(value):.{digits}f}"


def summary(result: dict, class_names: list[str]) -> str:
    """The run's metrics (per-class IoU when the result has it), best evaluation, and the
    per-layer / per-lr tables of protocols whose results hold them."""
    from bench.metrics import format_per_class_table
    from bench.protocols.registry import find_protocol

    declared = find_protocol(result["protocol"])
    metrics = result.get("metrics") or {}
    declared_metrics = declared.metrics if declared is not None else ()
    key = declared.primary.key if declared is not None else next(iter(metrics), "")
    mode = f" ({result['mode']})" if "mode" in result else ""
    iters = f", {result['iterations']} iterations" if "iterations" in result else ""
    lines = [f"{result['protocol']}{mode} on {result['dataset']['name']} "
             f"{result['dataset']['eval_split']}{iters}, {result['wall_time_s']:.0f}s"]
    if result.get("per_layer"):
        lines.append(f"block  {key}")
        lines += [f"{int(k):>5}  {_number(m.get(key))}" for k, m in result["per_layer"].items()]
        if "best_layer" in result:
            lines.append(f"best block: {result['best_layer']}")
    if result.get("lr_sweep"):
        lines += lr_sweep_table(result)
    if {"per_class_iou", "per_class_acc", "mIoU", "mAcc", "aAcc"} <= set(metrics):
        lines.append(format_per_class_table(metrics, class_names))
    for m in declared_metrics or ():
        if m.key not in ("mIoU", "mAcc", "aAcc") or "per_class_iou" not in metrics:
            lines.append(f"{m.label}: {_number(metrics.get(m.key), m.digits)}")
    if not declared_metrics:  # a result of a protocol not registered: every number
        lines += [f"{k}: {_number(v)}" for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
    best = result.get("best") or {}
    if key in best and "iteration" in best:
        lines.append(f"best {key} {_number(best[key])} at iteration {best['iteration']}")
    return "\n".join(lines)


def lr_sweep_table(result: dict) -> list[str]:
    """One line per head of an lr sweep, the reported one marked, and the rule that chose
    it (results written before ``selected_by`` existed reported the best final mIoU)."""
    reported = result.get("reported_lr", result.get("best_lr"))
    rule = result.get("selected_by", "best_on_eval")
    lines = ["  lr        head       mIoU (last)  mIoU (best)"]
    for r in result["lr_sweep"]:
        mark = "*" if r.get("reported", r["lr"] == reported) else " "
        if r.get("diverged_at") is not None:
            numbers = f"diverged at iteration {r['diverged_at']}: dropped"
        else:
            numbers = f"{r['last']['mIoU']:11.2f}  {r['best']['mIoU']:11.2f}"
        lines.append(f"{mark} {r['lr']:<9g} {r.get('head', ''):<10} {numbers}")
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
    from bench.protocols.registry import get_protocol

    protocol = get_protocol(args.protocol).name  # an unknown name fails before any work

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
            protocol, model, dataset,
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
    from bench.protocols.registry import ordered_protocols

    known = ", ".join(
        p.name + (f" ({', '.join(p.aliases)})" if p.aliases else "") for p in ordered_protocols()
    )
    p = sub.add_parser(
        "train",
        help="run one protocol (fine-tune, linear-probe, ...) of one backbone on one dataset",
        description="Runs one protocol; a rerun in the same workdir resumes. A finished "
        "workdir prints its stored result, saying so, when the data (a fingerprint of each "
        "split) and the checkpoint (its sha256) are those it was made from, with the same "
        "settings and seed; otherwise it is refused, naming what differs.",
    )
    p.add_argument("protocol", help=f"a registered protocol or alias: {known}")
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
