"""Fine-tuning backbone extras against the released UNIP pipeline (UNIP_segmentation).

Expected values come from the release's code read by hand: backbone/mae.py (Attention's
relative_position_index, Block's gamma_1/gamma_2), mmcv_custom/layer_decay_optimizer_
constructor.py (get_num_layer_for_vit and the decay / no-decay rule) and the fine-tuning
configs (init_values=1., use_rel_pos_bias=True, img_size=512; UNIP's train_scripts turn
the bias off).
"""

from __future__ import annotations

import pytest
import torch
from single_thread import one_thread
from timm.layers import LayerScale

import bench.backbones.flops as flops
from bench.backbones.adapter import load_backbone
from bench.backbones.flops import MacCount, model_flops, protocol_flops
from bench.models.vit_extras import (
    RelPosBiasAttention,
    add_finetune_extras,
    relative_position_index,
)
from bench.protocols.config import resolve_settings
from bench.protocols.finetune import build_model, optimizer_groups

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

# The release's index for a 2x2 window (num_relative_distance = 3*3 + 3 = 12), worked out
# by hand: patches (0,0) (0,1) (1,0) (1,1) in row-major order, patch pair (i, j) ->
# (dy_ij + 1) * 3 + (dx_ij + 1); row 0 (cls query) 12-3 = 9, column 0 (cls key) 12-2 = 10,
# [0, 0] 12-1 = 11.
INDEX_2X2 = [
    [11, 9, 9, 9, 9],
    [10, 4, 3, 1, 0],
    [10, 5, 4, 2, 1],
    [10, 7, 6, 4, 3],
    [10, 8, 7, 5, 4],
]


def _settings(adapter: str = "mae", size: str = "tiny", **overrides):
    return resolve_settings("fine_tune", "soda", adapter, size, overrides)


def _tiny(img: int = 32, depth: int = 2, window=(2, 2), layer_scale=1.0, bias=True):
    bb = load_backbone("mae", "tiny", img_size=img, depth=depth)
    add_finetune_extras(bb, layer_scale, bias, window)
    return bb.eval()


# ---------------------------------------------------------------------- the index
def test_relative_position_index_of_a_2x2_window_is_the_releases():
    assert relative_position_index((2, 2)).tolist() == INDEX_2X2


def test_relative_position_index_rectangular_window():
    # 1x2: offsets table 1*3 = 3 rows, then cls rows 3, 4, 5.
    assert relative_position_index((1, 2)).tolist() == [[5, 3, 3], [4, 1, 0], [4, 2, 1]]
    # 2x3: the row offset is multiplied by 2*Ww-1 = 5 (not 2*Wh-1 = 3); 15 + 3 rows.
    idx = relative_position_index((2, 3))
    assert idx.shape == (7, 7)
    assert idx[1 + 5, 1 + 0].item() == (1 + 1) * 5 + (2 + 2)  # (1,2) to (0,0): 14
    assert idx[1 + 0, 1 + 5].item() == 0  # (0,0) to (1,2)
    assert idx[1 + 4, 1 + 4].item() == 1 * 5 + 2  # zero offset
    assert (idx[0, 1:] == 15).all() and (idx[1:, 0] == 16).all() and idx[0, 0] == 17


def test_extra_prefix_tokens_share_the_class_tokens_rows():
    idx = relative_position_index((2, 2), num_prefix_tokens=2)  # a distilled DeiT
    assert idx[2:, 2:].tolist() == [row[1:] for row in INDEX_2X2[1:]]
    assert (idx[:2, 2:] == 9).all() and (idx[2:, :2] == 10).all() and (idx[:2, :2] == 11).all()


# ---------------------------------------------------------------------- shapes and names
def test_vit_s_at_512_gets_the_release_tables_and_gammas():
    bb = load_backbone("mae", "small", img_size=512)
    before = {n: p.shape for n, p in bb.named_parameters()}
    model = build_model(bb, 21, _settings(size="small"))
    added = {n: p.shape for n, p in model.backbone.named_parameters() if n not in before}
    want = {}
    for i in range(12):
        want[f"vit.blocks.{i}.attn.relative_position_bias_table"] = (63 * 63 + 3, 6)
        want[f"vit.blocks.{i}.ls1.gamma"] = want[f"vit.blocks.{i}.ls2.gamma"] = (384,)
    assert {n: tuple(s) for n, s in added.items()} == want
    for blk in bb.vit.blocks:
        assert (blk.attn.relative_position_bias_table == 0).all()
        assert (blk.ls1.gamma == 1).all() and (blk.ls2.gamma == 1).all()
        assert blk.attn.fused_attn  # the fused SDPA path is kept
        assert blk.attn.relative_position_index.shape == (1025, 1025)
    assert bb.meta.extra["fine_tune_extras"]["rel_pos_bias_window"] == [32, 32]
    # The index is derived, not stored: checkpoints hold the table only.
    assert not any("relative_position_index" in k for k in bb.state_dict())


