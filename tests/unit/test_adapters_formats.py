"""Loading behaviour shared by the formats: resampled position tables, metadata-driven
geometry, trainable float32 parameters; and that every declared format has a release
manifest test (the layouts themselves are tested in test_release_formats_*.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from release_weights import load_manifest, manifest_names
from safetensors.torch import save_file
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Attention, VisionTransformer

from bench.backbones.adapter import get_adapter, list_adapters, load_backbone

DEPTH = 2
DIM, HEADS = 192, 3  # ViT-T geometry, so size="tiny" describes it
UNIP_LAST_HEADS = 16
TOL = 1e-4


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (zero biases and unit norms would hide mapping errors)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval()


def timm_vit(**kwargs) -> VisionTransformer:
    args = dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_classes=0)
    return randomise(VisionTransformer(**{**args, **kwargs}))


def unip_student() -> VisionTransformer:
    vit = VisionTransformer(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_classes=0)
    vit.blocks[-1].attn = Attention(DIM, num_heads=UNIP_LAST_HEADS, qkv_bias=True)
    return randomise(vit)


def mae_decoder() -> dict[str, torch.Tensor]:
    return {
        "mask_token": torch.randn(1, 1, 64),
        "decoder_embed.weight": torch.randn(64, DIM),
        "decoder_pos_embed": torch.randn(1, 197, 64),
        "decoder_blocks.0.norm1.weight": torch.randn(64),
        "decoder_norm.weight": torch.randn(64),
        "decoder_pred.weight": torch.randn(768, 64),
    }


def training_extras(epoch: int) -> dict:
    return {
        "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": [0, 1]}]},
        "epoch": epoch,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        "args": argparse.Namespace(model="vit_tiny_patch16", mask_ratio=0.75, epochs=800),
    }


def mae_pretrain(sd: dict) -> dict:
    return {"model": {**sd, **mae_decoder()}, **training_extras(799)}


def deit3_official(sd: dict) -> dict:
    renamed = {k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v
               for k, v in sd.items()}
    return {"model": renamed}


def save(obj: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


def test_every_declared_format_is_tested_against_a_release_manifest() -> None:
    """Each format is read from a file rebuilt from a manifest of the real release layout,
    taken from the method's own code (test_release_formats_*.py), never from our renames."""
    declared = {(a, f.name) for a in list_adapters() for f in get_adapter(a).formats}
    manifests = {(m["adapter"], m["format"]) for m in map(load_manifest, manifest_names())}
    # The UNIP manifest is also re-wrapped as the release's segmentation loader accepts it
    # (test_release_formats_ssl.py::test_unip_wrappers...).
    wrappers = {("unip", "state_dict"), ("unip", "module"), ("unip", "timm")}
    # The timm adapter's files are written by timm itself, from the model timm builds
    # (test_adapter_timm.py): there the library is the release.
    written_by_timm = {("timm", "timm")}
    assert declared == manifests | wrappers | written_by_timm


def test_unip_trainer_metadata_sets_last_block_heads(tmp_path) -> None:
    ref = unip_student()
    path = save({"model": ref.state_dict(), "unip": {"last_heads": UNIP_LAST_HEADS}},
                tmp_path / "unip.pth")
    bb = load_backbone("unip", "tiny", path, depth=DEPTH, cache_dir=tmp_path)
    assert bb.num_heads == [HEADS] * (DEPTH - 1) + [UNIP_LAST_HEADS]
    assert bb.meta.extra["last_heads"] == UNIP_LAST_HEADS


def test_distilled_deit_keeps_its_distillation_token(tmp_path) -> None:
    ref = VisionTransformerDistilled(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_classes=10)
    path = save({"model": ref.state_dict()}, tmp_path / "deit_distilled.pth")
    bb = load_backbone("deit", "tiny", path, depth=DEPTH, cache_dir=tmp_path)
    assert bb.num_prefix_tokens == 2
    assert torch.equal(bb.vit.reg_token, ref.dist_token)
    assert bb.meta.extra["distillation_token"] is True
    assert bb.layer_id("vit.reg_token") == 0


