"""Declarations of the paper's three protocols, registered through ``pyproject.toml``.

Kept free of torch imports: the training code is named as ``module:function`` and
imported only when a run or a FLOP count needs it.
"""

from __future__ import annotations

from typing import Any

from bench.protocols.config import (
    FineTuneSettings,
    LayerwiseProbeSettings,
    LinearProbeSettings,
)
from bench.protocols.registry import Protocol


def read_blocks(depth: int) -> list[int]:
    """Zero-based blocks at a third, half, two thirds and the end of the depth: the released
    configs' out_indices, [3, 5, 7, 11] for 12 blocks and [7, 11, 15, 23] for ViT-L's 24."""
    return [round(depth * f) - 1 for f in (1 / 3, 1 / 2, 2 / 3, 1)]


def fine_tune_geometry(size: Any) -> dict[str, Any]:
    """The four blocks the neck reads; 24 blocks and more (ViT-L) get the released ViT-L
    configs' stochastic depth 0.2 instead of 0.1."""
    return {"layers": read_blocks(size.depth), **({"drop_path": 0.2} if size.depth >= 24 else {})}


def linear_probe_geometry(size: Any) -> dict[str, Any]:
    """The four blocks concatenated into the probe's input."""
    return {"layers": read_blocks(size.depth)}


# 2.0: the released UNIP pipeline's defaults (layer scale and relative position bias in
# the fine-tuned backbone, weight decay on pos_embed/cls_token, loss averaged over all
# pixels, the segmentation configs' infrared std, per-dataset evaluation intervals,
# uniform head split for UNIP students downstream). 1.0 results are not comparable.
FINE_TUNE = Protocol(
    name="fine_tune",
    version="2.0",
    settings=FineTuneSettings,
    run="bench.protocols.finetune:run",
    evaluated_model="bench.protocols.finetune:evaluated_model",
    short="FT",
    title="Fine-tuning",
    description="Full fine-tuning: ViT + neck + UPerNet (+ auxiliary FCN), layer-wise lr decay.",
    aliases=("finetune", "ft"),
    geometry_defaults=fine_tune_geometry,
    reference_key="fine_tuning",
    order=0,
)

# 2.1: heads trained together (a cached-mode lr sweep) keep one fp16 loss scale each, as
# the on-the-fly sweep's already did, so each equals its own run under fp16 too. A
# one-head probe (the paper's) computes what 2.0 did; its id changes with the version.
LINEAR_PROBE = Protocol(
    name="linear_probe",
    version="2.1",
    settings=LinearProbeSettings,
    run="bench.protocols.linear_probe:run",
    evaluated_model="bench.protocols.linear_probe:evaluated_model",
    short="LP",
    title="Linear probing",
    description="Frozen backbone; four blocks concatenated into one 1x1 conv head.",
    aliases=("linearprobe", "lp", "linear-probe"),
    geometry_defaults=linear_probe_geometry,
    reference_key="linear_probing",
    trains_backbone=False,
    result_fields=("lr_sweep",),
    order=1,
)

# 2.1: one fp16 loss scale per block's head. The release trains each block's head in a
# run of its own (configs/layerwise_linear_probing/*_one.py, one out_index each), so with
# its own loss scale; 2.0's one shared scale let one head's overflow skip every head's step.
LAYERWISE_PROBE = Protocol(
    name="layerwise_probe",
    version="2.1",
    settings=LayerwiseProbeSettings,
    run="bench.protocols.layerwise:run",
    evaluated_model="bench.protocols.layerwise:evaluated_model",
    short="LW",
    title="Layer-wise linear probing",
    description="Frozen backbone; one 1x1 conv head per block, all trained in one pass.",
    aliases=("layerwise", "lw"),
    per_layer=True,
    trains_backbone=False,
    result_fields=("per_layer",),
    order=2,
)
