"""MAE, CrossMAE, DeiT and DeiT III read their real release layouts.

Each manifest in ``tests/golden/release`` records, from the method's own code, the wrapper
its training script writes around the weights, what the published file keeps of it, and
every tensor's name and shape; its ``reference`` holds block features computed once with
the method's own model class on the weights of :func:`release_tensors`. Here a manifest is
rebuilt in that wrapper, saved as the script saves it (``torch.save``, ``args`` an
``argparse.Namespace``; safetensors as well for timm's Hub files), loaded with
``load_backbone``, and its block features must match the reference numbers.

Feature checks write the referenced blocks only (encoder and decoder blocks from the
number of referenced ones on are left out, and ``depth=`` says so; earlier blocks do not
depend on them), which keeps a ViT-B file small; the complete layouts are loaded with
broadcast placeholders, whose values do not matter for the exact key check.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import torch
from release_weights import load_manifest, reference_input, release_tensors
from safetensors.torch import save_file
from torch import nn

from bench.backbones.adapter import AdapterError, get_adapter, load_backbone

ADAPTERS = ("mae", "crossmae", "deit", "deit3")
MANIFESTS = (
    "mae_pretrain_vit_base",
    "mae_timm_vit_base_patch16_224",
    "crossmae_vits_pretrain_wfm",
    "deit_tiny_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "deit_timm_tiny_patch16_224",
    "deit_timm_tiny_distilled_patch16_224",
    "deit3_small_224_1k",
    "deit3_timm_small_patch16_224",
)
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_ANY_BLOCK = re.compile(r"^(?:decoder_)?blocks\.(\d+)\.")  # encoder or MAE decoder

TensorFn = Callable[[int], dict[str, torch.Tensor]]  # seed -> the manifest's tensors


def _block_index(key: str) -> int:
    m = _BLOCK.match(key)
    return int(m.group(1)) if m else -1


def _shape(spec: Any) -> list[int]:
    return list(spec["shape"] if isinstance(spec, dict) else spec)


def _num_blocks(manifest: dict) -> int:
    return 1 + max(_block_index(k) for k in manifest["tensors"])


@lru_cache(maxsize=2)  # training and published files of one manifest share them
def _weights(name: str, seed: int, depth: int) -> dict[str, torch.Tensor]:
    """The manifest's tensors but those of (decoder) blocks >= depth, with real values.

    ``release_tensors`` keys each value on its name, so a subset has the same values.
    """
    tensors = load_manifest(name)["tensors"]
    kept = {
        k: v for k, v in tensors.items() if not ((m := _ANY_BLOCK.match(k)) and int(m[1]) >= depth)
    }
    return release_tensors({"tensors": kept}, seed=seed)


def _placeholders(name: str, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of the manifest as a broadcast view of one number (a few bytes saved)."""
    tensors = load_manifest(name)["tensors"]
    return {k: torch.full((), float(seed)).expand(_shape(v)) for k, v in tensors.items()}


def _materialise(spec: Any, weights: TensorFn) -> Any:
    """The wrapper as the script writes it, from the manifest's JSON description."""
    if spec == "$weights":
        return weights(0)
    if isinstance(spec, dict):
        if set(spec) == {"$weights"}:
            return weights(int(spec["$weights"]["seed"]))
        if set(spec) == {"$namespace"}:
            return argparse.Namespace(**spec["$namespace"])
        return {k: _materialise(v, weights) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_materialise(v, weights) for v in spec]
    return spec


def release_file(name: str, path: Path, variant: str, tensors: TensorFn, edit: Any = None) -> Path:
    """Write manifest ``name`` as its training script (``variant='training'``) or its
    published file (``'published'``) has it; ``edit`` may change the weights first."""
    manifest = load_manifest(name)
    spec = manifest["wrapper"]
    drop = None
    if variant == "published":
        spec = manifest["published"]["wrapper"]
        if "drop_tensors" in manifest["published"]:
            drop = re.compile(manifest["published"]["drop_tensors"])

    def weights(seed: int) -> dict[str, torch.Tensor]:
        out = {k: v for k, v in tensors(seed).items() if not (drop and drop.search(k))}
        return edit(out) if edit is not None else out

    obj = _materialise(spec, weights)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


def _cases(flat_suffix: str) -> list:
    """(manifest, variant, suffix): training-script and published files of each method;
    timm's Hub files (a flat state dict) as ``flat_suffix``."""
    out = []
    for name in MANIFESTS:
        if load_manifest(name)["wrapper"] == "$weights":
            out.append(pytest.param(name, "training", flat_suffix, id=f"{name}{flat_suffix}"))
        else:
            out += [
                pytest.param(name, v, ".pth", id=f"{name}-{v}") for v in ("training", "published")
            ]
    return out


# The Hub holds model.safetensors and pytorch_model.bin: features are checked on the first,
# the complete layout on the second.
FEATURE_CASES = _cases(".safetensors")
LAYOUT_CASES = _cases(".pth")


def _load(name: str, path: Path, tmp_path: Path, **options: Any):
    m = load_manifest(name)
    return load_backbone(m["adapter"], m["size"], path, cache_dir=tmp_path / "cache", **options)


def test_manifests_cover_every_declared_file_format() -> None:
    declared = {(a, f.name) for a in ADAPTERS for f in get_adapter(a).formats if not f.directory}
    covered = {(load_manifest(n)["adapter"], load_manifest(n)["format"]) for n in MANIFESTS}
    assert covered == declared  # HF export folders: test_adapters_hf.py


