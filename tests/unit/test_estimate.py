"""GPU-hour estimates: the arithmetic on hand-computed cases, and tiny suites end to end,
one of them with protocols registered here (the estimate reads declarations, not names)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import Field
from torch import nn

from bench.gpu.estimate import (
    Cost,
    MacCounter,
    ModelCount,
    estimate_suite,
    evaluation_flops,
    evaluations,
    gpu_hours,
    run_costs,
    slide_windows,
    training_flops,
)
from bench.protocols.config import ProtocolSettings
from bench.protocols.registry import Protocol, register_protocol
from bench.registry import PROTOCOLS


def test_fine_tuning_run_by_hand() -> None:
    # ViT-B fine-tuning on SODA with 600 GMACs per image forward: 14400 iterations x 8
    # images x 3 passes x 2 FLOPs per MAC = 4.1472e17 FLOPs; at 40 % of 989.5 TFLOP/s
    # (395.8e12 FLOP/s) that is 1047.80 s = 0.291056 h.
    cost = Cost(frozen=0, trained=600 * 10**9, backward=2, evaluated=500 * 10**9)
    flops = training_flops(cost, iters=14400, batch=8)
    assert flops == pytest.approx(4.1472e17)
    assert gpu_hours(flops) == pytest.approx(0.291056, rel=1e-5)
    # Evaluation: 18 evaluations x 1000 images x 2 windows x 500 GMACs x 2 = 3.6e16 FLOPs.
    assert evaluation_flops(cost, 18, 1000, 2) == pytest.approx(3.6e16)


def test_probe_pays_one_forward_of_the_backbone() -> None:
    # Frozen 100 GMACs + a 1 GMAC head (forward + weight gradient): 2 x (100 + 2) GFLOPs
    # x 10 steps x 8 images = 16.32 TFLOPs.
    assert training_flops(Cost(100 * 10**9, 10**9, 1, 0), 10, 8) == pytest.approx(16.32e12)
    # Four heads on one forward cost ~ one probe, not four.
    count = ModelCount(evaluated=101 * 10**9, backbone=100 * 10**9)
    costs = run_costs("linear_probe", count, sweep=4)
    shared = training_flops(costs["lr sweep, shared"], 10, 8)
    single = training_flops(costs["as written"], 10, 8)
    assert shared == pytest.approx(2 * (100 + 4 * 2) * 1e9 * 80)
    assert single < shared < 1.1 * single


@pytest.mark.parametrize(("iters", "interval", "n"),
                         [(14400, 800, 18), (9800, 700, 14), (16800, 800, 21), (100, 0, 1),
                          (75000, 1000, 75)])
def test_evaluations_as_the_engine_runs_them(iters: int, interval: int, n: int) -> None:
    # Every `interval` steps before the last, then once at the end (engine.Trainer.run).
    assert evaluations(iters, interval) == n


def test_sliding_windows_as_mmseg() -> None:
    # 640 x 480 resized to 683 x 512: one row, two columns of 512 crops at stride 341.
    assert slide_windows(512, 683, 512, 341) == 2
    assert slide_windows(480, 640, 480, 341) == 2
    assert slide_windows(512, 512, 512, 341) == 1
    assert slide_windows(1024, 1366, 512, 341) == 3 * 4


def test_tiny_suite_end_to_end(tmp_path) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        "suite: tiny\nprotocol_version: '2.1'\n"
        "datasets:\n  - {name: soda, root: data/SODA}\n  - {name: mfnet_thermal, root: d}\n"
        "models:\n  - {adapter: mae, size: T}\n  - {adapter: deit, size: T}\n"
        "protocols:\n  linear_probe: {crop_size: 32, slide_crop: 32, slide_stride: 21,"
        " scale: [128, 32], iters: 10, warmup_iters: 1, eval_interval: 4}\n"
        "seeds: [0, 1]\n"
    )
    counter = MacCounter()
    est = estimate_suite(str(suite), counter)
    assert est.runs == 2 * 2 * 2  # models x datasets x seeds
    (macs,) = counter._cache.values()  # both ViT-T share one count
    # The probe's head by hand: a 1x1 conv from 4 x 192 concatenated channels to SODA's 21
    # classes on the 2 x 2 grid, then the logits' bilinear upsampling to 32 x 32 (fvcore
    # counts 4 per output element). The head is the evaluated model less the backbone
    # counted alone, and the backbone alone ends with its final LayerNorm, which the probe
    # (block outputs without the norm) does not run: 5 tokens (4 patches + class) x 192
    # channels x 5 (fvcore's count per element of an affine norm) come off.
    assert macs.head == 4 * 192 * 21 * 4 + 21 * 32 * 32 * 4 - 5 * 192 * 5
    # A 32-pixel ViT-T sees 2 x 2 patches; 3 evaluations (4, 8, end); frames 43 x 32 hold
    # two 32-pixel windows at stride 21; SODA 1000 and MFNet 393 test images.
    cost = run_costs("linear_probe", macs)["as written"]
    train = gpu_hours(training_flops(cost, 10, 8))
    evals = gpu_hours(evaluation_flops(cost, 3, 1000, 2) + evaluation_flops(cost, 3, 393, 2))
    assert est.train_h == pytest.approx(2 * 2 * 2 * train)
    assert est.eval_h == pytest.approx(2 * 2 * evals)
    assert est.alternatives["4-lr sweep, one run per lr"] == pytest.approx(4 * est.total_h)


def test_the_declaration_picks_the_cost_model() -> None:
    count = ModelCount(evaluated=110, backbone=100)
    # Fine-tuning: everything forward and backward (3 passes of the evaluated model).
    assert run_costs("fine_tune", count) == {"as written": Cost(0, 110, 2, 110)}
    # Probes: the backbone forward only, the heads forward and weight gradients.
    assert run_costs("layerwise_probe", count) == {"as written": Cost(100, 10, 1, 110)}
    # ... and, given the lrs of a sweep, its heads together on one backbone forward.
    assert run_costs("linear_probe", count, sweep=4)["lr sweep, shared"] == Cost(100, 40, 1, 140)
    # k-NN: one forward per view read, nothing trained.
    assert run_costs("knn_probe", count) == {"as written": Cost(110, 0, 0, 110)}
    # A probe of early blocks runs less than the whole backbone: no negative head.
    assert ModelCount(evaluated=90, backbone=100).head == 0


class SweepSettings(ProtocolSettings):
    sweep_lrs: list[float] = Field([1e-3, 1e-2, 1e-1], description="lrs of a sweep")


def last_block_probe(s: SweepSettings, backbone: nn.Module, num_classes: int) -> nn.Module:
    """A 1x1 conv on the last block's map (no final norm)."""
    from bench.models.probe import build_probe

    return build_probe(backbone, [backbone.depth - 1], [[0]], num_classes)


