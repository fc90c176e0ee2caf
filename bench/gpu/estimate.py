"""GPU-hours of a suite, estimated from counted FLOPs, the schedules and an assumed throughput.

Per run: training FLOPs = 2 x iters x batch x (F + (1 + b) x T), where F is the forward
multiply-adds per image of the frozen part (no gradient), T those of the trained part and
b the backward's cost in forward passes (2 when gradients flow to the inputs and weights
of every layer, fine-tuning's whole segmentor; 1 for a linear head on frozen features,
which needs its weight gradient only). Evaluation FLOPs = 2 x evaluations x images x
sliding windows x E, E the forward multiply-adds of the evaluated model per window.
Multiply-adds come from our counter (:func:`bench.backbones.flops.count_macs`) on the models the
protocols build, at the settings' crop size. Hours = FLOPs / (assumed MFU x peak).

``python -m bench.gpu.estimate suites/paper/*.yaml`` prints the table of suites/paper/README.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Assumed sustained throughput: 40 % MFU of an H100 SXM's dense bf16 peak (bench.gpu.peaks).
ASSUMED_PEAK_TFLOPS = 989.5
ASSUMED_MFU = 0.40
# Evaluation frames: 4:3 landscape (SODA, MFNet, SCUT-Seg, NYUv2; most of ADE20K and
# SUN RGB-D), resized so the short side is the test scale's short side.
FRAME_ASPECT = 4 / 3
SWEEP_LRS = 4  # the linear probe's lr sweep compared in the table (LinearProbeSettings)


@dataclass(frozen=True)
class Cost:
    """Forward multiply-adds per image of one run's parts (see the module docstring)."""

    frozen: int  # F: forward only (a probe's backbone)
    trained: int  # T: forward and backward
    backward: int  # b: the backward in forward passes (2: full, 1: weight gradients only)
    evaluated: int  # E: per evaluated window


def training_flops(cost: Cost, iters: int, batch: int) -> float:
    return 2.0 * iters * batch * (cost.frozen + (1 + cost.backward) * cost.trained)


def evaluations(iters: int, interval: int) -> int:
    """Evaluations of a run: every ``interval`` steps before the end, and at the end."""
    if interval <= 0:
        return 1
    return (iters - 1) // interval + 1


def slide_windows(height: int, width: int, crop: int, stride: int) -> int:
    """Windows of mmseg's sliding inference over an ``height x width`` image."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    return rows * cols


def windows_per_image(s: Any) -> int:
    """Sliding windows of a FRAME_ASPECT frame at the test scale (whole inference: 1)."""
    if s.inference == "whole":
        return 1
    short = min(s.scale)
    return slide_windows(short, math.ceil(short * FRAME_ASPECT), s.slide_crop, s.slide_stride)


def evaluation_flops(cost: Cost, evals: int, images: int, windows: int) -> float:
    return 2.0 * evals * images * windows * cost.evaluated


def gpu_hours(flops: float, peak_tflops: float = ASSUMED_PEAK_TFLOPS,
              mfu: float = ASSUMED_MFU) -> float:
    return flops / (peak_tflops * 1e12 * mfu) / 3600


# ------------------------------------------------------------------ counting our models
class MacCounter:
    """Forward multiply-adds of the protocols' models, counted once per geometry.

    Every method of a size shares the ViT's geometry (width, depth, heads, patch), so a
    count is kept per (size, protocol, neck, head, crop, blocks read) and reused by the
    other methods of that size and the other datasets: the classes only change the last
    1x1 convolutions (under 0.1 % of a ViT-T fine-tuning model at 9 or 21 classes), so the
    first dataset's count stands for all.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple, dict[str, Any]] = {}

    def counts(self, protocol: str, adapter: str, size: str, s: Any, num_classes: int,
               options: dict | None = None) -> dict:
        layers = s.layers if isinstance(s.layers, str) else tuple(s.layers)
        key = (protocol, size, getattr(s, "neck", None), s.crop_size, layers,
               getattr(s, "head", None), repr(sorted((options or {}).items())))
        if key not in self._cache:
            self._cache[key] = self._count(protocol, adapter, size, s, num_classes, options)
        return self._cache[key]

    def _count(self, protocol: str, adapter: str, size: str, s: Any, num_classes: int,
               options: dict | None = None) -> dict:
        import torch

        from bench.backbones.adapter import downstream_options, load_backbone
        from bench.backbones.flops import count_macs
        from bench.models.probe import build_probe

        x = (torch.zeros(1, 3, s.crop_size, s.crop_size),)
        backbone = load_backbone(adapter, size, None, img_size=s.crop_size,
                                 **downstream_options(adapter, options))
        if protocol == "fine_tune":
            from bench.gpu.check import TrainForward
            from bench.protocols.finetune import build_model

            model = build_model(backbone, num_classes, s)
            train = count_macs(TrainForward(model), x).total  # with the auxiliary head
            return {"train": train, "eval": count_macs(model, x).total}
        if protocol == "linear_probe":
            layers = list(s.layers)
            probe = build_probe(backbone, layers, [list(range(len(layers)))], num_classes,
                                head=s.head)
            features = count_macs(probe.features, x).total
            return {"features": features, "head": count_macs(probe, x).total - features}
        from bench.protocols.layerwise import probed_layers

        layers = probed_layers(s, backbone.depth)  # one head per block, one forward
        probe = build_probe(backbone, layers, [[k] for k in range(len(layers))], num_classes,
                            head=s.head)
        features = count_macs(probe.features, x).total
        return {"features": features, "head": count_macs(probe, x).total - features,
                "heads": len(layers)}