@pytest.mark.parametrize("name,variant,suffix", FEATURE_CASES)
def test_release_layout_matches_reference_features(tmp_path, name, variant, suffix) -> None:
    m = load_manifest(name)
    ref = m["reference"]
    assert ref["weights"] == {"function": "tests/release_weights.py::release_tensors", "seed": 0}
    depth = len(ref["blocks"])
    path = release_file(
        name, tmp_path / f"{name}{suffix}", variant, lambda seed: _weights(name, seed, depth)
    )

    bb = _load(name, path, tmp_path, depth=depth)

    assert bb.meta.checkpoint_format == m["format"]
    assert bb.num_prefix_tokens == ref["prefix_tokens"]
    x = reference_input(tuple(ref["input"]["shape"]), seed=ref["input"]["seed"])
    with torch.no_grad():
        feats = bb.eval().features(x, [b["index"] for b in ref["blocks"]])
    tol = ref["tolerance"]
    for feat, want in zip(feats, ref["blocks"], strict=True):
        patch = feat[0].flatten(1).T.double()  # raster-order patch tokens x channels
        slack = tol["sum_atol_per_abs_sum"] * want["abs_sum"]
        block = f"block {want['index']}"
        assert patch.sum().item() == pytest.approx(want["sum"], abs=slack), block
        assert patch.abs().sum().item() == pytest.approx(want["abs_sum"], abs=slack), block
        first8 = torch.tensor(want["patch0_first8"], dtype=torch.float64)
        assert (patch[0, :8] - first8).abs().max().item() <= tol["patch0_first8_atol"], block


@pytest.mark.parametrize("name,variant,suffix", LAYOUT_CASES)
def test_complete_release_layout_loads(tmp_path, name, variant, suffix) -> None:
    m = load_manifest(name)
    path = release_file(
        name, tmp_path / f"{name}{suffix}", variant, lambda s: _placeholders(name, s)
    )

    bb = _load(name, path, tmp_path)

    assert bb.meta.checkpoint_format == m["format"]
    assert bb.depth == _num_blocks(m)
    assert bb.embed_dim == _shape(m["tensors"]["cls_token"])[-1]


@pytest.mark.parametrize("name", MANIFESTS)
def test_missing_block_key_is_named(tmp_path, name) -> None:
    m = load_manifest(name)
    key = f"blocks.{_num_blocks(m) - 1}.attn.qkv.weight"

    def without_key(state: dict) -> dict:
        return {k: v for k, v in state.items() if k != key}

    path = release_file(
        name, tmp_path / f"{name}.pth", "training", lambda s: _placeholders(name, s), without_key
    )
    with pytest.raises(AdapterError, match=re.escape(key)) as err:
        _load(name, path, tmp_path)
    assert str(path) in str(err.value)


# -- CrossMAE: weighted feature maps, no final norm ---------------------------------------
CROSSMAE = "crossmae_vits_pretrain_wfm"


def test_crossmae_weight_fm_file_has_identity_final_norm(tmp_path) -> None:
    m = load_manifest(CROSSMAE)
    depth = len(m["reference"]["blocks"])
    path = release_file(
        CROSSMAE, tmp_path / "crossmae.pth", "training", lambda s: _weights(CROSSMAE, s, depth)
    )
    bb = _load(CROSSMAE, path, tmp_path, depth=depth)

    assert isinstance(bb.vit.norm, nn.Identity)
    assert bb.meta.extra["final_norm"] == "identity"
    # 12 blocks + the input (--use_input): wfm.linear.weight is decoder_depth x 13.
    assert bb.meta.extra["weight_fm_feature_maps"] == _shape(m["tensors"]["wfm.linear.weight"])[1]
    assert bb.meta.extra["weight_fm_feature_maps"] == 13
    assert not any(k.startswith(("norm.", "wfm.", "dec_norms.")) for k in bb.vit.state_dict())
    # CrossMAE adds no position embedding to the class token.
    assert torch.count_nonzero(bb.vit.pos_embed[:, 0]) == 0
    x = reference_input()
    with torch.no_grad():
        assert torch.equal(bb.eval()(x), bb.features(x, [-1])[0])


@pytest.mark.parametrize(
    "key,message",
    [
        ("wfm.linear.weight", "trained with --weight_fm"),
        ("dec_norms.11.bias", "dec_norms.11.bias"),
    ],
)
def test_crossmae_broken_weight_fm_module_is_named(tmp_path, key, message) -> None:
    def without_key(state: dict) -> dict:
        return {k: v for k, v in state.items() if k != key}

    path = release_file(
        CROSSMAE,
        tmp_path / "crossmae.pth",
        "training",
        lambda s: _placeholders(CROSSMAE, s),
        without_key,
    )
    with pytest.raises(AdapterError, match=re.escape(message)) as err:
        _load(CROSSMAE, path, tmp_path)
    assert key in str(err.value) and str(path) in str(err.value)


def test_mae_file_is_refused_by_crossmae_and_crossmae_file_by_mae(tmp_path) -> None:
    mae = release_file(
        "mae_pretrain_vit_base",
        tmp_path / "mae.pth",
        "published",
        lambda s: _placeholders("mae_pretrain_vit_base", s),
    )
    with pytest.raises(AdapterError, match="use adapter 'mae'"):
        load_backbone("crossmae", "base", mae, cache_dir=tmp_path / "cache")

    cross = release_file(
        CROSSMAE, tmp_path / "crossmae.pth", "training", lambda s: _placeholders(CROSSMAE, s)
    )
    with pytest.raises(AdapterError, match=r"missing keys \(2\): norm\.bias, norm\.weight"):
        load_backbone("mae", "small", cross, cache_dir=tmp_path / "cache")
