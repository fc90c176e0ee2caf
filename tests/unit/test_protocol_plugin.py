"""A protocol registered in a test runs through the whole harness with no core file edited.

"Mean colour" labels each pixel with the class whose mean training intensity (of one
channel) is nearest; it reports ``error`` (lower is better, its primary metric) and
``accuracy``, and adds a field of its own (``class_means``) to its result. It goes
through settings resolution, ``run_protocol``, a suite (checks, run ids with its own
version, the runner, FLOPs, the store), tables and plots; unknown protocols fail
clearly everywhere.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import Field
from torch import nn

from bench.protocols.config import ProtocolSettings, resolve_settings, settings_from_dict
from bench.protocols.context import RunContext
from bench.protocols.registry import (
    Metric,
    Protocol,
    UnknownProtocol,
    get_protocol,
    register_protocol,
)
from bench.registry import PROTOCOLS
from bench.results.store import RunRecord

ERROR = Metric("error", "pixel error (%)", higher_is_better=False, digits=2)
ACCURACY = Metric("accuracy", "pixel accuracy (%)")


class MeanColourSettings(ProtocolSettings):
    channel: int = Field(0, ge=0, le=2, description="Image channel whose intensity is used.")


def class_means(ctx: RunContext) -> torch.Tensor:
    """Mean intensity of ``channel`` per class over the training split (inf: absent)."""
    from bench.data.transforms import test_transform

    s = ctx.settings
    n = ctx.info.num_classes
    sums, counts = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for item in ctx.build(ctx.train_split, test_transform(ctx.info, scale=s.scale)):
        img, label = item["img"][s.channel].double(), item["label"]
        keep = label != ctx.info.ignore_index
        sums.index_add_(0, label[keep], img[keep])
        counts.index_add_(0, label[keep], torch.ones_like(img[keep]))
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.inf)


def run_mean_colour(ctx: RunContext) -> dict:
    means = class_means(ctx)
    right = total = 0
    for item in ctx.eval_set():
        img, label = item["img"][ctx.settings.channel].double(), item["label"]
        pred = (img[..., None] - means).abs().argmin(-1)
        keep = label != ctx.info.ignore_index
        right += int((pred[keep] == label[keep]).sum())
        total += int(keep.sum())
    accuracy = 100.0 * right / total
    return {
        "metrics": {"error": 100.0 - accuracy, "accuracy": accuracy},
        "class_means": [None if math.isinf(m) else m for m in means.tolist()],
    }


def mean_colour_model(settings: MeanColourSettings, backbone: nn.Module, num_classes: int):
    """What it evaluates, for FLOPs: one 1x1 conv from the image to the classes."""
    return nn.Conv2d(3, num_classes, 1)


MEAN_COLOUR = Protocol(
    name="mean_colour",
    version="0.1",
    settings=MeanColourSettings,
    run=run_mean_colour,
    evaluated_model=mean_colour_model,
    short="MC",
    title="Mean colour",
    aliases=("mean-colour", "mc"),
    metrics=(ERROR, ACCURACY),
    result_fields=("class_means",),
    order=50,
)


@pytest.fixture
def mean_colour():
    register_protocol(MEAN_COLOUR)
    yield MEAN_COLOUR
    PROTOCOLS.unregister("mean_colour")


@pytest.fixture(scope="module")
def soda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.data.synth import synthesize

    root = tmp_path_factory.mktemp("data") / "soda"
    synthesize("soda", root, train=4, test=2, size=32, seed=0)
    return root


TINY = {"crop_size": 32, "scale": [48, 32], "num_workers": 0, "inference": "whole"}
MODEL = {"adapter": "mae", "size": "T", "options": {"depth": 1}}


def test_settings_resolve_through_the_registry_and_catalogue(mean_colour) -> None:
    s = resolve_settings("Mean-Colour", "soda", "unip", "S", {"channel": 2})
    assert isinstance(s, MeanColourSettings) and s.channel == 2
    # The catalogue's schedule reaches every protocol; UNIP's fine-tuning defaults do not.
    assert (s.warmup_iters, s.iters, s.eval_interval) == (1500, 14400, 800)
    assert not hasattr(s, "layer_decay")
    assert settings_from_dict("mc", s.model_dump()) == s
    with pytest.raises(ValueError, match="unknown setting 'chanel' for protocol mean_colour"):
        resolve_settings("mean_colour", "soda", "mae", "S", {"chanel": 1})


def test_run_protocol_runs_it_and_keeps_its_own_fields(mean_colour, soda, tmp_path) -> None:
    from bench.protocols import run_protocol

    result = run_protocol("mc", MODEL, {"name": "soda", "root": soda}, settings=TINY,
                          workdir=tmp_path / "run", progress=False)
    assert result["protocol"] == "mean_colour" and result["protocol_version"] == "0.1"
    assert result["identity"]["protocol_version"] == "0.1"
    m = result["metrics"]
    assert 0 < m["accuracy"] < 100 and m["error"] == pytest.approx(100 - m["accuracy"])
    assert len(result["class_means"]) == 21
    lines: list[str] = []
    again = run_protocol("mean_colour", MODEL, {"name": "soda", "root": soda}, settings=TINY,
                         workdir=tmp_path / "run", progress=False, log=lines.append)
    assert again == result and "reusing the finished run" in lines[0]


SUITE = """\
suite: plug
protocol_version: "2.0"
protocol_versions: {{mean_colour: "0.1", linear_probe: "2.1"}}
datasets:
  - {{name: soda, root: {root}}}
