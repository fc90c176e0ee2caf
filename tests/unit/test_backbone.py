"""The Backbone interface: feature maps, attention maps, layer ids, geometry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

from bench.backbones.adapter import load_backbone
from bench.backbones.backbone import Backbone, BackboneMeta, register_attention_logits

DEPTH = 3


@pytest.fixture(scope="module")
def bb() -> Backbone:
    torch.manual_seed(0)
    return load_backbone("mae", "tiny", None, depth=DEPTH, drop_path_rate=0.0).eval()


def timm_block_outputs(bb: Backbone, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's output tokens (prefix + patches), from timm's own forward."""
    pairs = bb.vit.forward_intermediates(
        x, indices=list(range(bb.depth)), norm=False, output_fmt="NLC",
        intermediates_only=True, return_prefix_tokens=True,
    )
    return [torch.cat([prefix, spatial], dim=1) for spatial, prefix in pairs]


def timm_pos_embed(bb: Backbone, gh: int, gw: int) -> torch.Tensor:
    """The position embedding (class position included) resampled to a gh x gw grid."""
    return resample_abs_pos_embed(bb.vit.pos_embed, (gh, gw), num_prefix_tokens=1)


def test_geometry(bb) -> None:
    assert (bb.embed_dim, bb.depth, bb.patch_size, bb.num_prefix_tokens) == (192, DEPTH, 16, 1)
    assert bb.num_heads == [3] * DEPTH
    d = bb.describe()
    assert d["adapter"] == "mae" and d["random_init"] is True and d["depth"] == DEPTH


def test_features_in_requested_order_with_negative_indices(bb) -> None:
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = bb.features(x, [-1, 0, 1])
        # timm's VisionTransformer.forward_intermediates: block outputs as NCHW maps.
        ref = bb.vit.forward_intermediates(
            x, indices=[0, 1, 2], norm=False, output_fmt="NCHW", intermediates_only=True
        )
    assert [f.shape for f in feats] == [(2, 192, 4, 6)] * 3
    for f, i in zip(feats, [DEPTH - 1, 0, 1], strict=True):
        assert torch.allclose(f, ref[i], atol=1e-5)
    # The three blocks differ, so an order mix-up cannot pass.
    assert not torch.allclose(ref[0], ref[1], atol=1e-3)
    assert not torch.allclose(ref[1], ref[2], atol=1e-3)


def test_features_norm_applies_final_layernorm(bb) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        (plain,) = bb.features(x, [1])
        (normed,) = bb.features(x, [1], norm=True)
        tokens = plain.flatten(2).transpose(1, 2)
        expected = bb.vit.norm(tokens).transpose(1, 2).reshape(plain.shape)
        assert torch.allclose(bb(x), bb.features(x, [-1], norm=True)[0])
    assert torch.allclose(normed, expected, atol=1e-5)


