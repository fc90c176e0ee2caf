"""GPU-hours of a suite, estimated from counted FLOPs, the schedules and an assumed throughput.

Each run's cost follows from its protocol's declaration (:class:`bench.protocols.registry.
Protocol`) and the model it declares it evaluates (``evaluated_model``): E, the forward
multiply-adds of that model per image at the settings' crop size, B those of the backbone
alone (:func:`bench.backbones.flops.backbone_flops`) and H = E - B the rest (heads, neck).
Training FLOPs = 2 x iters x batch x (F + (1 + b) x T), F the multiply-adds of the frozen
part (forward only), T those of the trained part and b the backward's cost in forward
passes:

- ``trains_backbone`` (fine-tuning): F = 0, T = E, b = 2 (gradients to the inputs and
  weights of every layer);
- a frozen backbone (probes): F = B, T = H, b = 1 (weight gradients of the heads only);
- ``training_free`` (k-NN): one forward of the training split, F = E per view, no steps.

Evaluation FLOPs = 2 x evaluations x images x views x E (views: sliding windows).
Multiply-adds come from our counter (:func:`bench.backbones.flops.count_macs`); no
protocol is named here. Hours = FLOPs / (assumed MFU x peak).

Not counted: training-only parts the evaluated model leaves out (fine-tuning's auxiliary
FCN head, 0.2-1.0 % of its training forward from ViT-L to ViT-T) and work outside the
model (a k-NN probe's search of its memory bank, whose size comes from the data).

``python -m bench.gpu.estimate SUITE.yaml ...`` prints the table of suites/paper/README.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.protocols.registry import Protocol, get_protocol

# Assumed sustained throughput: 40 % MFU of an H100 SXM's dense bf16 peak (bench.gpu.peaks).
ASSUMED_PEAK_TFLOPS = 989.5
ASSUMED_MFU = 0.40
# Evaluation frames: 4:3 landscape (SODA, MFNet, SCUT-Seg, NYUv2; most of ADE20K and
# SUN RGB-D), resized so the short side is the test scale's short side.
FRAME_ASPECT = 4 / 3


@dataclass(frozen=True)
class Cost:
    """Forward multiply-adds per image of one run's parts (see the module docstring)."""

    frozen: int  # F: forward only (a probe's backbone)
    trained: int  # T: forward and backward
    backward: int  # b: the backward in forward passes (2: full, 1: weight gradients only)
    evaluated: int  # E: per evaluated window


def training_flops(cost: Cost, iters: int, batch: int) -> float:
    """FLOPs of ``iters`` steps of ``batch`` images (a training-free run's one pass: 1 step
    of every view of its training split)."""
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
@dataclass(frozen=True)
class ModelCount:
    """Forward multiply-adds per image of a run's evaluated model and of its backbone."""

    evaluated: int  # E: the protocol's evaluated_model
    backbone: int  # B: the backbone alone, as the evaluated model leaves it

    @property
    def head(self) -> int:
        """H = E - B: what the evaluated model adds to the backbone (0 when it runs less
        of the backbone than the whole, e.g. a probe of early blocks only). B ends with the
        backbone's final LayerNorm, which probes of block outputs do not run, so H is that
        norm short of their heads (under 0.01 % of E at 512 pixels)."""
        return max(self.evaluated - self.backbone, 0)


def model_settings(s: Any) -> tuple:
    """The settings that can change a protocol's model: the crop and the protocol's own
    fields (the shared data, optimiser and schedule fields cannot)."""
    from bench.protocols.config import ProtocolSettings

    shared = set(ProtocolSettings.model_fields) - {"crop_size"}
    return tuple((k, repr(v)) for k, v in sorted(s.model_dump().items()) if k not in shared)