# ---------------------------------------------------------------------- attention
def _qk_logits_by_hand(blk, tokens: torch.Tensor) -> torch.Tensor:
    attn = blk.attn
    h = blk.norm1(tokens)
    qkv = h @ attn.qkv.weight.T + attn.qkv.bias  # B x N x 3D
    b, n, _ = qkv.shape
    heads, hd = attn.num_heads, attn.head_dim
    q = qkv[..., : heads * hd].reshape(b, n, heads, hd).transpose(1, 2)
    k = qkv[..., heads * hd : 2 * heads * hd].reshape(b, n, heads, hd).transpose(1, 2)
    return q @ k.transpose(-2, -1) * hd**-0.5


def test_attention_logits_add_the_gathered_bias():
    bb = _tiny()
    blk = bb.vit.blocks[0]
    table = torch.randn(12, 3)  # (3*3 + 3) rows x 3 heads (ViT-T)
    with torch.no_grad():
        blk.attn.relative_position_bias_table.copy_(table)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        (logits,) = bb.attention(x, [0], logits=True)
        tokens = bb.tokens(x)
        plain = _qk_logits_by_hand(blk, tokens)
    gathered = table[torch.tensor(INDEX_2X2)]  # 5 x 5 x heads
    expected = plain + gathered.permute(2, 0, 1)[None]
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, plain, atol=1e-2)


def test_fused_attention_uses_the_bias_as_the_unfused_path_does():
    bb = _tiny()
    blk = bb.vit.blocks[0]
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_()
        tokens = bb.tokens(torch.randn(2, 3, 32, 32))
        h = blk.norm1(tokens)
        fused = blk.attn(h)
        # softmax(logits) @ v, projected: written out from the logits checked above.
        probs = bb.attention_logits(blk, tokens).softmax(-1)
        v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias)[..., 2 * 192 :]
        v = v.reshape(2, 5, 3, 64).transpose(1, 2)
        by_hand = blk.attn.proj((probs @ v).transpose(1, 2).reshape(2, 5, 192))
        blk.attn.fused_attn = False
        unfused = blk.attn(h)
    assert torch.allclose(fused, by_hand, atol=1e-5)
    assert torch.allclose(fused, unfused, atol=1e-5)


def test_the_table_learns_through_the_fused_path():
    bb = _tiny().train()
    bb.features(torch.randn(2, 3, 32, 32), [-1])[0].square().mean().backward()
    for blk in bb.vit.blocks:
        grad = blk.attn.relative_position_bias_table.grad
        assert grad is not None and (grad.abs().sum(0) > 0).all()  # every head


def test_other_grids_resample_the_offsets_and_keep_the_prefix_rows():
    bb = _tiny(img=64, window=(2, 2))
    blk = bb.vit.blocks[0]
    with torch.no_grad():
        table = blk.attn.relative_position_bias_table
        table[:9] = torch.tensor([1.0, 2.0, 3.0])  # constant offsets per head
        table[9:] = torch.tensor([[4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]])
        # A 48x80 input is a 3x5 grid: 15 patches + cls, a 5x9-offset table.
        bb.attention(torch.randn(1, 3, 48, 80), [0], logits=True)
        bias = blk.attn.position_bias(16)
    assert bias.shape == (3, 16, 16)
    # Resampling a constant stays that constant; cls rows are the table's own.
    heads = torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    assert torch.allclose(bias[:, 1:, 1:], heads.expand(3, 15, 15), atol=1e-5)
    assert torch.equal(bias[:, 0, 1:], torch.tensor([4.0, 5.0, 6.0])[:, None].expand(3, 15))
    assert torch.equal(bias[:, 1:, 0], torch.tensor([7.0, 8.0, 9.0])[:, None].expand(3, 15))
    assert torch.equal(bias[:, 0, 0], torch.tensor([10.0, 11.0, 12.0]))
    # Back at the window's grid nothing is resampled: the release's gather exactly.
    with torch.no_grad():
        table[:9] = torch.arange(27.0).reshape(9, 3)
        bb.tokens(torch.randn(1, 3, 32, 32))
        at_window = blk.attn.position_bias(5)
    assert torch.equal(at_window, table[torch.tensor(INDEX_2X2)].permute(2, 0, 1))


