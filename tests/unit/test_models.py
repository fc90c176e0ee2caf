"""Necks, heads, segmentor and probes: shapes, contracts, losses, frozen parts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from single_thread import one_thread
from torch import nn

from bench.backbones.adapter import load_backbone
from bench.models.heads import BNLinearHead, FCNHead, LinearHead, UPerHead
from bench.models.necks import MultiLevelNeck
from bench.models.probe import build_probe, probe_losses
from bench.models.segmentor import build_segmentor
from bench.registry import HEADS, NECKS

ROOT = Path(__file__).resolve().parents[2]



_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone("mae", "tiny", img_size=64, depth=4, drop_path_rate=0.0)


def test_multilevel_neck_builds_the_four_scales(backbone):
    neck = NECKS.get("multilevel")(backbone, layers=[0, 1, 2, 3])
    assert isinstance(neck, MultiLevelNeck)
    feats = backbone.features(torch.randn(2, 3, 64, 96), neck.layers)
    out = neck(feats)
    assert [tuple(o.shape[-2:]) for o in out] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert neck.out_channels == [192] * 4
    # x4: ConvT, BN, GELU, ConvT; x2: one ConvT; identity; max-pool.
    kinds = [type(m).__name__ for m in neck.branches[0]]
    assert kinds == ["ConvTranspose2d", "BatchNorm2d", "GELU", "ConvTranspose2d"]
    assert isinstance(neck.branches[1], nn.ConvTranspose2d)
    assert isinstance(neck.branches[2], nn.Identity)
    assert isinstance(neck.branches[3], nn.MaxPool2d)


def test_multilevel_neck_rejects_blocks_the_backbone_lacks(backbone):
    with pytest.raises(ValueError, match="out of range"):
        MultiLevelNeck(backbone, layers=[3, 5, 7, 11])


def test_llfpn_comes_from_the_entry_point_and_reads_the_last_block_once(backbone):
    cls = NECKS.get("llfpn")
    assert cls.__module__ == "unip.llfpn" and cls.__name__ == "LastLayerFPN"
    neck = cls(backbone, layers=[0, 1, 2, 3])
    assert neck.layers == [backbone.depth - 1]
    out = neck(backbone.features(torch.randn(1, 3, 64, 64), neck.layers))
    assert [tuple(o.shape[-2:]) for o in out] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_bench_never_imports_unip_or_adapters_by_name():
    offenders = []
    for path in (ROOT / "bench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] in ("unip", "adapters")]
    assert offenders == []


def test_heads_are_registered_and_predict_at_the_finest_level():
    assert {"uperhead", "fcn", "linear", "bn_linear"} <= set(HEADS.names())
    feats = [torch.randn(2, 8, s, s) for s in (16, 8, 4, 2)]
    up = UPerHead([8] * 4, 5, channels=16, pool_scales=(1, 2, 3, 6), dropout=0.1)
    assert up(feats).shape == (2, 5, 16, 16)
    assert [m[0].output_size for m in up.ppm] == [1, 2, 3, 6]
    fcn = FCNHead([8] * 4, 5, channels=256, num_convs=1, in_index=2)
    assert fcn(feats).shape == (2, 5, 4, 4)
    lin = LinearHead([8, 8], 5)
    assert lin([feats[1], feats[2]]).shape == (2, 5, 8, 8)  # resized up to the largest
    assert lin.conv_seg.in_channels == 16 and lin.conv_seg.kernel_size == (1, 1)
    bn = BNLinearHead([8], 5)
    assert isinstance(bn.norm, nn.BatchNorm2d)


def _segmentor(backbone, aux: bool = True):
    return build_segmentor(
        backbone, 5, neck="multilevel", head="uperhead", neck_kwargs={"layers": [0, 1, 2, 3]},
        head_kwargs={"channels": 16}, aux_head="fcn" if aux else None,
        aux_kwargs={"channels": 8, "in_index": 2}, aux_loss_weight=0.4,
    )


def test_segmentor_logits_match_any_input_size(backbone):
    model = _segmentor(backbone).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70)).shape == (1, 5, 50, 70)
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64, 64)


def test_segmentor_loss_is_decode_plus_weighted_aux_and_ignores_255(backbone):
    model = _segmentor(backbone).train()
    img = torch.randn(2, 3, 64, 64)
    label = torch.randint(0, 5, (2, 64, 64))
    label[:, :10] = 255
    torch.manual_seed(1)
    out = model(img, label)
    assert torch.allclose(out["loss"], out["loss_decode"] + 0.4 * out["loss_aux"])
    # All-ignore labels contribute nothing (no NaN from an empty mean).
    empty = model(img, torch.full((2, 64, 64), 255))
    assert empty["loss"].item() == 0.0


def test_segmentor_loss_is_mmseg_cross_entropy_with_ignored_pixels_at_zero(backbone):
    """Mixed labels: the decode loss is -log p(label) summed over labelled pixels only and
    divided by every pixel of the batch (mmseg 0.x CrossEntropyLoss, ``avg_non_ignore``
    off), computed here by hand from the logits."""
    model = _segmentor(backbone, aux=False).eval()  # eval: no dropout, logits reproducible
    img = torch.randn(2, 3, 64, 64)
    label = torch.randint(0, 5, (2, 64, 64))
    label[0, :10] = 255
    label[1, :, 40:] = 255
    with torch.no_grad():
        logits = model(img)  # B x 5 x 64 x 64, the logits the loss is taken on
        loss = model(img, label)["loss_decode"]
        relabelled = label.clone()
        relabelled[label == 255] = 0  # the same pixels, now counted
        counted = model(img, relabelled)["loss_decode"]
    keep = label != 255
    z = logits.double().permute(0, 2, 3, 1)[keep]  # labelled pixels x classes
    y = label[keep]
    per_pixel = torch.logsumexp(z, dim=1) - z[torch.arange(len(y)), y]
    assert 0 < keep.sum() < label.numel()
    assert loss.item() == pytest.approx((per_pixel.sum() / label.numel()).item(), rel=1e-5)
    # The ignored pixels had a non-zero loss to give when labelled: here they give none.
    z_all = logits.double().permute(0, 2, 3, 1).reshape(-1, 5)
    y_all = relabelled.reshape(-1)
    everything = torch.logsumexp(z_all, 1) - z_all[torch.arange(len(y_all)), y_all]
    assert counted.item() == pytest.approx(everything.mean().item(), rel=1e-5)
    assert counted.item() > loss.item() + 0.1


def test_single_process_keeps_plain_batchnorm(backbone):
    model = _segmentor(backbone)
    norms = [type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and set(norms) == {nn.BatchNorm2d}


def test_unused_backbone_parts_are_frozen(backbone):
    bb = load_backbone("mae", "tiny", img_size=64, depth=4)
    build_segmentor(bb, 5, neck_kwargs={"layers": [0, 1, 2, 2]}, head_kwargs={"channels": 8})
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    assert "vit.norm.weight" in frozen and "vit.blocks.3.mlp.fc1.weight" in frozen
    assert not any(n.startswith("vit.blocks.2.") for n in frozen)


def test_probe_keeps_the_backbone_frozen_in_eval_mode(backbone):
    probe = build_probe(backbone, [1, 3], inputs=[[0, 1]], num_classes=5)
    probe.train()
    assert not probe.features.backbone.training
    assert all(not p.requires_grad for p in probe.features.parameters())
    assert probe.heads.heads[0].conv_seg.in_channels == 2 * 192
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    out = probe(torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64)))
    out["loss"].backward()
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert all(p.grad is None for p in probe.features.parameters())


def test_summed_probe_losses_train_each_head_as_if_alone(backbone):
    probe = build_probe(backbone, [0, 2, 3], inputs=[[0], [1], [2]], num_classes=5)
    img, label = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    probe(img, label)["loss"].backward()
    together = [h.conv_seg.weight.grad.clone() for h in probe.heads.heads]
    for k, head in enumerate(probe.heads.heads):
        probe.zero_grad()
        logits = probe.heads(probe.features(img))[k]
        probe_losses([logits], label, (64, 64), 16)["loss"].backward()
        assert torch.allclose(head.conv_seg.weight.grad, together[k], atol=1e-6)
    with torch.no_grad():
        assert probe.eval()(img).shape == (2, 15, 64, 64)  # 3 heads x 5 classes


def test_probe_reads_blocks_without_the_final_norm_into_one_4d_conv(backbone):
    # The paper's linear probe: blocks' raw outputs (no final LayerNorm, even for the last
    # block), concatenated to 4·D channels, then a single 1x1 conv (no BN by default).
    probe = build_probe(backbone, [0, 1, 2, 3], inputs=[[0, 1, 2, 3]], num_classes=5).eval()
    head = probe.heads.heads[0]
    assert isinstance(head.norm, nn.Identity)
    assert [type(m) for m in head.modules() if not isinstance(m, nn.Identity)] == [
        LinearHead, nn.Conv2d]
    assert (head.conv_seg.in_channels, head.conv_seg.kernel_size) == (4 * 192, (1, 1))
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = probe.features(img)
        raw = backbone.features(img, [0, 1, 2, 3], norm=False)
        normed = backbone.features(img, [3], norm=True)[0]
    assert all(torch.equal(g, r) for g, r in zip(got, raw, strict=True))
    assert not torch.allclose(got[3], normed, atol=1e-3)