def _mae_checkpoint(tmp_path: Path) -> tuple[VisionTransformer, Path]:
    ref = timm_vit()
    return ref, save(mae_pretrain(ref.state_dict()), tmp_path / "mae.pth")


def _bicubic(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    t = table.reshape(1, 14, 14, DIM).permute(0, 3, 1, 2)
    t = torch.nn.functional.interpolate(t, size=grid, mode="bicubic", align_corners=False)
    return t.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], DIM)


@pytest.mark.parametrize("img_size,grid", [(512, (32, 32)), ((384, 256), (24, 16))])
def test_pos_embed_resampled_to_new_size(tmp_path, img_size, grid) -> None:
    ref, path = _mae_checkpoint(tmp_path)
    bb = load_backbone("mae", "tiny", path, img_size=img_size, depth=DEPTH, cache_dir=tmp_path)

    pos = bb.vit.pos_embed
    assert pos.shape == (1, 1 + grid[0] * grid[1], DIM)
    assert torch.equal(pos[:, :1], ref.pos_embed[:, :1])  # the class token's entry is kept
    expected = _bicubic(ref.pos_embed[:, 1:].detach(), grid)
    assert (pos[:, 1:] - expected).abs().max().item() <= 1e-6
    assert bb.meta.pretrain_img_size == 224
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    with torch.no_grad():
        (feat,) = bb.features(torch.randn(1, 3, h, w))
    assert feat.shape == (1, DIM, *grid)


def test_pos_embed_resampling_without_prefix_entries(tmp_path) -> None:
    """DeiT III's table has no class-token entry: all of it is the patch grid."""
    ref = timm_vit(num_classes=10, no_embed_class=True, init_values=1e-6)
    path = save(deit3_official(ref.state_dict()), tmp_path / "deit3.pth")
    bb = load_backbone("deit3", "tiny", path, img_size=512, depth=DEPTH, cache_dir=tmp_path)
    assert bb.vit.pos_embed.shape == (1, 32 * 32, DIM)
    expected = _bicubic(ref.pos_embed.detach(), (32, 32))
    assert (bb.vit.pos_embed - expected).abs().max().item() <= 1e-6


def test_features_at_new_size_match_a_reference_built_at_that_size(tmp_path) -> None:
    """Loading at 384x256 equals a reference ViT built for 384x256 with the bicubic table."""
    ref, path = _mae_checkpoint(tmp_path)
    sd = ref.state_dict()
    table = sd["pos_embed"]
    sd["pos_embed"] = torch.cat([table[:, :1], _bicubic(table[:, 1:], (24, 16))], dim=1)
    ref_384 = VisionTransformer(
        img_size=(384, 256), embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_classes=0
    ).eval()
    ref_384.load_state_dict(sd)
    bb = load_backbone("mae", "tiny", path, img_size=(384, 256), depth=DEPTH, cache_dir=tmp_path)
    x = torch.randn(1, 3, 384, 256)
    with torch.no_grad():
        got = bb.eval().features(x, [-1])[0]
        want = ref_384.forward_intermediates(
            x, indices=[DEPTH - 1], norm=False, output_fmt="NCHW", intermediates_only=True
        )[0]
    assert (got - want).abs().max().item() <= TOL


def test_loaded_parameters_are_trainable_float32(tmp_path) -> None:
    ref = timm_vit()
    half = {k: v.half() for k, v in ref.state_dict().items()}
    path = save(half, tmp_path / "fp16.safetensors")
    bb = load_backbone("mae", "tiny", path, depth=DEPTH, cache_dir=tmp_path)
    params = list(bb.parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert not any(p.is_meta for p in params)
    assert torch.equal(bb.vit.cls_token, ref.cls_token.half().float())


def test_random_init_still_initialises_weights() -> None:
    bb = load_backbone("mae", "tiny", None, depth=DEPTH)
    assert bb.meta.random_init is True
    w = bb.vit.blocks[0].attn.qkv.weight
    assert not w.is_meta and 0.01 < w.std().item() < 0.03  # timm's trunc_normal(std=.02)