def reference_logits(blk: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """q·k^T·head_dim^-0.5 of ``blk`` from its LayerNorm and qkv weights, heads split by hand."""
    b, n, d = tokens.shape
    heads = 3
    hd = d // heads
    h = F.layer_norm(tokens, (d,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
    qkv = h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias  # B x N x 3D: [q | k | v]
    q, k = qkv[..., :d], qkv[..., d : 2 * d]
    q = q.reshape(b, n, heads, hd).transpose(1, 2)  # head j owns channels j*hd:(j+1)*hd
    k = k.reshape(b, n, heads, hd).transpose(1, 2)
    return torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(hd)


def test_attention_probabilities_and_logits(bb) -> None:
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        (probs,) = bb.attention(x, [1])
        (logits,) = bb.attention(x, [1], logits=True)
        (last_probs, first_logits) = (bb.attention(x, [-1])[0], bb.attention(x, [0], True)[0])
        outs = timm_block_outputs(bb, x)
        proj = bb.vit.patch_embed.proj  # a 16 x 16 stride-16 convolution
        patches = F.conv2d(x, proj.weight, proj.bias, stride=16).flatten(2).transpose(1, 2)
        first_in = torch.cat([bb.vit.cls_token, patches], dim=1) + timm_pos_embed(bb, 2, 3)
        expected = reference_logits(bb.vit.blocks[1], outs[0])  # block 1 reads block 0
        expected_last = reference_logits(bb.vit.blocks[2], outs[1])
        expected_first = reference_logits(bb.vit.blocks[0], first_in)
    n = 1 + 2 * 3
    assert probs.shape == logits.shape == (1, 3, n, n)
    assert torch.allclose(logits, expected, atol=1e-4)
    assert torch.allclose(probs, expected.softmax(-1), atol=1e-6)
    assert torch.allclose(last_probs, expected_last.softmax(-1), atol=1e-6)
    assert torch.allclose(first_logits, expected_first, atol=1e-4)


def test_attention_matches_timm_block(bb) -> None:
    """The re-derived attention reproduces the block's own output through proj."""
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        t = bb.tokens(x)
        (probs,) = bb.attention(x, [0])
        blk = bb.vit.blocks[0]
        h = blk.norm1(t)
        v = blk.attn.qkv(h).reshape(1, t.shape[1], 3, 3, 64).permute(2, 0, 3, 1, 4)[2]
        mixed = (probs @ v).transpose(1, 2).reshape(1, t.shape[1], 192)
        assert torch.allclose(blk.attn.proj(mixed), blk.attn(h), atol=1e-5)


@pytest.mark.parametrize(
    "name,layer",
    [
        ("vit.cls_token", 0),
        ("backbone.vit.pos_embed", 0),
        ("vit.patch_embed.proj.weight", 0),
        ("vit.reg_token", 0),
        ("vit.blocks.0.attn.qkv.weight", 1),
        ("backbone.vit.blocks.2.mlp.fc2.bias", 3),
        ("vit.norm.weight", DEPTH + 1),
    ],
)
def test_layer_id(bb, name, layer) -> None:
    assert bb.layer_id(name) == layer


def test_bad_inputs_are_explained(bb) -> None:
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        bb.features(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="B x C x H x W"):
        bb.features(torch.randn(3, 32, 32))
    with pytest.raises(IndexError, match="out of range for a ViT of depth 3"):
        bb.features(torch.randn(1, 3, 32, 32), [DEPTH])


def test_output_shape_is_width_and_patch_stride(bb) -> None:
    assert [(s.channels, s.stride) for s in bb.output_shape([0, -1])] == [(192, 16)] * 2
    with pytest.raises(IndexError, match="out of range"):
        bb.output_shape([DEPTH])


def test_attention_runs_nothing_after_the_last_requested_attention() -> None:
    bb = load_backbone("mae", "tiny", None, depth=DEPTH).eval()
    ran: list[str] = []
    for i, blk in enumerate(bb.vit.blocks):
        blk.mlp.register_forward_hook(lambda *_, i=i: ran.append(f"mlp{i}"))
        blk.attn.register_forward_hook(lambda *_, i=i: ran.append(f"attn{i}"))
    with torch.no_grad():
        bb.attention(torch.randn(1, 3, 32, 32), [1, 0])
    assert ran == ["attn0", "mlp0"]  # block 1's logits come from its input: no attention run


def test_an_attention_class_without_logits_is_named() -> None:
    class GatedAttention(nn.Module):
        num_heads = 3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    bb = load_backbone("mae", "tiny", None, depth=1).eval()
    bb.vit.blocks[0].attn = GatedAttention()
    with pytest.raises(TypeError, match="no attention-logits function is registered for "
                       "GatedAttention.*register_attention_logits"):
        bb.attention(torch.randn(1, 3, 32, 32), [0])

    @register_attention_logits(GatedAttention)
    def _uniform(attn, x, kwargs):
        n = x.shape[1]
        return torch.zeros(x.shape[0], attn.num_heads, n, n)

    (probs,) = bb.attention(torch.randn(1, 3, 32, 32), [0])
    assert torch.allclose(probs, torch.full((1, 3, 5, 5), 0.2))


def test_a_model_without_forward_intermediates_is_refused() -> None:
    with pytest.raises(TypeError, match="not a timm ViT-family model.*forward_intermediates"):
        Backbone(nn.Linear(2, 2), BackboneMeta(adapter="x", size="tiny"))
