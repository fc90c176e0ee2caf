"""Loading a ViT-B through ``load_backbone`` costs at most 1.3x the bare way of doing it.

The bare way: ``torch.load`` the MAE pre-training file, build timm's ``VisionTransformer``,
``load_state_dict`` the encoder keys. The adapter path adds format detection, key checks,
position-table handling and the checkpoint's sha256 (remembered after the first load).
Both are timed in the same run, interleaved round by round; the ratio of the best rounds
is asserted. ``make bench`` runs it with ``--benchmark-enable``; otherwise it runs once.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import Block, VisionTransformer

from bench.backbones.adapter import load_backbone

MAX_RATIO = 1.3
VIT_B = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=0)
DECODER_DIM, DECODER_DEPTH = 512, 8  # MAE's decoder for ViT-B


def _zeros_like_module(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict of zeros with ``module``'s keys and shapes (values do not affect timing)."""
    return {prefix + k: torch.zeros(v.shape) for k, v in module.state_dict().items()}


def write_mae_vit_b(path: Path) -> Path:
    """An MAE ViT-B pre-training file: encoder + decoder + mask token, optimizer, args."""
    with torch.device("meta"):
        encoder = VisionTransformer(**VIT_B, weight_init="skip")
        block = Block(DECODER_DIM, num_heads=16, mlp_ratio=4.0, qkv_bias=True)
    model = _zeros_like_module(encoder)
    for i in range(DECODER_DEPTH):
        model.update(_zeros_like_module(block, f"decoder_blocks.{i}."))
    model.update(
        {
            "mask_token": torch.zeros(1, 1, DECODER_DIM),
            "decoder_embed.weight": torch.zeros(DECODER_DIM, 768),
            "decoder_embed.bias": torch.zeros(DECODER_DIM),
            "decoder_pos_embed": torch.zeros(1, 197, DECODER_DIM),
            "decoder_norm.weight": torch.ones(DECODER_DIM),
            "decoder_norm.bias": torch.zeros(DECODER_DIM),
            "decoder_pred.weight": torch.zeros(16 * 16 * 3, DECODER_DIM),
            "decoder_pred.bias": torch.zeros(16 * 16 * 3),
        }
    )
    torch.save(
        {
            "model": model,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": []}]},
            "epoch": 799,
            "scaler": {"scale": 65536.0},
            "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75),
        },
        path,
    )
    return path


def bare_load(path: Path) -> torch.nn.Module:
    """What one writes without the harness (the Namespace needs weights_only=False)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    vit = VisionTransformer(**VIT_B, dynamic_img_size=True)
    encoder = {
        k: v for k, v in ckpt["model"].items() if not k.startswith("decoder") and k != "mask_token"
    }
    vit.load_state_dict(encoder)
    return vit


@pytest.fixture(scope="module")
def mae_vit_b(tmp_path_factory) -> Path:
    return write_mae_vit_b(tmp_path_factory.mktemp("vit_b") / "mae_pretrain_vit_base_full.pth")


def test_load_backbone_vs_bare_torch_load(benchmark, mae_vit_b, tmp_path, timing_target) -> None:
    cache = tmp_path / "cache"
    first = time.perf_counter()
    bb = load_backbone("mae", "base", mae_vit_b, cache_dir=cache)  # hashes the file once
    first = time.perf_counter() - first
    assert bb.meta.checkpoint_sha256 and bb.depth == 12 and bb.embed_dim == 768
    del bb

    bare_s: list[float] = []
    adapter_s: list[float] = []

    def time_bare() -> None:  # pedantic's setup: runs before each timed round, untimed
        t = time.perf_counter()
        bare_load(mae_vit_b)
        bare_s.append(time.perf_counter() - t)

    def time_adapter() -> None:
        t = time.perf_counter()
        load_backbone("mae", "base", mae_vit_b, cache_dir=cache)
        adapter_s.append(time.perf_counter() - t)

    rounds = 5 if benchmark.enabled else 1
    benchmark.pedantic(time_adapter, setup=time_bare, rounds=rounds, warmup_rounds=0)

    ratio = min(adapter_s) / min(bare_s)
    benchmark.extra_info.update(
        bare_s=min(bare_s), adapter_s=min(adapter_s), first_load_s=first, ratio=ratio
    )
    print(
        f"\nViT-B MAE pre-training file: bare {min(bare_s):.3f}s, load_backbone "
        f"{min(adapter_s):.3f}s (first load, hashing: {first:.3f}s); ratio {ratio:.2f} "
        f"(limit {MAX_RATIO}), best of {rounds}"
    )
    timing_target(ratio <= MAX_RATIO, f"adapter load ratio {ratio:.2f} > {MAX_RATIO}")
