"""DINOv2 hub releases, rebuilt from golden manifests and compared with DINOv2's own model.

Each manifest in ``tests/golden/release/dinov2_*.json`` lists every tensor (name, shape,
dtype) of a hub file as facebookresearch/dinov2's ``DinoVisionTransformer`` writes it
(repository and commit in ``source``) and holds features that class computed with
``release_tensors(manifest)`` on ``reference_input()`` (224 px: a 16x16 grid, so the
37x37 position table goes through the release's own interpolation): summaries of patch
tokens of a few blocks, and of the last block after the final norm. The tests write the
file as the hub serves it (``torch.save`` of the flat state dict), load it with
``load_backbone`` and compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bench.backbones.adapter import AdapterError, get_adapter, load_backbone
from tests.release_weights import load_manifest, reference_input, release_tensors

MANIFESTS = (
    "dinov2_vits14_pretrain",
    "dinov2_vits14_reg4_pretrain",
    "dinov2_vitg14_reg4_first_block",
)


def _summary(tokens: torch.Tensor) -> dict[str, Any]:
    """``tokens``: B x N x D patch tokens."""
    p = tokens.double()
    return {
        "sum": float(p.sum()),
        "abs_sum": float(p.abs().sum()),
        "patch0_first8": tokens[0, 0, :8].tolist(),
        "patch_last_first8": tokens[0, -1, :8].tolist(),
    }


def _close(what: str, got: dict[str, Any], want: dict[str, Any], tol: dict[str, Any]) -> None:
    scale = want["abs_sum"] * tol["sums_relative_to_abs_sum"]
    for key in ("sum", "abs_sum"):
        assert abs(got[key] - want[key]) <= scale, (what, key, got[key], want[key])
    for key in ("patch0_first8", "patch_last_first8"):
        pairs = zip(got[key], want[key], strict=True)
        assert max(abs(g - w) for g, w in pairs) <= tol["patch0_first8"], (what, key)


def check_reference(bb: Any, reference: dict[str, Any]) -> None:
    """Block features (before the final norm) and the last block's after it."""
    final = reference["final_norm"]
    blocks = sorted({int(b) for b in reference["blocks"]} | {final["block"]})
    with torch.no_grad():
        maps = bb.features(reference_input(), blocks)
        tokens = {b: m.flatten(2).transpose(1, 2) for b, m in zip(blocks, maps, strict=True)}
        (normed,) = bb.features(reference_input(), [final["block"]], norm=True)
    tol = reference["tolerance"]
    for b, want in reference["blocks"].items():
        _close(f"block {b}", _summary(tokens[int(b)]), want, tol)
    _close("final norm", _summary(normed.flatten(2).transpose(1, 2)), final, tol)


def _options(manifest: dict[str, Any]) -> dict[str, Any]:
    depth = manifest["source"]["arguments"].get("depth")
    return {"depth": depth} if depth is not None else {}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dinov2")
    out = {}
    for name in MANIFESTS:
        out[name] = root / f"{name}.pth"
        torch.save(release_tensors(load_manifest(name)), out[name])
    return out


@pytest.mark.parametrize("name", MANIFESTS)
def test_hub_file_loads_and_matches_dinov2s_model(name, files, tmp_path) -> None:
    manifest = load_manifest(name)
    ref = manifest["reference"]

    bb = load_backbone("dinov2", manifest["size"], files[name], cache_dir=tmp_path,
                       **_options(manifest))

    assert bb.meta.checkpoint_format == "hub" and bb.meta.random_init is False
    assert bb.patch_size == 14 and bb.meta.pretrain_img_size == 518
    assert bb.num_prefix_tokens == ref["num_prefix_tokens"]
    registers = ref["num_prefix_tokens"] - 1
    assert bb.meta.extra["register_tokens"] == registers
    check_reference(bb, ref)


def test_register_model_attends_over_cls_registers_and_patches(files) -> None:
    bb = load_backbone("dinov2", "S", files["dinov2_vits14_reg4_pretrain"])
    with torch.no_grad():
        (probs,) = bb.attention(torch.randn(1, 3, 56, 70), [0])
    n = 1 + 4 + 4 * 5
    assert probs.shape == (1, 6, n, n)
    assert torch.allclose(probs.sum(-1), torch.ones(1, 6, n), atol=1e-5)


def test_sizes_are_the_releases() -> None:
    adapter = get_adapter("dinov2")
    assert [adapter.letter(s) for s in adapter.published_sizes] == ["S", "B", "L", "g"]
    giant = adapter.size("g")
    assert (giant.embed_dim, giant.depth, giant.num_heads, giant.patch_size) == (1536, 40, 24, 14)
    assert adapter.size("vit_l").patch_size == 14
    # The blocks read follow the depth, whichever adapter declares the size: ViT-L's are
    # the released ViT-L configs' out_indices; ViT-g's 40 blocks at the same fractions.
    from bench.protocols.config import resolve_settings

    large = resolve_settings("fine_tune", "soda", "dinov2", "L")
    assert (large.layers, large.drop_path) == ([7, 11, 15, 23], 0.2)
    assert resolve_settings("linear_probe", "soda", "dinov2", "g").layers == [12, 19, 26, 39]
    assert resolve_settings("linear_probe", "soda", "dinov2", "S").layers == [3, 5, 7, 11]
    with pytest.raises(AdapterError, match="unknown ViT size 'T' for adapter 'dinov2'"):
        adapter.size("T")


def test_wrong_size_is_explained(files) -> None:
    with pytest.raises(AdapterError, match="SwiGLU MLP.*pass size g"):
        load_backbone("dinov2", "S", files["dinov2_vitg14_reg4_first_block"], depth=1)
    with pytest.raises(AdapterError, match="embed dim is 384.*ViT-S"):
        load_backbone("dinov2", "B", files["dinov2_vits14_pretrain"])


def test_a_512_crop_is_the_releases_37x37_grid(files) -> None:
    """Segmentors pad a 512 crop to 518 px: the backbone is built for that grid, so the
    release's table is used as it is, and FLOPs are counted on the padded input."""
    from bench.backbones.flops import backbone_flops

    state = release_tensors(load_manifest("dinov2_vits14_pretrain"))
    bb = load_backbone("dinov2", "S", files["dinov2_vits14_pretrain"], img_size=512)
    assert tuple(bb.vit.patch_embed.grid_size) == (37, 37)
    assert torch.equal(bb.vit.pos_embed.detach(), state["pos_embed"])
    shallow = load_backbone("dinov2", "S", None, img_size=512, depth=1)
    padded, _ = backbone_flops(shallow, 518)
    assert backbone_flops(shallow, 512)[0].total == padded.total