def test_whole_image_inference_at_another_size_runs():
    s = _settings(crop_size=64, layers=[0, 1, 2, 3])
    bb = load_backbone("mae", "tiny", img_size=64, depth=4)
    model = build_model(bb, 5, s).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 80, 112)).shape == (1, 5, 80, 112)


# ---------------------------------------------------------------------- layer scale
def test_gammas_scale_the_branches():
    bb = _tiny(bias=False)
    blk = bb.vit.blocks[0]
    x = torch.randn(2, 5, 192)
    with torch.no_grad():
        blk.ls1.gamma.zero_()
        blk.ls2.gamma.zero_()
        assert torch.equal(blk(x), x)  # both branches off: identity
        blk.ls1.gamma.fill_(0.5)
        assert torch.allclose(blk(x), x + 0.5 * blk.attn(blk.norm1(x)), atol=1e-6)
        blk.ls1.gamma.zero_()
        blk.ls2.gamma.fill_(-2.0)
        assert torch.allclose(blk(x), x - 2.0 * blk.mlp(blk.norm2(x)), atol=1e-6)


def test_layer_scale_off_adds_nothing():
    bb = _tiny(layer_scale=None, bias=False)
    assert not any(isinstance(m, LayerScale) for m in bb.modules())
    bb = _tiny(layer_scale=0.0, bias=False)
    assert not any(isinstance(m, LayerScale) for m in bb.modules())


def test_deit3_keeps_its_trained_gammas(tmp_path):
    ref = load_backbone("deit3", "small", depth=2).vit
    sd = {}
    for k, v in ref.state_dict().items():
        k = k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
        sd[k] = torch.linspace(0.1, 0.9, v.numel()).reshape(v.shape) if "gamma" in k else v
    torch.save({"model": sd}, tmp_path / "deit3.pth")
    bb = load_backbone("deit3", "small", tmp_path / "deit3.pth", img_size=64, depth=2)
    build_model(bb, 5, _settings("deit3", "small", crop_size=64, layers=[0, 1, 1, 1]))
    for i, blk in enumerate(bb.vit.blocks):
        assert torch.equal(blk.ls1.gamma, sd[f"blocks.{i}.gamma_1"])
        assert torch.equal(blk.ls2.gamma, sd[f"blocks.{i}.gamma_2"])
        assert isinstance(blk.attn, RelPosBiasAttention)
    extras = bb.meta.extra["fine_tune_extras"]
    assert (extras["layer_scale_added"], extras["layer_scale_kept"]) == (0, 4)


# ---------------------------------------------------------------------- settings
def test_defaults_follow_the_released_configs_and_train_scripts():
    for adapter in ("mae", "deit", "deit3", "dino", "ibot", "crossmae"):
        s = _settings(adapter, "small")
        assert s.layer_scale_init == 1.0 and s.rel_pos_bias is True, adapter
    unip = _settings("unip", "small")
    assert unip.layer_scale_init == 1.0 and unip.rel_pos_bias is False
    assert unip.layer_decay == 0.85
    for proto in ("linear_probe", "layerwise_probe"):
        with pytest.raises(ValueError, match="rel_pos_bias"):
            resolve_settings(proto, "soda", "mae", "small", {"rel_pos_bias": True})


def test_unip_is_fine_tuned_with_layer_scale_and_no_bias():
    bb = load_backbone("unip", "tiny", img_size=64, depth=2, last_heads=16)
    build_model(bb, 5, _settings("unip", "tiny", crop_size=64))
    assert not any(isinstance(b.attn, RelPosBiasAttention) for b in bb.vit.blocks)
    assert all(isinstance(b.ls1, LayerScale) for b in bb.vit.blocks)


def test_building_twice_changes_nothing():
    bb = load_backbone("mae", "tiny", img_size=64, depth=2)
    s = _settings(crop_size=64, layers=[0, 1, 1, 1])
    build_model(bb, 5, s)
    params = {n: p for n, p in bb.named_parameters()}
    build_model(bb, 5, s)
    assert {n: p for n, p in bb.named_parameters()} == params
    assert bb.meta.extra["fine_tune_extras"]["layer_scale_added"] == 4


