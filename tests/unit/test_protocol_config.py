"""Protocol settings: paper defaults, per-dataset/size/adapter defaults, strict overrides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bench.protocols.config import (
    FineTuneSettings,
    LayerwiseProbeSettings,
    LinearProbeSettings,
    resolve_settings,
)
from bench.protocols.registry import ordered_protocols


def test_paper_defaults():
    s = resolve_settings("fine_tune", "soda", "mae", "base", {})
    assert (s.crop_size, s.scale, s.ratio_range, s.cat_max_ratio) == (
        512, (2048, 512), (0.5, 2.0), 0.75
    )
    assert (s.inference, s.slide_crop, s.slide_stride) == ("slide", 512, 341)
    assert (s.lr, s.betas, s.weight_decay, s.layer_decay) == (1e-4, (0.9, 0.999), 0.05, 0.65)
    assert (s.warmup_iters, s.iters, s.batch_size, s.poly_power) == (1500, 14400, 8, 1.0)
    assert (s.drop_path, s.layers, s.neck, s.head) == (0.1, [3, 5, 7, 11], "multilevel",
                                                        "uperhead")
    assert (s.head_channels, s.pool_scales, s.head_dropout) == (None, (1, 2, 3, 6), 0.1)
    assert (s.aux_head, s.aux_channels, s.aux_num_convs, s.aux_loss_weight) == (
        "fcn", 256, 1, 0.4
    )
    assert s.mixed_precision == "auto"


@pytest.mark.parametrize(
    ("dataset", "warmup", "iters"),
    [("soda", 1500, 14400), ("mfnet_thermal", 1000, 9800), ("MFNet", 1000, 9800),
     ("scut_seg", 1700, 16800), ("SCUT-Seg", 1700, 16800)],
)
def test_schedule_per_dataset(dataset, warmup, iters):
    for proto in ordered_protocols():
        s = resolve_settings(proto.name, dataset, "mae", "small", {})
        assert (s.warmup_iters, s.iters) == (warmup, iters)


def test_large_reads_deeper_blocks_with_more_drop_path():
    s = resolve_settings("finetune", "soda", "mae", "L", {})
    assert s.layers == [7, 11, 15, 23] and s.drop_path == 0.2
    lp = resolve_settings("linear-probe", "soda", "mae", "large", {})
    assert lp.layers == [7, 11, 15, 23]


def test_unip_defaults_and_overrides_win():
    s = resolve_settings("fine_tune", "soda", "unip", "S", {})
    assert (s.layer_decay, s.neck) == (0.85, "llfpn")
    s = resolve_settings("fine_tune", "soda", "unip", "S", {"layer_decay": 0.7, "iters": 2000})
    assert (s.layer_decay, s.iters, s.warmup_iters) == (0.7, 2000, 1500)


def test_probe_settings():
    lp = resolve_settings("linear_probe", "soda", "mae", "S", {"mode": "cached"})
    assert isinstance(lp, LinearProbeSettings)
    assert lp.mode == "cached" and lp.head == "linear" and len(lp.sweep_lrs) == 4
    lw = resolve_settings("layerwise", "nyuv2_depth", "mae", "S",
                          {"iters": 100, "warmup_iters": 10})
    assert isinstance(lw, LayerwiseProbeSettings)
    assert lw.layers == "all" and lw.crop_size == 480 and lw.slide_crop == 480
    assert not hasattr(lw, "layer_decay")


def test_linear_probe_sweep_settings():
    paper = resolve_settings("linear_probe", "soda", "mae", "S", {})
    assert (paper.mode, paper.sweep, paper.sweeps) == ("on_the_fly", False, False)
    assert paper.lr == 1e-4 and paper.lr in paper.sweep_lrs  # sweep: true works as is
    swept = resolve_settings("linear_probe", "soda", "mae", "S", {"sweep": True})
    assert swept.sweeps and swept.selection == "paper_lr"
    cached = resolve_settings("linear_probe", "soda", "mae", "S", {"mode": "cached"})
    assert cached.sweeps and cached.selection == "best_on_eval"
    chosen = resolve_settings("linear_probe", "soda", "mae", "S",
                              {"sweep": True, "select": "best_on_eval", "lr": 5e-4})
    assert chosen.selection == "best_on_eval"  # no paper lr needed in the sweep
    both = resolve_settings("linear_probe", "soda", "mae", "S",
                            {"sweep": True, "sweep_lrs": [1e-4, 1e-3],
                             "sweep_heads": ["bn_linear", "linear"]})
    assert both.sweep_grid == [("bn_linear", 1e-4), ("bn_linear", 1e-3), ("linear", 1e-4),
                               ("linear", 1e-3)]
    assert swept.sweep_grid == [("linear", lr) for lr in swept.sweep_lrs]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sweep": True, "lr": 5e-4}, "lr 0.0005 is not one of sweep_lrs"),
        ({"mode": "cached", "select": "paper_lr", "lr": 5e-4}, "is not one of sweep_lrs"),
        ({"sweep": True, "mode": "cached"}, "sweep: true applies to mode on_the_fly"),
        ({"select": "best_on_eval"}, "select: best_on_eval needs an lr sweep"),
        ({"sweep": True, "sweep_lrs": [1e-4, 1e-4]}, "sweep_lrs repeats an lr"),
        ({"sweep_heads": ["bn_linear"]}, "sweep_heads needs an lr sweep"),
        ({"sweep": True, "sweep_heads": ["bn_linear"]}, "head linear is not one of sweep_heads"),
        ({"sweep": True, "sweep_heads": []}, "distinct head types"),
        ({"sweep": True, "sweep_heads": ["linear", "linear"]}, "distinct head types"),
    ],
)
def test_linear_probe_sweep_settings_refused(overrides, message):
    with pytest.raises(ValidationError, match=message):
        resolve_settings("linear_probe", "soda", "mae", "S", overrides)


def test_unknown_keys_and_bad_values_are_errors():
    with pytest.raises(ValueError, match="Did you mean 'warmup_iters'"):
        resolve_settings("fine_tune", "soda", "mae", "S", {"warmup_iter": 10})
    with pytest.raises(ValueError, match="unknown protocol"):
        resolve_settings("finetuning-ish", "soda", "mae", "S", {})
    with pytest.raises(ValidationError):
        FineTuneSettings(foo=1)
    with pytest.raises(ValidationError, match="mixed_precision"):
        resolve_settings("fine_tune", "soda", "mae", "S", {"mixed_precision": "fp8"})
    with pytest.raises(ValidationError, match="slide_stride"):
        resolve_settings("fine_tune", "soda", "mae", "S", {"slide_stride": 600})
    with pytest.raises(ValidationError, match="grad_accum_steps"):
        resolve_settings("fine_tune", "soda", "mae", "S", {"grad_accum_steps": 3})
    with pytest.raises(ValueError, match="no paper schedule"):
        resolve_settings("layerwise", "my_plugin_dataset", "mae", "S", {})


def test_every_field_is_documented():
    for cls in (p.settings for p in ordered_protocols()):
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name}"


@pytest.mark.parametrize(
    ("protocol", "key", "value"),
    [
        ("fine_tune", "lr", 1e45),
        ("fine_tune", "lr", 10.5),
        ("fine_tune", "lr", float("inf")),
        ("fine_tune", "weight_decay", float("nan")),
        ("fine_tune", "weight_decay", 50.0),
        ("fine_tune", "betas", (0.9, 1.0)),
        ("fine_tune", "betas", (-0.1, 0.999)),
        ("fine_tune", "warmup_ratio", 1.5),
        ("fine_tune", "min_lr_ratio", 2.0),
        ("fine_tune", "aux_loss_weight", float("inf")),
        ("fine_tune", "ratio_range", (0.5, float("inf"))),
        ("linear_probe", "sweep_lrs", [1e-3, 1e3]),
        ("linear_probe", "sweep_lrs", [float("nan")]),
    ],
)
def test_absurd_and_non_finite_values_are_refused_naming_the_key(protocol, key, value):
    with pytest.raises(ValidationError) as info:
        resolve_settings(protocol, "soda", "mae", "T", {key: value})
    assert [e["loc"][0] for e in info.value.errors()] == [key]


def test_bounds_keep_every_value_a_user_would_set():
    s = resolve_settings("fine_tune", "soda", "mae", "T", {
        "lr": 10, "betas": (0.0, 0.9999), "weight_decay": 0.0, "warmup_ratio": 1.0,
        "min_lr_ratio": 0.0,
    })
    assert s.lr == 10 and s.betas == (0.0, 0.9999)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=1e45", "optim.lr"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.base_lr=.nan", "optim.base_lr"),
        ("optim.base_lr=1", "optim.base_lr"),  # x 4096 / 256 = 16
        ("optim.betas=[0.9, 1.5]", "optim.betas"),
        ("optim.weight_decay=1e9", "optim.weight_decay"),
        ("optim.warmup_epochs=.inf", "optim.warmup_epochs"),
    ],
)
def test_distillation_refuses_absurd_optimiser_values_naming_the_key(tmp_path, override, key):
    from unip.distill_config import load_config

    cfg = tmp_path / "d.yaml"
    cfg.write_text("teacher: {adapter: mae, size: T}\ndata: {path: images}\noutput_dir: out\n")
    with pytest.raises(ValueError) as info:
        load_config(cfg, [override])
    msg = str(info.value)
    assert msg.startswith(f"--set: {key}: ") and "\n" not in msg
