"""Fine-tuning optimiser: layer-wise lr decay of every ViT-S + UPerNet parameter, the
no-decay set, and the per-iteration warm-up + poly schedule on the decayed groups."""

from __future__ import annotations

import re

import pytest
import torch
from single_thread import one_thread

from bench.backbones.adapter import load_backbone
from bench.protocols.config import resolve_settings
from bench.protocols.engine import build_scheduler
from bench.protocols.finetune import build_model, optimizer_groups
from bench.protocols.optim import build_adamw

EMBEDDINGS = ("backbone.vit.cls_token", "backbone.vit.pos_embed", "backbone.vit.patch_embed.")


def expected_layer(name: str, depth: int) -> int:
    """The paper's rule written out independently: embeddings 0, block i -> i+1, the
    rest (neck, decode and auxiliary heads) depth+1."""
    m = re.match(r"backbone\.vit\.blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    if name.startswith(EMBEDDINGS):
        return 0
    return depth + 1



_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

@pytest.fixture(scope="module")
def vit_s_upernet():
    s = resolve_settings("fine_tune", "soda", "mae", "small", {})
    bb = load_backbone("mae", "small", img_size=64)
    model = build_model(bb, 21, s)
    return model, s


def test_every_parameter_gets_decay_to_the_power_of_its_depth(vit_s_upernet):
    model, s = vit_s_upernet
    depth = model.backbone.depth
    assert depth == 12 and s.layer_decay == 0.65
    groups = optimizer_groups(model, s)
    scale_of = {n: g["lr_scale"] for g in groups for n in g["names"]}
    lr_of = {n: g["lr"] for g in groups for n in g["names"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(scale_of) == trainable
    # The final norm is read by nothing (features are taken without it): not trained.
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {
        "backbone.vit.norm.weight", "backbone.vit.norm.bias"
    }
    seen_layers = set()
    for name in trainable:
        layer = expected_layer(name, depth)
        seen_layers.add(layer)
        want = 0.65 ** (depth + 1 - layer)
        assert scale_of[name] == pytest.approx(want, rel=1e-12), name
        assert lr_of[name] == pytest.approx(1e-4 * want, rel=1e-12), name
    assert seen_layers == set(range(depth + 2))
    assert scale_of["head.conv_seg.weight"] == 1.0
    assert scale_of["neck.branches.0.0.weight"] == 1.0
    assert scale_of["aux_head.conv_seg.weight"] == 1.0
    assert scale_of["backbone.vit.pos_embed"] == pytest.approx(0.65**13)


def released_weight_decay(name: str, shape: torch.Size) -> float:
    """LayerDecayOptimizerConstructor of UNIP_segmentation/mmcv_custom, written out: no decay
    for 1-D tensors and '.bias' names; its `name in ('pos_embed', 'cls_token')` test sees
    prefixed names ('backbone.pos_embed'), so it never matches and both decay."""
    if len(shape) == 1 or name.endswith(".bias"):
        return 0.0
    return 0.05


def test_weight_decay_is_the_releases_tokens_included(vit_s_upernet):
    model, s = vit_s_upernet
    assert s.weight_decay_rule == "no_bias_norm"
    wd_of = {n: g["weight_decay"] for g in optimizer_groups(model, s) for n in g["names"]}
    params = dict(model.named_parameters())
    for name, wd in wd_of.items():
        assert wd == released_weight_decay(name, params[name].shape), name
    # The two parameters where the release's intent and its behaviour differ.
    assert wd_of["backbone.vit.pos_embed"] == 0.05
    assert wd_of["backbone.vit.cls_token"] == 0.05
    decayed = sum(p.numel() for n, p in params.items() if wd_of.get(n) == 0.05)
    exempt = sum(p.numel() for n, p in params.items() if wd_of.get(n) == 0.0)
    assert exempt == sum(
        p.numel() for n, p in params.items()
        if n in wd_of and (p.ndim == 1 or n.endswith(".bias"))
    )
    assert decayed + exempt == sum(p.numel() for n, p in params.items() if p.requires_grad)


def test_exempting_tokens_is_a_named_setting(vit_s_upernet):
    model, s = vit_s_upernet
    s = s.model_copy(update={"weight_decay_rule": "no_bias_norm_tokens"})
    wd_of = {n: g["weight_decay"] for g in optimizer_groups(model, s) for n in g["names"]}
    assert wd_of["backbone.vit.pos_embed"] == wd_of["backbone.vit.cls_token"] == 0.0
    assert wd_of["backbone.vit.blocks.0.attn.qkv.weight"] == 0.05
    assert wd_of["backbone.vit.blocks.0.attn.qkv.bias"] == 0.0


def test_probes_decay_every_parameter_as_mmcvs_default_constructor():
    # The released probing configs give AdamW weight_decay=0.05 and no paramwise_cfg:
    # mmcv's DefaultOptimizerConstructor then decays every parameter, the bias included.
    from bench.models.probe import build_probe
    from bench.protocols.probe_training import head_optimizer

    for proto in ("linear_probe", "layerwise_probe"):
        s = resolve_settings(proto, "soda", "mae", "small", {})
        assert s.weight_decay_rule == "all"
    bb = load_backbone("mae", "tiny", img_size=32, depth=2)
    probe = build_probe(bb, [0, 1], inputs=[[0, 1]], num_classes=21)

    class Ctx:
        settings = resolve_settings("linear_probe", "soda", "mae", "tiny", {})

    opt = head_optimizer(probe.heads, [1e-3], Ctx())
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05]
    shapes = sorted(tuple(p.shape) for g in opt.param_groups for p in g["params"])
    assert shapes == [(21,), (21, 384, 1, 1)]


def test_unip_fine_tunes_with_decay_085():
    s = resolve_settings("fine_tune", "soda", "unip", "small", {})
    assert s.layer_decay == 0.85


def test_schedule_scales_each_groups_decayed_lr(vit_s_upernet):
    model, s = vit_s_upernet
    s = s.model_copy(update={"iters": 100, "warmup_iters": 10})
    opt = build_adamw(optimizer_groups(model, s), lr=s.lr, betas=s.betas)
    sched = build_scheduler(opt, s)
    base = [g["initial_lr"] for g in opt.param_groups]  # the decayed lr, before the schedule
    factors = []
    for _ in range(100):
        factors.append(opt.param_groups[0]["lr"] / base[0])
        for g, b in zip(opt.param_groups, base, strict=True):
            assert g["lr"] == pytest.approx(b * factors[-1], rel=1e-9, abs=1e-30)
        opt.step()
        sched.step()
    assert factors[0] == pytest.approx(1e-6)  # mmseg warm-up ratio
    # mmcv's linear warm-up scales the poly lr of the same step (poly(5) = 0.95)
    assert factors[5] == pytest.approx(0.95 * (1e-6 + (1 - 1e-6) * 0.5))
    assert factors[10] == pytest.approx(0.9)  # joins the poly curve continuously
    assert factors[50] == pytest.approx(0.5)  # poly, power 1: 1 - 50/100
    assert factors[99] == pytest.approx(0.01)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert isinstance(opt, torch.optim.AdamW)