# ---------------------------------------------------------------------- layer decay
def release_layer_and_decay(name: str, shape: torch.Size, num_layers: int) -> tuple[int, bool]:
    """The release's get_num_layer_for_vit and decay test, on the release's names.

    Ours ``backbone.vit.blocks.i.ls1.gamma`` is its ``backbone.blocks.i.gamma_1``; the
    table keeps its name. num_layers is paramwise_cfg.num_layers + 2.
    """
    name = name.replace("backbone.vit.", "backbone.")
    name = name.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
    embeddings = ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed")
    if name in embeddings or name.startswith("backbone.patch_embed"):
        layer = 0
    elif name.startswith("backbone.blocks"):
        layer = int(name.split(".")[2]) + 1
    else:
        layer = num_layers - 1
    decay = not (len(shape) == 1 or name.endswith(".bias"))
    return layer, decay


@pytest.mark.parametrize(("adapter", "rate"), [("mae", 0.65), ("unip", 0.85)])
def test_lr_multiplier_and_weight_decay_of_the_extras(adapter, rate):
    options = {"last_heads": 6} if adapter == "unip" else {}
    bb = load_backbone(adapter, "small", img_size=64, **options)
    s = _settings(adapter, "small")
    model = build_model(bb, 21, s)
    params = dict(model.named_parameters())
    got = {n: (g["lr_scale"], g["lr"], g["weight_decay"])
           for g in optimizer_groups(model, s) for n in g["names"]}
    extras = [n for n in got if "relative_position_bias_table" in n or n.endswith(".gamma")]
    assert len(extras) == 12 * (3 if adapter == "mae" else 2)
    for name in extras:
        layer, decay = release_layer_and_decay(name, params[name].shape, 12 + 2)
        scale = rate ** (12 + 2 - layer - 1)
        assert got[name][0] == pytest.approx(scale, rel=1e-12), name
        assert got[name][1] == pytest.approx(1e-4 * scale, rel=1e-12), name
        assert got[name][2] == (0.05 if decay else 0.0), name
    # The same, written out for block 3: layer 4, rate^(14 - 4 - 1) = rate^9.
    assert got["backbone.vit.blocks.3.ls1.gamma"] == pytest.approx((rate**9, 1e-4 * rate**9, 0))
    if adapter == "mae":
        assert got["backbone.vit.blocks.3.attn.relative_position_bias_table"] == pytest.approx(
            (0.65**9, 1e-4 * 0.65**9, 0.05))
        assert got["backbone.vit.blocks.11.attn.relative_position_bias_table"][0] == 0.65


# ---------------------------------------------------------------------- FLOPs / params
def _no_macs(model, inputs) -> MacCount:
    return MacCount(total=0, attention=0, unsupported_ops={})


def test_flops_params_include_exactly_the_tables_and_gammas(monkeypatch):
    monkeypatch.setattr(flops, "count_macs", _no_macs)  # parameters only: no tracing
    monkeypatch.setattr(flops, "_m", lambda n: n)  # exact counts, not rounded millions
    on = _settings(size="small")
    off = on.model_copy(update={"rel_pos_bias": False, "layer_scale_init": None})
    with_extras = protocol_flops("fine_tune", on, "mae", "small", 21)
    plain = protocol_flops("fine_tune", off, "mae", "small", 21)
    extra = 12 * (63 * 63 + 3) * 6 + 12 * 2 * 384
    assert extra == 295200
    assert with_extras.params_m - plain.params_m == extra
    assert with_extras.backbone_params_m - plain.backbone_params_m == extra
    vit_s = load_backbone("mae", "small", img_size=512)
    assert plain.backbone_params_m == sum(p.numel() for p in vit_s.parameters())
    # `unipbench flops` counts the same fine-tuning model; UNIP's has gammas only.
    assert model_flops("mae", "small", 512).params_m == with_extras.params_m
    unip = model_flops("unip", "small", 512, decode_head=False)
    assert unip.backbone_params_m == plain.backbone_params_m + 12 * 2 * 384
    # Probes build a plain ViT.
    lp = resolve_settings("linear_probe", "soda", "mae", "small", {})
    assert protocol_flops("linear_probe", lp, "mae", "small", 21).backbone_params_m == (
        plain.backbone_params_m)


def test_extras_add_no_multiply_adds():
    # fvcore counts matmuls and convolutions; the bias add and gamma product are
    # elementwise, so the count is the plain model's, with the bias path traced fine.
    s = _settings(crop_size=64, layers=[0, 1, 2, 3])
    off = s.model_copy(update={"rel_pos_bias": False, "layer_scale_init": None})
    a = protocol_flops("fine_tune", s, "mae", "tiny", 5, options={"depth": 4})
    b = protocol_flops("fine_tune", off, "mae", "tiny", 5, options={"depth": 4})
    assert a.total_gmacs == b.total_gmacs > 0 and a.backbone_gmacs == b.backbone_gmacs
    assert a.params_m > b.params_m
