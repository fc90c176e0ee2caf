"""Tiny end-to-end runs of the three protocols on synthetic SODA-like data (CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from accelerate.utils import set_seed
from protocol_job import MODEL, TINY, TINY_FT, dataset, make_soda
from single_thread import one_thread
from timm.models.vision_transformer import VisionTransformer

from bench.backbones.adapter import load_backbone
from bench.backbones.backbone import Backbone
from bench.data import build_dataset, get_dataset_info
from bench.data.transforms import test_transform
from bench.metrics import IoUAccumulator
from bench.protocols import run_protocol
from bench.protocols.config import resolve_settings
from bench.protocols.engine import TrainingDiverged
from bench.protocols.finetune import build_model
from bench.protocols.inference import evaluate

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def soda(tmp_path_factory):
    return make_soda(tmp_path_factory.mktemp("soda") / "data")


@pytest.fixture(scope="module")
def finetuned(soda, tmp_path_factory):
    wd = tmp_path_factory.mktemp("ft")
    result = run_protocol(
        "fine_tune", MODEL, dataset(soda), {**TINY_FT, "iters": 30, "eval_interval": 15},
        wd, progress=False,
    )
    return wd, result


def untrained_miou(soda, overrides: dict) -> float:
    """The same segmentor, same seed, not trained, through the same sliding inference."""
    s = resolve_settings("fine_tune", "soda", "mae", "tiny", {**overrides, "iters": 30})
    info = get_dataset_info("soda")
    set_seed(0)
    bb = load_backbone("mae", "tiny", img_size=s.crop_size, depth=4, drop_path_rate=0.1)
    model = build_model(bb, info.num_classes, s).eval()
    ds = build_dataset("soda", soda, "test", transform=test_transform(info, tuple(s.scale)))
    acc = IoUAccumulator(info.num_classes)
    batches = ({"img": d["img"][None], "label": d["label"][None]} for d in ds)
    evaluate(model, batches, [acc], info.num_classes, torch.device("cpu"), "slide",
             s.slide_crop, s.slide_stride)
    return acc.compute()["mIoU"]


@pytest.mark.slow
def test_finetune_learns_and_records_everything(finetuned, soda):
    wd, r = finetuned
    before = untrained_miou(soda, TINY_FT)
    m = r["metrics"]
    assert m["mIoU"] > before + 3.0, (before, m["mIoU"])
    assert m["mIoU"] > 3 * before
    assert r["protocol"] == "fine_tune" and r["protocol_version"]
    assert r["iterations"] == 30 and r["resumed_from"] == 0
    assert len(m["per_class_iou"]) == 21
    assert [h["iteration"] for h in r["history"]] == [15, 30]
    assert r["best"]["mIoU"] == max(h["mIoU"][0] for h in r["history"])
    assert r["last"] == r["metrics"]
    assert r["settings"]["neck"] == "multilevel" and r["settings"]["layer_decay"] == 0.65
    assert r["backbone"]["adapter"] == "mae" and r["backbone"]["depth"] == 4
    assert r["device"]["type"] == "cpu"
    assert json.loads((wd / "result.json").read_text())["metrics"]["mIoU"] == m["mIoU"]


def test_finished_workdir_returns_stored_result(finetuned, soda, monkeypatch):
    wd, r = finetuned

    def no_training(*a, **k):
        raise AssertionError("a finished workdir must not train again")

    monkeypatch.setattr("bench.protocols.engine.Trainer.run", no_training)
    settings = {**TINY_FT, "iters": 30, "eval_interval": 15}
    again = run_protocol("fine_tune", MODEL, dataset(soda), settings, wd)
    assert again == r
    with pytest.raises(ValueError, match="different run"):
        run_protocol("fine_tune", MODEL, dataset(soda), {**settings, "lr": 0.5}, wd)


def mean_of_defined(per_class: list) -> float:
    """mIoU as mmseg computes it: the mean over the classes whose IoU is defined."""
    values = [v for v in per_class if v is not None]
    return sum(values) / len(values)


def mmcv_poly_lr(it: int, lr: float, iters: int, warmup_iters: int,
                 warmup_ratio: float = 1e-6, power: float = 1.0) -> float:
    """mmcv 1.x PolyLrUpdaterHook (min_lr 0) with linear warm-up, at 0-based iteration
    ``it``: regular = lr (1 - it/iters)^power; during warm-up regular x (1 - k) with
    k = (1 - it/warmup_iters)(1 - warmup_ratio)."""
    regular = lr * (1 - it / iters) ** power
    if it >= warmup_iters:
        return regular
    k = (1 - it / warmup_iters) * (1 - warmup_ratio)
    return regular * (1 - k)


def beit_layer_id(name: str, depth: int) -> int:
    """BEiT's get_num_layer_for_vit on segmentor names: embeddings 0, block i -> i + 1,
    anything else (final norm, neck, heads) depth + 1."""
    parts = name.split(".")
    if parts[:2] == ["backbone", "vit"]:
        if parts[2] in ("cls_token", "pos_embed", "patch_embed"):
            return 0
        if parts[2] == "blocks":
            return int(parts[3]) + 1
    return depth + 1


def unip_student(path, last_heads: int) -> dict:
    """A 4-block UNIP-T file as the distillation writes it, whose metadata says the last
    block was distilled with ``last_heads`` heads."""
    torch.manual_seed(3)
    vit = VisionTransformer(embed_dim=192, depth=4, num_heads=3, num_classes=0)
    torch.save({"model": vit.state_dict(), "unip": {"last_heads": last_heads, "depth": 4}},
               path)
    return {"adapter": "unip", "size": "tiny", "checkpoint": str(path),
            "options": {"depth": 4}}


def test_finetune_llfpn_is_unips_default(soda, tmp_path, monkeypatch):
    from bench.protocols import finetune

    seen: dict = {}
    reads: list[list[int]] = []
    real_model, real_adamw, real_features = finetune.build_model, finetune.build_adamw, \
        Backbone.features

    def spy_model(*args, **kwargs):
        seen["model"] = model = real_model(*args, **kwargs)
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    def spy_adamw(groups, *args, **kwargs):
        seen["lr"] = {id(p): g["lr"] for g in groups for p in g["params"]}
        return real_adamw(groups, *args, **kwargs)

    def spy_features(self, x, layers=(-1,), norm=False):
        reads.append(list(layers))
        return real_features(self, x, layers, norm)

    monkeypatch.setattr(finetune, "build_model", spy_model)
    monkeypatch.setattr(finetune, "build_adamw", spy_adamw)
    monkeypatch.setattr(Backbone, "features", spy_features)
    unip = unip_student(tmp_path / "student.pth", last_heads=16)
    r = run_protocol("fine_tune", unip, dataset(soda), {**TINY_FT, "iters": 4},
                     tmp_path / "wd", progress=False)

    # UNIP's defaults, with nothing asked for: LL-FPN, decay 0.85, no relative bias, and
    # the size's 3 heads in every block, not the 16 the last block was distilled with.
    s = r["settings"]
    assert (s["neck"], s["layer_decay"], s["rel_pos_bias"]) == ("llfpn", 0.85, False)
    assert r["backbone"]["num_heads"] == [3, 3, 3, 3]
    assert r["backbone"]["extra"]["head_split"] == "uniform"
    assert r["backbone"]["extra"]["distilled_last_heads"] == 16

    model = seen["model"]
    assert type(model.neck).__name__ == "LastLayerFPN" and model.neck.layers == [3]
    assert reads and all(layers == [3] for layers in reads)  # the last block alone, always
    names = dict(model.named_parameters())
    assert names["neck.branches.0.0.weight"].shape[0] == 192  # one 192-channel map in
    assert not any("relative_position" in n for n in names)
    assert all(getattr(b.attn, "position_bias", None) is None
               for b in model.backbone.vit.blocks)

    # Layer-wise lr decay 0.85 over depth 4: lr x 0.85^(5 - layer id).
    trainable = {n: p for n, p in names.items() if p.requires_grad}
    assert set(trainable) == set(names) - {"backbone.vit.norm.weight", "backbone.vit.norm.bias"}
    for n, p in trainable.items():
        want = 1e-3 * 0.85 ** (5 - beit_layer_id(n, 4))
        assert seen["lr"][id(p)] == pytest.approx(want, rel=1e-9), n

    # Four steps trained every trainable part; the unused final norm stayed as loaded.
    after = model.state_dict()
    for n in ("backbone.vit.pos_embed", "backbone.vit.blocks.0.attn.qkv.weight",
              "backbone.vit.blocks.3.mlp.fc2.weight", "neck.branches.0.0.weight",
              "head.conv_seg.weight", "aux_head.conv_seg.weight"):
        assert not torch.equal(after[n], seen["before"][n]), n
    norm = "backbone.vit.norm.weight"
    assert torch.equal(after[norm], seen["before"][norm])
    assert r["iterations"] == 4 and [x["iteration"] for x in r["train_loss"]] == [4]
    assert math.isfinite(r["train_loss"][0]["loss"]) and r["train_loss"][0]["loss"] > 0
    m = r["metrics"]
    assert len(m["per_class_iou"]) == 21
    assert m["mIoU"] == pytest.approx(mean_of_defined(m["per_class_iou"]))


def test_linear_probe_on_the_fly(soda, tmp_path, monkeypatch):
    from bench.protocols import linear_probe, probe_training

    seen: dict = {}
    step_lrs: list[list[float]] = []
    real_model, real_adamw = linear_probe.build_model, probe_training.build_adamw

    def spy_model(*args, **kwargs):
        seen["probe"] = probe = real_model(*args, **kwargs)
        seen["backbone"] = {k: v.clone() for k, v in probe.features.state_dict().items()}
        seen["heads"] = {k: v.clone() for k, v in probe.heads.state_dict().items()}
        return probe

    def spy_adamw(*args, **kwargs):
        opt = real_adamw(*args, **kwargs)
        opt.register_step_pre_hook(
            lambda o, a, k: step_lrs.append([g["lr"] for g in o.param_groups]))
        return opt

    monkeypatch.setattr(linear_probe, "build_model", spy_model)
    monkeypatch.setattr(probe_training, "build_adamw", spy_adamw)
    settings = {**TINY, "iters": 6, "warmup_iters": 2, "log_interval": 2}
    r = run_protocol("linear_probe", MODEL, dataset(soda), settings, tmp_path, progress=False)
    assert r["mode"] == "on_the_fly"
    assert "lr_sweep" not in r

    # Six optimiser steps, each at mmcv's poly-with-warm-up lr (every group: head only).
    assert len(step_lrs) == 6 == r["iterations"]
    for it, lrs in enumerate(step_lrs):
        assert lrs == pytest.approx([mmcv_poly_lr(it, 1e-3, 6, 2)] * len(lrs), rel=1e-9), it
    assert [x["iteration"] for x in r["train_loss"]] == [2, 4, 6]

    # The backbone is frozen and untouched; the head is what trained.
    probe = seen["probe"]
    assert not any(p.requires_grad for p in probe.features.parameters())
    for k, v in probe.features.state_dict().items():
        assert torch.equal(v, seen["backbone"][k]), k
    heads = probe.heads.state_dict()
    assert heads.keys() == seen["heads"].keys()
    assert all(not torch.equal(v, seen["heads"][k]) for k, v in heads.items())
    assert probe.heads.heads[0].conv_seg.in_channels == 4 * 192  # blocks 0-3 concatenated

    m = r["metrics"]
    assert len(m["per_class_iou"]) == 21
    assert m["mIoU"] == pytest.approx(mean_of_defined(m["per_class_iou"]))
    assert r["last"] == m and r["best"]["mIoU"] == m["mIoU"]


def test_linear_probe_cached_sweep_records_each_lr(soda, tmp_path):
    lrs = [1e-4, 1e-2]
    r = run_protocol(
        "linear_probe", MODEL, dataset(soda),
        {**TINY, "iters": 8, "mode": "cached", "sweep_lrs": lrs}, tmp_path, progress=False,
    )
    assert r["mode"] == "cached"
    assert [row["lr"] for row in r["lr_sweep"]] == lrs
    assert r["cached_images"] == 16
    best = max(r["lr_sweep"], key=lambda row: row["last"]["mIoU"])
    # Cached mode has no paper lr: by default the best final mIoU is reported, and said so.
    assert r["selected_by"] == "best_on_eval"
    assert r["reported_lr"] == best["lr"] and r["metrics"] == best["last"]
    # Two learning rates two orders apart cannot give the same head.
    assert r["lr_sweep"][0]["last"] != r["lr_sweep"][1]["last"]


def test_layerwise_probe_reports_every_block(soda, tmp_path):
    r = run_protocol("layerwise", MODEL, dataset(soda), {**TINY, "iters": 6, "layers": "all"},
                     tmp_path, progress=False)
    assert sorted(r["per_layer"]) == ["0", "1", "2", "3"]
    assert r["metrics"] == r["per_layer"][str(r["best_layer"])]
    mious = {m["mIoU"] for m in r["per_layer"].values()}
    assert len(mious) > 1  # independent heads on different blocks


def test_nan_loss_stops_naming_the_iteration_and_keeps_the_checkpoint(
    soda, tmp_path, monkeypatch
):
    # Weights blown up after every optimiser step (what an absurd lr did before such lrs
    # were refused up front): the loss of step 2 is not finite. Step 1 was checkpointed
    # and must survive.
    from bench.protocols import finetune

    real_build = finetune.build_adamw

    def blow_up(opt, args, kwargs) -> None:
        with torch.no_grad():
            for group in opt.param_groups:
                for p in group["params"]:
                    p.mul_(1e30)

    def exploding_adamw(*args, **kwargs):
        opt = real_build(*args, **kwargs)
        opt.register_step_post_hook(blow_up)
        return opt

    monkeypatch.setattr(finetune, "build_adamw", exploding_adamw)
    settings = {**TINY_FT, "iters": 6, "warmup_iters": 0, "checkpoint_interval": 1}
    with pytest.raises(TrainingDiverged, match=r"at iteration (\d+) of 6.*iteration (\d+)"):
        run_protocol("fine_tune", MODEL, dataset(soda), settings, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] >= 1
    assert not (tmp_path / "result.json").exists()


@pytest.mark.parametrize("protocol", ["fine_tune", "linear_probe_cached"])
def test_a_finished_run_keeps_only_its_result(soda, tmp_path, protocol):
    """Checkpoint (and the cached mode's feature cache) go once result.json is written."""
    settings = {**TINY_FT, "iters": 2, "checkpoint_interval": 1}
    if protocol == "linear_probe_cached":
        protocol, settings = "linear_probe", {**TINY, "iters": 2, "checkpoint_interval": 1,
                                              "mode": "cached", "sweep_lrs": [1e-3]}
    run_protocol(protocol, MODEL, dataset(soda), settings, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_kept_state_and_final_weights_are_the_last_iteration(soda, tmp_path):
    from safetensors import safe_open

    keep = {"keep_training_state": True, "save_final_weights": True}
    settings = {**TINY_FT, "iters": 2, "checkpoint_interval": 2}
    r = run_protocol("fine_tune", MODEL, dataset(soda), {**settings, **keep}, tmp_path,
                     progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt", "final_weights.safetensors", "result.json"
    ]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 2
    with safe_open(tmp_path / "final_weights.safetensors", "pt") as f:
        assert f.metadata()["fingerprint"] == r["fingerprint"]
        assert f.metadata()["iteration"] == "2"
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    assert weights.keys() == state["model"].keys()
    assert any(k.startswith("backbone.") for k in weights)  # the whole segmentor
    for k, v in weights.items():
        assert torch.equal(v, state["model"][k]), k
    # Same run without the keep settings: the stored result, nothing retrained or removed.
    again = run_protocol("fine_tune", MODEL, dataset(soda), settings, tmp_path, progress=False)
    assert again == r and (tmp_path / "checkpoint.pt").exists()


def test_bad_dataset_folder_fails_fast(tmp_path):
    from bench.data import DatasetError

    with pytest.raises(DatasetError, match="does not exist"):
        run_protocol("fine_tune", MODEL, dataset(tmp_path / "missing"), {**TINY, "iters": 2},
                     tmp_path / "wd")
    assert not (tmp_path / "wd").exists()


def test_unknown_setting_suggests_the_right_one(soda, tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'layer_decay'"):
        run_protocol("fine_tune", MODEL, dataset(soda), {"layer_dcay": 0.5}, tmp_path)


def test_bf16_autocast_on_cpu_only_when_asked(soda, tmp_path):
    from bench.protocols.runtime import resolve_mixed_precision

    assert resolve_mixed_precision("auto", cuda=False) == "no"
    assert resolve_mixed_precision("auto", cuda=True) == "fp16"
    with pytest.raises(ValueError, match="fp16"):
        resolve_mixed_precision("fp16", cuda=False)
    r = run_protocol("linear_probe", MODEL, dataset(soda),
                     {**TINY, "iters": 4, "mixed_precision": "bf16"}, tmp_path, progress=False)
    assert r["device"]["mixed_precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in r["train_loss"])


def test_gradient_accumulation_keeps_the_global_batch(soda, tmp_path):
    # Linear heads have no BN, so two micro-batches of 2 follow one batch of 4 closely
    # (only the per-micro-batch loss normalisation differs).
    runs = {}
    for accum in (1, 2):
        runs[accum] = run_protocol(
            "linear_probe", MODEL, dataset(soda),
            {**TINY, "iters": 6, "grad_accum_steps": accum, "log_interval": 1},
            tmp_path / str(accum), progress=False,
        )
    l1 = [x["loss"] for x in runs[1]["train_loss"]]
    l2 = [x["loss"] for x in runs[2]["train_loss"]]
    assert len(l1) == len(l2) == 6
    for a, b in zip(l1, l2, strict=True):
        assert abs(a - b) < 0.015 * a, (l1, l2)  # one step lowers the loss ~3%


def test_cli_train_prints_per_class_iou(soda, tmp_path, capsys):
    from bench.cli import main

    sets = []
    for k, v in {**TINY, "iters": 3}.items():
        sets += ["--set", f"{k}={json.dumps(v)}"]
    rc = main(["train", "linear-probe", "--adapter", "mae", "--size", "T", "--option",
               "depth=4", "--dataset", "soda", "--root", str(soda), "--workdir",
               str(tmp_path), "--no-progress", *sets])
    out = capsys.readouterr().out
    assert rc == 0
    assert "linear_probe (on_the_fly) on soda test, 3 iterations" in out
    assert "traffic_cone" in out and "mIoU" in out
    assert json.loads((tmp_path / "result.json").read_text())["iterations"] == 3
    rc = main(["train", "finetune", "--adapter", "mae", "--size", "T", "--dataset", "soda",
               "--root", str(soda), "--workdir", str(tmp_path / "x"), "--set", "lr_decay=1"])
    assert rc == 2
    assert "Did you mean 'layer_decay'" in capsys.readouterr().err