models:
  - {{adapter: mae, size: T, options: {{depth: 1}}}}
  - {{adapter: deit, size: T, options: {{depth: 1}}}}
protocols:
  mean_colour: {{crop_size: 32, scale: [48, 32], num_workers: 0, inference: whole,
                 layers: [0, 0, 0, 0]}}
  linear_probe: {{crop_size: 32, scale: [48, 32], num_workers: 0, inference: whole,
                  iters: 2, warmup_iters: 1, eval_interval: 0, layers: [0, 0, 0, 0]}}
seeds: [0]
"""


def test_suite_store_tables_and_plots(mean_colour, soda, tmp_path) -> None:
    from bench.results.plots import plot_layerwise, plot_miou_vs_flops
    from bench.results.store import read_records
    from bench.results.tables import build_leaderboard, render, select_records
    from bench.suites.executors import InlineExecutor
    from bench.suites.load import load_suite
    from bench.suites.runner import Paths, run_suite

    path = tmp_path / "plug.yaml"
    path.write_text(textwrap.dedent(SUITE.format(root=soda)))
    suite = load_suite(path)
    paths = Paths(tmp_path / "store.jsonl", tmp_path / "runs")
    lines: list[str] = []
    out = run_suite(suite, paths, InlineExecutor(), progress=False, log=lines.append)
    assert sorted(o["status"] for o in out.outcomes.values()) == ["done"] * 4
    assert any("mae-T/soda/mean_colour/s0" in line and "  error " in line for line in lines)

    recs = read_records(paths.store)
    mc = [r for r in recs if r.protocol == "mean_colour"]
    assert [r.protocol_version for r in mc] == ["0.1", "0.1"]
    assert mc[0].config["identity"]["protocol_version"] == "0.1"
    assert len(mc[0].extra["class_means"]) == 21  # kept without the store knowing it
    # FLOPs of its declared evaluated model (a 1x1 conv on the image), at its crop.
    f = mc[0].flops
    assert f is not None and f.input_size == [32, 32] and f.head is None
    assert f.total_gmacs == round(32 * 32 * 3 * 21 / 1e9, 4) < f.backbone_gmacs

    chosen = select_records(recs, suite="plug")
    board = build_leaderboard(chosen)
    # Declaration order: fine-tuning 0, linear probing 1, mean colour 50, layer-wise 2...
    assert [c.title for c in board.columns] == ["LP soda", "MC soda", "GFLOPs", "Params (M)"]
    md = render(board, "md")
    assert "- LP mIoU (%); MC pixel error (%), seed 0" in md
    assert "protocol versions: LP 2.1; MC 0.1" in md
    # The cost column is the first declared protocol's with a count: linear probing.
    assert "decode head of the LP model" in md

    written = plot_miou_vs_flops(chosen, tmp_path / "plots")
    assert [p.name for p in written] == ["miou_vs_gflops_lp.png", "error_vs_gflops_mc.png"]
    assert plot_layerwise(chosen, tmp_path / "plots") == []


def _record(**kw) -> RunRecord:
    base = {"run_id": "r", "suite": "s", "protocol": "mean_colour", "protocol_version": "0.1",
            "status": "done", "config": {}, "model_name": "m", "adapter": "mae",
            "size": "tiny", "random_init": False, "dataset": "soda", "seed": 0}
    return RunRecord.model_validate({**base, **kw})


def test_lower_is_better_marks_the_smallest_value(mean_colour) -> None:
    from bench.results.tables import build_leaderboard, render

    recs = [_record(run_id=f"r{i}", model_name=name, metrics={"error": e, "accuracy": 100 - e})
            for i, (name, e) in enumerate((("a", 12.345), ("b", 7.5), ("c", 30.0)))]
    md = render(build_leaderboard(recs), "md")
    assert "**7.50**" in md and "12.35" in md and "**30.00**" not in md  # digits=2
    assert "- pixel error (%), seed 0" in md


def test_a_protocol_not_registered_here_is_shown_under_its_name() -> None:
    from bench.results.tables import build_leaderboard, render

    recs = [_record(run_id="k1", protocol="retrieval_probe", protocol_version="1.0",
                    metrics={"top1": 40.0, "top5": 70.0}),
            _record(run_id="k2", protocol="retrieval_probe", protocol_version="1.0",
                    model_name="n", metrics={"top1": 45.0, "top5": 72.0})]
    board = build_leaderboard(recs)
    assert [c.title for c in board.columns][:1] == ["retrieval_probe soda"]
    md = render(board, "md")
    assert "**45.00**" in md and "retrieval_probe: a protocol not registered here" in md
    assert "shown with its top1" in md


def test_unknown_protocols_fail_clearly_everywhere(tmp_path, soda) -> None:
    from bench.backbones.flops import protocol_flops
    from bench.cli import main
    from bench.protocols import run_protocol

    msg = r"unknown protocol 'zeroshot'; known: fine_tune, .*linear_probe"
    with pytest.raises(UnknownProtocol, match=msg):
        resolve_settings("zeroshot", "soda", "mae", "T")
    with pytest.raises(UnknownProtocol, match=msg):
        run_protocol("zeroshot", MODEL, {"name": "soda", "root": soda}, workdir=tmp_path)
    with pytest.raises(UnknownProtocol, match=msg):
        protocol_flops("zeroshot", None, "mae", "tiny", 21)
    with pytest.raises(UnknownProtocol, match=msg):
        settings_from_dict("zeroshot", {})
    with pytest.raises(UnknownProtocol, match="Did you mean 'fine_tune'"):
        get_protocol("fine_tun")
    assert main(["train", "zeroshot", "--adapter", "mae", "--size", "T", "--dataset", "soda",
                 "--root", str(soda), "--workdir", str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w").exists()


def test_a_protocol_without_evaluated_model_cannot_be_counted(soda) -> None:
    from dataclasses import replace

    from bench.backbones.flops import protocol_flops

    register_protocol(replace(MEAN_COLOUR, evaluated_model=None))
    try:
        s = resolve_settings("mean_colour", "soda", "mae", "T", {"crop_size": 32})
        with pytest.raises(ValueError, match="'mean_colour' declares no evaluated_model"):
            protocol_flops("mean_colour", s, "mae", "tiny", 21, {"depth": 1})
    finally:
        PROTOCOLS.unregister("mean_colour")


def test_the_training_loop_keeps_the_best_evaluation_in_the_metrics_direction() -> None:
    from types import SimpleNamespace

    from bench.protocols.engine import MetricEvaluation

    evaluations = iter([[{"error": 9.0}], [{"error": 4.0}], [{"error": 6.0}]])
    logged: list[dict] = []
    acc = SimpleNamespace(log=lambda values, step: logged.append(values))
    evaluation = MetricEvaluation(acc, lambda: next(evaluations), 1, ERROR)  # type: ignore[arg-type]
    for it in (10, 20, 30):
        evaluation(it)
    assert evaluation.best == [{"iteration": 20, "error": 4.0}]
    assert [h["error"] for h in evaluation.history] == [[9.0], [4.0], [6.0]]
    assert logged[0] == {"eval/error": 9.0}


def test_defaults_come_from_the_catalogue_and_the_adapters_declaration() -> None:
    from bench.backbones.adapter import adapter_protocol_defaults, get_adapter
    from bench.data import get_dataset_info

    nyu = get_dataset_info("nyuv2_depth")
    assert nyu.protocol_defaults_for("layerwise_probe") == {
        "warmup_iters": 1000, "iters": 9800, "eval_interval": 700, "crop_size": 480,
        "scale": (2048, 480), "slide_crop": 480, "slide_stride": 341}
    assert (nyu.crop_size, nyu.scale) == (480, (2048, 480))  # one source in the catalogue
    assert get_adapter("unip").protocol_defaults["fine_tune"] == {
        "layer_decay": 0.85, "neck": "llfpn", "rel_pos_bias": False}
    assert adapter_protocol_defaults("unip", "linear_probe", "S") == {}
    assert adapter_protocol_defaults("mae", "fine_tune", "L") == {}  # ViT-L: from its depth
    vit_l = resolve_settings("fine_tune", "soda", "mae", "L")
    assert (vit_l.layers, vit_l.drop_path) == ([7, 11, 15, 23], 0.2)  # released ViT-L configs
    assert resolve_settings("linear_probe", "soda", "mae", "L").layers == [7, 11, 15, 23]
    vit_b = resolve_settings("fine_tune", "soda", "mae", "B")
    assert (vit_b.layers, vit_b.drop_path) == ([3, 5, 7, 11], 0.1)
    # The user's overrides win over the adapter's declaration.
    s = resolve_settings("fine_tune", "soda", "unip", "S", {"neck": "multilevel"})
    assert (s.layer_decay, s.neck, s.rel_pos_bias) == (0.85, "multilevel", False)