def mean_colour_model(s: ProtocolSettings, backbone: nn.Module, num_classes: int) -> nn.Module:
    """The mean-colour protocol's evaluated model: a 1x1 conv from the image to the classes."""
    return nn.Conv2d(3, num_classes, 1)


def _not_run(ctx: object) -> dict:
    raise AssertionError("an estimate runs nothing")


LAST_BLOCK = Protocol(name="last_block", version="0.1", settings=SweepSettings, run=_not_run,
                      evaluated_model=last_block_probe, trains_backbone=False)
# Mean colour (tests/unit/test_protocol_plugin.py) reads the training split once: training-free.
MEAN_COLOUR = Protocol(name="mean_colour", version="0.1", settings=ProtocolSettings,
                       run=_not_run, evaluated_model=mean_colour_model, training_free=True)


@pytest.fixture
def test_protocols():
    for p in (LAST_BLOCK, MEAN_COLOUR):
        register_protocol(p)
    yield
    for p in (LAST_BLOCK, MEAN_COLOUR):
        PROTOCOLS.unregister(p.name)


LAST_BLOCK_SETTINGS = """\
  last_block: {crop_size: 32, slide_crop: 32, slide_stride: 21, scale: [128, 32], iters: 10,
               warmup_iters: 1, eval_interval: 4}
"""
MEAN_COLOUR_SETTINGS = """\
  mean_colour: {crop_size: 32, slide_crop: 32, slide_stride: 21, scale: [128, 32]}
"""


