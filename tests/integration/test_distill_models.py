"""The UNIP student and the truncated teacher, and the loss between them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from timm.layers import DropPath

from bench.backbones.adapter import load_backbone
from unip.distill import attention_kl
from unip.student import LastBlockLogits, build_student, sincos_pos_embed
from unip.teacher import AttentionTeacher


def test_student_geometry_positions_and_drop_path() -> None:
    s = build_student("T", last_heads=6, img_size=64, depth=3)
    assert s.num_heads == [3, 3, 6]
    assert s.mean == pytest.approx((0.3801,) * 3)
    drops = [m for blk in s.vit.blocks for m in (blk.drop_path1, blk.drop_path2)]
    assert all(isinstance(m, DropPath) for m in drops)
    assert [m.drop_prob for m in drops] == [0.1] * 6  # constant, not ramped up with depth
    pos = s.vit.pos_embed
    assert not pos.requires_grad
    assert torch.equal(pos.detach(), sincos_pos_embed(192, (4, 4), 1))
    assert torch.equal(pos[0, 0], torch.zeros(192))  # CLS slot


def test_sincos_layout() -> None:
    table = sincos_pos_embed(8, (3, 5), num_prefix_tokens=1)[0]
    r, c = 2, 3
    row = table[1 + r * 5 + c]
    # Quarter 1-2: the column as sin/cos; quarter 3-4: the row. Frequency 0 is 1.
    assert row[0].item() == pytest.approx(math.sin(c))
    assert row[2].item() == pytest.approx(math.cos(c))
    assert row[4].item() == pytest.approx(math.sin(r))
    assert row[6].item() == pytest.approx(math.cos(r))


def test_only_parameters_the_loss_reaches_are_trained() -> None:
    s = build_student("T", last_heads=6, img_size=32, depth=2)
    frozen = {n for n, p in s.vit.named_parameters() if not p.requires_grad}
    assert frozen == {
        "pos_embed", "blocks.1.attn.proj.weight", "blocks.1.attn.proj.bias",
        "blocks.1.norm2.weight", "blocks.1.norm2.bias", "blocks.1.mlp.fc1.weight",
        "blocks.1.mlp.fc1.bias", "blocks.1.mlp.fc2.weight", "blocks.1.mlp.fc2.bias",
        "norm.weight", "norm.bias",
    }  # fmt: skip
    logits = LastBlockLogits(s)(torch.randn(2, 3, 32, 32))
    attention_kl(logits, torch.randn_like(logits)).backward()
    for name, p in s.vit.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_student_sizes_are_t_s_b() -> None:
    with pytest.raises(ValueError, match="ViT-T/S/B"):
        build_student("L", last_heads=16, img_size=32, depth=1)


def test_teacher_is_frozen_truncated_and_exact() -> None:
    full = load_backbone("deit", "S", img_size=32, depth=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = full.attention(x, [2], logits=True)[0]
    teacher = AttentionTeacher(copy.deepcopy(full), layer=3)
    teacher.train()
    assert not teacher.training and teacher.backbone.depth == 3 and teacher.heads == 6
    assert not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher(x), want)
    with pytest.raises(ValueError, match="outside 1..4"):
        AttentionTeacher(full, layer=5)


def test_kl_is_zero_on_equal_attention_and_positive_otherwise() -> None:
    a = torch.randn(2, 3, 5, 5)
    assert attention_kl(a, a + 7.0).abs() < 1e-6  # a shift per row leaves softmax alone
    b = torch.randn(2, 3, 5, 5)
    p, q = a.softmax(-1), b.softmax(-1)
    want = (q * (q.log() - p.log())).sum(-1).mean()  # KL(teacher b || student a)
    torch.testing.assert_close(attention_kl(a, b), want)
    with pytest.raises(ValueError, match="heads and tokens must match"):
        attention_kl(a, torch.randn(2, 6, 5, 5))