@dataclass
class SuiteEstimate:
    """GPU-hours of a suite as written, and of the alternatives the README compares."""

    name: str
    runs: int
    train_h: float = 0.0
    eval_h: float = 0.0
    alternatives: dict[str, float] = field(default_factory=dict)  # label -> GPU-hours
    longest_run_h: float = 0.0

    @property
    def total_h(self) -> float:
        return self.train_h + self.eval_h


def run_costs(protocol: str, macs: dict) -> dict[str, Cost]:
    """The Costs of a run as the suite runs it ('as written') and of its alternatives."""
    if protocol == "fine_tune":
        return {"as written": Cost(0, macs["train"], 2, macs["eval"])}
    if protocol == "linear_probe":
        f, h = macs["features"], macs["head"]
        return {
            "as written": Cost(f, h, 1, f + h),
            # SWEEP_LRS heads on one backbone forward per batch (cached or shared)
            "lr sweep, shared": Cost(f, SWEEP_LRS * h, 1, f + SWEEP_LRS * h),
        }
    f, h = macs["features"], macs["head"]  # h: every block's head together
    return {"as written": Cost(f, h, 1, f + h)}


def estimate_suite(path: str, counter: MacCounter | None = None) -> SuiteEstimate:
    """Count the runs of the suite at ``path`` (models x datasets x protocols x seeds) and
    estimate their GPU-hours with training and evaluation split."""
    from bench.data import get_dataset_info
    from bench.suites.checks import resolved_settings
    from bench.suites.load import load_suite

    counter = counter or MacCounter()
    suite = load_suite(path)
    spec = suite.spec
    est = SuiteEstimate(name=spec.suite, runs=0)
    alt: dict[str, float] = {}
    for mi, m in enumerate(spec.models):
        for di, d in enumerate(spec.datasets):
            info = get_dataset_info(d.name)
            images = info.published_counts[info.default_eval_split]
            for protocol in spec.protocols:
                s = resolved_settings(suite, mi, di, protocol)
                macs = counter.counts(protocol, m.adapter, m.size, s, info.num_classes,
                                      m.options)
                costs = run_costs(protocol, macs)
                evals = evaluations(s.iters, s.eval_interval)
                windows = windows_per_image(s)

                def hours(c: Cost) -> tuple[float, float]:
                    return (gpu_hours(training_flops(c, s.iters, s.batch_size)),  # noqa: B023
                            gpu_hours(evaluation_flops(c, evals, images, windows)))  # noqa: B023

                n = len(spec.seeds)
                train, ev = hours(costs["as written"])
                est.runs += n
                est.train_h += n * train
                est.eval_h += n * ev
                est.longest_run_h = max(est.longest_run_h, train + ev)
                if protocol == "linear_probe":
                    shared = sum(hours(costs["lr sweep, shared"]))
                    alt[f"{SWEEP_LRS}-lr sweep, one run per lr"] = (
                        alt.get(f"{SWEEP_LRS}-lr sweep, one run per lr", 0.0)
                        + n * SWEEP_LRS * (train + ev))
                    alt[f"{SWEEP_LRS}-lr sweep, {SWEEP_LRS} heads on one forward"] = (
                        alt.get(f"{SWEEP_LRS}-lr sweep, {SWEEP_LRS} heads on one forward", 0.0)
                        + n * shared)
    est.alternatives = alt
    return est


def format_table(estimates: Sequence[SuiteEstimate]) -> str:
    lines = [
        "| suite | runs | training GPU-h | evaluation GPU-h | total GPU-h | longest run (h) | "
        "alternatives (total GPU-h) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in estimates:
        alts = "; ".join(f"{k}: {v:.1f}" for k, v in e.alternatives.items()) or "-"
        lines.append(f"| {e.name} | {e.runs} | {e.train_h:.1f} | {e.eval_h:.1f} | "
                     f"{e.total_h:.1f} | {e.longest_run_h:.2f} | {alts} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.estimate",
                                description=__doc__.splitlines()[0])
    p.add_argument("suites", nargs="+", help="suite YAML files")
    args = p.parse_args(argv)
    counter = MacCounter()
    estimates = [estimate_suite(path, counter) for path in args.suites]
    print(f"assumed throughput: {ASSUMED_MFU:.0%} MFU x {ASSUMED_PEAK_TFLOPS:g} TFLOP/s "
          f"= {ASSUMED_MFU * ASSUMED_PEAK_TFLOPS:.1f} TFLOP/s sustained")
    print(format_table(estimates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