def plug_suite(tmp_path, protocols: str) -> str:
    """A suite of ViT-T on SODA (one seed) running ``protocols`` (YAML lines)."""
    path = tmp_path / "plug.yaml"
    path.write_text(
        'suite: plug\nprotocol_version: "2.0"\n'
        'protocol_versions: {last_block: "0.1", mean_colour: "0.1"}\n'
        "datasets:\n  - {name: soda, root: data/SODA}\nmodels:\n  - {adapter: mae, size: T}\n"
        f"protocols:\n{protocols}seeds: [0]\n"
    )
    return str(path)


def test_registered_protocols_are_estimated_from_their_declarations(test_protocols,
                                                                     tmp_path) -> None:
    counter = MacCounter()
    est = estimate_suite(plug_suite(tmp_path, LAST_BLOCK_SETTINGS + MEAN_COLOUR_SETTINGS),
                         counter)
    assert est.runs == 2
    probe, colour = counter._cache.values()
    # Mean colour by hand: a 3 -> 21 1x1 conv on 32 x 32 pixels, 64512 MACs. Nothing
    # trained: SODA's 1168 training images read once in two 32-pixel windows each (frames
    # 43 x 32 at stride 21), then one evaluation of its 1000 test images, two windows each.
    assert colour.evaluated == 3 * 21 * 32 * 32
    colour_train = gpu_hours(2 * 1168 * 2 * 3 * 21 * 32 * 32)
    colour_eval = gpu_hours(2 * 1000 * 2 * 3 * 21 * 32 * 32)
    # The probe by hand: a 1x1 conv from 192 channels to 21 classes on the 2 x 2 grid and
    # the logits' upsampling to 32 x 32 (4 per output element), less the backbone's final
    # LayerNorm it does not run (5 tokens x 192 x 5). Trained 10 steps of 8 images: one
    # backbone forward, the head forward and weight gradient; evaluated at 4, 8 and 10.
    h = 192 * 21 * 4 + 21 * 32 * 32 * 4 - 5 * 192 * 5
    assert probe.head == h
    # The backbone alone by hand (ViT-T: width 192, 3 heads, MLP 768; 5 tokens): per block
    # qkv, q@k^T and attn@v, the projection, the MLP and two LayerNorms; then the patch
    # embedding of 4 patches of 3 x 16 x 16 pixels and the final LayerNorm.
    block = (5 * 192 * 3 * 192 + 2 * 3 * 5 * 5 * 64 + 5 * 192 * 192 + 2 * 5 * 192 * 768
             + 2 * 5 * 192 * 5)
    b = 12 * block + 4 * 3 * 16 * 16 * 192 + 5 * 192 * 5
    assert (probe.backbone, probe.evaluated) == (b, b + h)
    probe_train = gpu_hours(2 * 10 * 8 * (b + 2 * h))
    probe_eval = gpu_hours(2 * 3 * 1000 * 2 * (b + h))
    assert est.train_h == pytest.approx(colour_train + probe_train)
    assert est.eval_h == pytest.approx(colour_eval + probe_eval)
    assert est.longest_run_h == pytest.approx(max(colour_train + colour_eval,
                                                  probe_train + probe_eval))
    # Its settings have three sweep_lrs: three runs, or three heads on one forward.
    shared = gpu_hours(2 * 10 * 8 * (b + 2 * 3 * h) + 2 * 3 * 1000 * 2 * (b + 3 * h))
    assert est.alternatives == pytest.approx({
        "3-lr sweep, one run per lr": 3 * (probe_train + probe_eval),
        "3-lr sweep, 3 heads on one forward": shared,
    })


def test_a_protocol_without_evaluated_model_is_named(test_protocols, tmp_path) -> None:
    register_protocol(replace(MEAN_COLOUR, evaluated_model=None), overwrite=True)
    with pytest.raises(ValueError, match="'mean_colour' declares no evaluated_model"):
        estimate_suite(plug_suite(tmp_path, MEAN_COLOUR_SETTINGS))
