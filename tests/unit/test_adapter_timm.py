"""The generic ``timm`` adapter with EVA-02: features, attention logits, layer ids, FLOPs.

References come from timm itself (the model ``timm.create_model`` builds, its own
``forward_intermediates`` and attention modules) and from attention written out here from
the checkpoint's q/k weights and biases with RoPE applied by hand, not from our code path.
"""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from bench.backbones.adapter import AdapterError, get_adapter, load_backbone
from bench.backbones.backbone import Backbone, BackboneMeta
from bench.backbones.flops import count_macs
from bench.models.vit_extras import add_finetune_extras, add_rel_pos_bias

NAME = "eva02_tiny_patch14_224"
TAGGED = f"{NAME}.mim_in22k"
DIM, HEADS, DEPTH, PATCH = 192, 3, 12, 14


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """timm's EVA-02-Ti with random weights, as ``create_model(pretrained=False)`` makes it."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, num_classes=0, dynamic_img_size=True)
    with torch.no_grad():  # q/v biases start at zero; make them count
        for blk in model.blocks:
            blk.attn.q_bias.normal_(0, 0.5)
            blk.attn.v_bias.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory) -> str:
    """The file timm writes for the model: its state dict as safetensors."""
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def bb(checkpoint):
    return load_backbone("timm", TAGGED, checkpoint)


def test_size_is_the_timm_model_and_geometry_comes_from_it(bb) -> None:
    adapter = get_adapter("timm")
    spec = adapter.size(TAGGED)
    assert (spec.embed_dim, spec.depth, spec.num_heads, spec.patch_size) == (
        DIM, DEPTH, HEADS, PATCH
    )
    assert adapter.letter(TAGGED) == "T" and adapter.letter("vit_giant_patch14_dinov2") == "g"
    assert (bb.embed_dim, bb.depth, bb.patch_size, bb.num_prefix_tokens) == (DIM, DEPTH, PATCH, 1)
    assert bb.describe()["architecture"] == "Eva"
    assert [(s.channels, s.stride) for s in bb.output_shape([0, -1])] == [(DIM, PATCH)] * 2
    # EVA-02's MIM weights were trained on CLIP-normalised images: the pretrained config's.
    assert bb.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert bb.meta.checkpoint_format == "timm" and bb.meta.pretrain_img_size == 224


@pytest.mark.parametrize("hw", [(224, 224), (168, 252)])
def test_features_match_timms_forward_intermediates(bb, reference, hw) -> None:
    x = torch.randn(2, 3, *hw)
    layers = [-1, 0, 5]
    with torch.no_grad():
        ours = bb.features(x, layers)
        theirs = reference.forward_intermediates(
            x, indices=[0, 5, DEPTH - 1], intermediates_only=True
        )
    expected = [theirs[2], theirs[0], theirs[1]]
    for got, want in zip(ours, expected, strict=True):
        assert got.shape == (2, DIM, hw[0] // PATCH, hw[1] // PATCH)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3 ...) -> (-x1, x0, -x3, x2 ...): EVA-02's interleaved rotation."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)


def _logits_by_hand(model, state, block: int, x: torch.Tensor) -> torch.Tensor:
    """Block ``block``'s q·k·d^-0.5 from the checkpoint's tensors, RoPE applied by hand to
    the patch tokens (the block input comes from timm's own embedding and blocks)."""
    grid = (x.shape[-2] // PATCH, x.shape[-1] // PATCH)
    tokens, rope = model._pos_embed(model.patch_embed(x))
    for blk in model.blocks[:block]:
        tokens = blk(tokens, rope=rope)
    h = model.blocks[block].norm1(tokens)
    w = state[f"blocks.{block}.attn.qkv.weight"]
    q = h @ w[:DIM].T + state[f"blocks.{block}.attn.q_bias"]
    k = h @ w[DIM : 2 * DIM].T  # EVA has no k bias
    b, n, _ = q.shape
    q, k = (t.reshape(b, n, HEADS, DIM // HEADS).transpose(1, 2) for t in (q, k))
    sin, cos = model.rope.get_embed(shape=grid).chunk(2, dim=-1)
    for t in (q, k):
        patches = t[:, :, 1:]
        t[:, :, 1:] = patches * cos + _rotate_pairs(patches) * sin
    return q @ k.transpose(-2, -1) / (DIM // HEADS) ** 0.5


def test_attention_logits_are_q_k_with_rope(bb, reference) -> None:
    state = reference.state_dict()
    x = torch.randn(1, 3, 140, 112)
    with torch.no_grad():
        ours = bb.attention(x, [3, 0], logits=True)
        want = [_logits_by_hand(reference, state, i, x) for i in (3, 0)]
    n = 1 + 10 * 8
    for got, ref in zip(ours, want, strict=True):
        assert got.shape == (1, HEADS, n, n)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_attention_probabilities_reproduce_timms_fused_attention(bb, reference) -> None:
    """softmax(logits) @ v through the block's projection is what timm's own (fused SDPA)
    attention returns."""
    x = torch.randn(1, 3, 112, 112)
    blk = reference.blocks[2]
    assert blk.attn.fused_attn  # the scaled_dot_product_attention path
    with torch.no_grad():
        (probs,) = bb.attention(x, [2])
        tokens, rope = reference._pos_embed(reference.patch_embed(x))
        for b in reference.blocks[:2]:
            tokens = b(tokens, rope=rope)
        h = blk.norm1(tokens)
        v = h @ blk.attn.qkv.weight[2 * DIM :].T + blk.attn.v_bias
        v = v.reshape(1, -1, HEADS, DIM // HEADS).transpose(1, 2)
        mixed = (probs @ v).transpose(1, 2).reshape(1, -1, DIM)
        want = blk.attn(h, rope=rope)
    torch.testing.assert_close(blk.attn.proj(blk.attn.norm(mixed)), want, rtol=1e-4, atol=1e-5)


def test_layer_ids_for_layer_decay(bb) -> None:
    ids = {name: bb.layer_id(f"backbone.vit.{name}") for name, _ in bb.vit.named_parameters()}
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.q_bias"] == 1 and ids["blocks.11.mlp.fc2.weight"] == DEPTH
    assert ids["fc_norm.weight"] == DEPTH + 1
    assert not [n for n in ids if n.startswith("rope")]  # RoPE has no parameters
    assert set(ids.values()) == set(range(DEPTH + 2))


def test_flops_count_evas_fused_attention() -> None:
    bb = load_backbone("timm", NAME, None, img_size=112, depth=2)
    got = count_macs(bb, (torch.zeros(1, 3, 112, 112),))
    n = 1 + 8 * 8
    # q @ k^T and attn @ v: n*n*head_dim multiply-adds each, per head, per block.
    assert got.attention == 2 * 2 * n * n * DIM
    assert "aten::scaled_dot_product_attention" not in got.unsupported_ops
    # Projections alone (qkv, proj, SwiGLU MLP) are far more than the attention matmuls.
    assert got.without_attention > 2 * n * DIM * (3 * DIM + DIM)


def test_fine_tune_extras_on_eva(checkpoint) -> None:
    bb = load_backbone("timm", TAGGED, checkpoint)
    done = add_finetune_extras(bb, 1.0, True, (16, 16))
    assert done["layer_scale_added"] == 2 * DEPTH
    assert "rotary" in done["rel_pos_bias_skipped"] and done["rel_pos_bias_window"] is None
    assert torch.equal(bb.vit.blocks[0].gamma_1.detach(), torch.ones(DIM))
    assert "blocks.0.gamma_2" in dict(bb.vit.named_parameters())
    with pytest.raises(ValueError, match="EvaAttention, not timm's Attention"):
        add_rel_pos_bias(bb, (16, 16))


def test_bad_names_and_checkpoints_are_explained(tmp_path) -> None:
    with pytest.raises(AdapterError, match="not a timm model name.*Did you mean"):
        get_adapter("timm").size("eva02_tiny_patch14_225")
    with pytest.raises(AdapterError, match="ResNet, not a ViT-family model"):
        get_adapter("timm").size("resnet18")
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(AdapterError, match="does not fit adapter 'timm'.*missing keys"):
        load_backbone("timm", NAME, path)


def test_separate_q_k_v_projections_give_the_same_logits_by_hand() -> None:
    """EvaAttention with q_proj/k_proj/v_proj (qkv_fused=False): q has a bias, k none."""
    torch.manual_seed(1)
    model = timm.create_model(NAME, pretrained=False, num_classes=0, depth=2, qkv_fused=False,
                              dynamic_img_size=True).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.q_proj.bias.normal_(0, 0.5)
    bb = Backbone(model, BackboneMeta(adapter="timm", size=NAME))
    x = torch.randn(1, 3, 84, 70)
    with torch.no_grad():
        (ours,) = bb.attention(x, [1], logits=True)
        tokens, rope = model._pos_embed(model.patch_embed(x))
        h = model.blocks[1].norm1(model.blocks[0](tokens, rope=rope))
        attn = model.blocks[1].attn
        q = h @ attn.q_proj.weight.T + attn.q_proj.bias
        k = h @ attn.k_proj.weight.T
        q, k = (t.reshape(1, -1, HEADS, DIM // HEADS).transpose(1, 2) for t in (q, k))
        sin, cos = model.rope.get_embed(shape=(6, 5)).chunk(2, dim=-1)
        for t in (q, k):
            t[:, :, 1:] = t[:, :, 1:] * cos + _rotate_pairs(t[:, :, 1:]) * sin
        want = q @ k.transpose(-2, -1) / (DIM // HEADS) ** 0.5
    assert attn.k_proj.bias is None
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-4)
