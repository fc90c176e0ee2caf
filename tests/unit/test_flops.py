"""FLOPs: fvcore + the scaled_dot_product_attention handler against timm's published GMACs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones.adapter import load_backbone
from bench.backbones.flops import backbone_flops, count_macs, model_flops, protocol_flops
from bench.protocols.config import resolve_settings

# Backbone-only multiply-adds at 224x224 from timm's results tables (attention included).
ANCHORS = {"tiny": 1.26, "small": 4.61, "base": 17.58, "large": 61.60}


@pytest.mark.parametrize("size", list(ANCHORS))
def test_backbone_gmacs_match_timm_tables(size: str) -> None:
    report = model_flops("deit", size, 224, decode_head=False)
    assert report.total_gmacs == report.backbone_gmacs
    assert report.backbone_gmacs == pytest.approx(ANCHORS[size], rel=0.01)
    assert report.attention_matmuls_included and report.convention == "multiply-adds"
    # mmcv's convention (no attention matmuls) misses the anchors by 3-14%: the anchors
    # are the with-attention numbers.
    assert report.backbone_gmacs_no_attn < ANCHORS[size] * 0.975
    assert report.input_size == [224, 224]
    assert "fvcore" in report.counter


class _Sdpa(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class _Attention(nn.Module):  # the name ends in "Attention": counted as attention matmuls
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Sdpa()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.inner(q, k, v)


def test_sdpa_handler_counts_both_matmuls() -> None:
    q = torch.zeros(2, 3, 5, 8)  # batch, heads, queries, dim
    k = torch.zeros(2, 3, 7, 8)
    v = torch.zeros(2, 3, 7, 4)
    got = count_macs(_Attention(), (q, k, v))
    expected = 2 * 3 * 5 * 7 * 8 + 2 * 3 * 5 * 7 * 4
    assert got.total == expected
    assert got.attention == expected and got.without_attention == 0
    assert "aten::scaled_dot_product_attention" not in got.unsupported_ops


def test_fused_and_unfused_attention_count_the_same() -> None:
    bb = load_backbone("deit", "tiny", depth=2)
    fused, params = backbone_flops(bb, 64)
    for blk in bb.vit.blocks:
        blk.attn.fused_attn = False  # timm's explicit q @ k^T, softmax, @ v path
    unfused, _ = backbone_flops(bb, 64)
    assert fused.total == unfused.total
    assert fused.attention == unfused.attention > 0
    n, d = 1 + 16, 192  # tokens at 64x64, embed dim
    assert fused.attention == 2 * (2 * n * n * d)  # two blocks, q@k^T and attn@v
    assert params == sum(p.numel() for p in bb.parameters())


def test_decode_head_adds_to_backbone() -> None:
    r = model_flops("deit", "tiny", 64, neck="multilevel", head="uperhead", num_classes=5,
                    options={"depth": 12})
    assert r.total_gmacs > r.backbone_gmacs
    assert r.total_gmacs - r.total_gmacs_no_attn == pytest.approx(
        r.backbone_gmacs - r.backbone_gmacs_no_attn, abs=2e-4  # rounded to 4 decimals
    )
    assert r.params_m > r.backbone_params_m
    assert (r.neck, r.head, r.num_classes) == ("multilevel", "uperhead", 5)


def test_default_total_is_what_a_fine_tuning_run_records() -> None:
    # `unipbench flops` and a run's record must agree; for ViT-L that means the neck reads
    # blocks [7, 11, 15, 23], so all 24 blocks are counted (not [3, 5, 7, 11]: 12 blocks).
    large = model_flops("deit", "large", 64, num_classes=5)
    assert (large.neck, large.head, large.num_classes) == ("multilevel", "uperhead", 5)
    settings = resolve_settings("fine_tune", "soda", "deit", "large", {"crop_size": 64})
    run = protocol_flops("fine_tune", settings, "deit", "large", 5)
    assert large.total_gmacs == run.total_gmacs and large.params_m == run.params_m
    unip = model_flops("unip", "tiny", 64)
    assert (unip.neck, unip.num_classes) == ("llfpn", 21)  # UNIP's fine-tuning neck