class MacCounter:
    """Forward multiply-adds of the protocols' evaluated models, counted once per geometry.

    Every method of a size shares the ViT's geometry (width, depth, heads, patch), so a
    count is kept per (protocol, size, adapter options, model settings) and reused by the
    other methods of that size and the other datasets: the classes only change the last
    1x1 convolutions (under 0.1 % of a ViT-T fine-tuning model at 9 or 21 classes), so the
    first dataset's count stands for all.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple, ModelCount] = {}

    def counts(self, protocol: Protocol, adapter: str, size: str, s: Any, num_classes: int,
               options: dict | None = None) -> ModelCount:
        key = (protocol.name, size, repr(sorted((options or {}).items())), model_settings(s))
        if key not in self._cache:
            self._cache[key] = self._count(protocol, adapter, size, s, num_classes, options)
        return self._cache[key]

    @staticmethod
    def _count(protocol: Protocol, adapter: str, size: str, s: Any, num_classes: int,
               options: dict | None = None) -> ModelCount:
        import torch

        from bench.backbones.adapter import downstream_options, load_backbone
        from bench.backbones.flops import backbone_flops, count_macs

        build = protocol.model_fn()
        if build is None:
            raise ValueError(f"protocol {protocol.name!r} declares no evaluated_model, so "
                             "its GPU-hours cannot be estimated")
        backbone = load_backbone(adapter, size, None, img_size=s.crop_size,
                                 **downstream_options(adapter, options))
        model = build(s, backbone, num_classes)
        evaluated = count_macs(model, (torch.zeros(1, 3, s.crop_size, s.crop_size),)).total
        # After the model is built: it may change the backbone in place (LayerScale).
        bb, _ = backbone_flops(backbone, s.crop_size)
        return ModelCount(evaluated=evaluated, backbone=bb.total)


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


def run_costs(protocol: Protocol | str, count: ModelCount, sweep: int = 0) -> dict[str, Cost]:
    """The Costs of a run as the suite runs it ('as written') and, for ``sweep`` > 1
    learning rates of a frozen-backbone protocol, of its heads trained together on one
    backbone forward per batch ('lr sweep, shared')."""
    p = get_protocol(protocol) if isinstance(protocol, str) else protocol
    e, b, h = count.evaluated, count.backbone, count.head
    if p.training_free:  # one forward pass per view read, nothing trained
        return {"as written": Cost(e, 0, 0, e)}
    if p.trains_backbone:
        return {"as written": Cost(0, e, 2, e)}
    costs = {"as written": Cost(b, h, 1, e)}
    if sweep > 1:
        costs["lr sweep, shared"] = Cost(b, sweep * h, 1, b + sweep * h)
    return costs


def split_images(info: Any, split: str) -> int:
    """Published image count of ``split`` of the dataset ``info`` describes."""
    if split not in info.published_counts:
        raise ValueError(f"dataset {info.name}: no published image count for split "
                         f"{split!r} (known: {', '.join(info.published_counts) or 'none'})")
    return info.published_counts[split]


def sweep_lrs(s: Any) -> int:
    """Learning rates an lr sweep of these settings would train (0: settings without
    ``sweep_lrs``)."""
    return len(getattr(s, "sweep_lrs", None) or ())


def estimate_suite(path: str, counter: MacCounter | None = None) -> SuiteEstimate:
    """Count the runs of the suite at ``path`` (models x datasets x protocols x seeds) and
    estimate their GPU-hours with training and evaluation split.

    The lr-sweep alternatives are added for every frozen-backbone protocol whose settings
    have ``sweep_lrs``, as if the suite trained one lr per run."""
    from bench.data import get_dataset_info
    from bench.suites.checks import resolved_settings
    from bench.suites.load import load_suite

    counter = counter or MacCounter()
    suite = load_suite(path)
    spec = suite.spec
    est = SuiteEstimate(name=spec.suite, runs=0)
    alt: dict[str, float] = {}
    n = len(spec.seeds)
    for mi, m in enumerate(spec.models):
        for di, d in enumerate(spec.datasets):
            info = get_dataset_info(d.name)
            for name in spec.protocols:
                p = get_protocol(name)
                s = resolved_settings(suite, mi, di, name)
                images = split_images(info, s.eval_split or info.default_eval_split)
                lrs = sweep_lrs(s)
                costs = run_costs(p, counter.counts(p, m.adapter, m.size, s, info.num_classes,
                                                    m.options), lrs)
                windows = windows_per_image(s)
                if p.training_free:  # one pass over the training split's views, one evaluation
                    steps, per_step = 1, windows * split_images(info, s.train_split
                                                                or info.train_split)
                    evals = 1
                else:
                    steps, per_step = s.iters, s.batch_size
                    evals = evaluations(s.iters, s.eval_interval)

                def hours(c: Cost) -> tuple[float, float]:
                    return (gpu_hours(training_flops(c, steps, per_step)),  # noqa: B023
                            gpu_hours(evaluation_flops(c, evals, images, windows)))  # noqa: B023

                train, ev = hours(costs["as written"])
                est.runs += n
                est.train_h += n * train
                est.eval_h += n * ev
                est.longest_run_h = max(est.longest_run_h, train + ev)
                if "lr sweep, shared" in costs:
                    apart = f"{lrs}-lr sweep, one run per lr"
                    shared = f"{lrs}-lr sweep, {lrs} heads on one forward"
                    alt[apart] = alt.get(apart, 0.0) + n * lrs * (train + ev)
                    alt[shared] = alt.get(shared, 0.0) + n * sum(hours(costs["lr sweep, shared"]))
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
