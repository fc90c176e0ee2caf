"""DINO, iBOT and UNIP release files, and Hugging Face exports, rebuilt from golden manifests.

Each manifest in ``tests/golden/release`` was written from the method's own code (its
repository and commit are in ``source``): ``tensors`` lists every tensor of the file its
training or release script writes, by name and shape, and ``file`` says how they are
wrapped (``keys``: the top-level keys in the writer's order; ``tensor_groups``: the
top-level keys holding a state dict, whose tensors the manifest names ``group/key``;
``extras``: every other top-level value, an ``argparse.Namespace`` written as
``{"__namespace__": {...}}``; ``backbone_prefix``: where the backbone's tensors are).
``reference`` holds features the method's own model class computed once, loaded with
``release_tensors(manifest)`` and run on ``reference_input()``: summaries of the patch
tokens of a few blocks before the final norm, and of the last block after it.

The tests write the file as the release does, load it with ``load_backbone`` and compare.
Tensors outside the backbone (the student, projection heads, loss centres), which no
backbone reads, are written as zero-stride tensors of their real shapes: the file keeps
the release's exact keys and shapes without writing a few hundred megabytes per test.
Hugging Face exports are written by the ``transformers`` class itself: ``from_pretrained``
on the manifest's tensors, then ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from bench.backbones.adapter import AdapterError, get_adapter, load_backbone
from tests.release_weights import load_manifest, reference_input, release_tensors

FILE_MANIFESTS = (
    "dino_vits16_full_checkpoint",
    "dino_vits16_backbone",
    "ibot_vits16_full_checkpoint",
    "ibot_vits16_checkpoint_teacher",
    "ibot_vits16_backbone_flat",
    "unip_vit_tiny_checkpoint",
)
HF_MANIFESTS = ("hf_dino_vits16", "hf_vit_mae_base", "hf_deit_tiny_distilled")
# Every format the dino, ibot and unip adapters declare, and the HF exports of these
# tests, is read by one of the manifests above or by a wrapper variant below.
COVERED = {
    ("dino", "teacher"),
    ("dino", "timm"),
    ("dino", "hf"),
    ("ibot", "teacher"),
    ("ibot", "backbone"),
    ("ibot", "timm"),
    ("unip", "unip"),
    ("unip", "state_dict"),
    ("unip", "module"),
    ("unip", "timm"),
    ("mae", "hf"),
    ("deit", "hf"),
}


# ------------------------------------------------------------------ rebuilding files
def _extra(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__namespace__"}:
            return argparse.Namespace(**{k: _extra(v) for k, v in value["__namespace__"].items()})
        return {k: _extra(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_extra(v) for v in value]
    return value


def release_object(manifest: dict[str, Any]) -> dict[str, Any]:
    """The object the method's script hands to ``torch.save``."""
    spec = manifest["file"]
    prefix = spec["backbone_prefix"]
    backbone = {k: v for k, v in manifest["tensors"].items() if k.startswith(prefix)}
    values = release_tensors({"tensors": backbone})
    groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in spec["tensor_groups"]}
    top: dict[str, Any] = {}
    for name, shape in manifest["tensors"].items():
        tensor = values[name] if name in values else torch.zeros(()).expand(shape)
        group, _, key = name.partition("/")
        if group in groups and key:
            groups[group][key] = tensor
        else:
            top[name] = tensor
    if spec["keys"] is None:
        assert not groups and not spec["extras"]
        return top
    everything = {**groups, **{k: _extra(v) for k, v in spec["extras"].items()}}
    assert set(everything) == set(spec["keys"]) and not top
    return {k: everything[k] for k in spec["keys"]}


def write_export(manifest: dict[str, Any], folder: Path) -> Path:
    """An HF export folder: the manifest's transformers class given the manifest's
    tensors under their on-disk names (``from_pretrained`` maps them onto its modules),
    then ``save_pretrained``."""
    hf = manifest["hf"]
    model_cls = getattr(transformers, hf["class"])
    config = getattr(transformers, hf["config_class"])(**hf["config"])
    model, info = model_cls.from_pretrained(
        None,
        config=config,
        state_dict=release_tensors(manifest),
        output_loading_info=True,
        **hf["init_kwargs"],
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    model.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------ comparing
def _summary(tokens: torch.Tensor) -> dict[str, Any]:
    """``tokens``: B x N x D patch tokens."""
    p = tokens.double()
    return {
        "sum": float(p.sum()),
        "abs_sum": float(p.abs().sum()),
        "patch0_first8": tokens[0, 0, :8].tolist(),
    }


def _close(what: str, got: dict[str, Any], want: dict[str, Any], tol: dict[str, Any]) -> None:
    """Patch token 0's first values within an absolute tolerance; the sums within a
    tolerance relative to the sum of absolute values (the manifest's ``tolerance``)."""
    scale = want["abs_sum"] * tol["sums_relative_to_abs_sum"]
    for key in ("sum", "abs_sum"):
        assert abs(got[key] - want[key]) <= scale, (what, key, got[key], want[key])
    pairs = zip(got["patch0_first8"], want["patch0_first8"], strict=True)
    assert max(abs(g - w) for g, w in pairs) <= tol["patch0_first8"], (
        what,
        got["patch0_first8"],
        want["patch0_first8"],
    )


def check_reference(bb: Any, reference: dict[str, Any]) -> None:
    """The loaded backbone's block features are the method's own model's.

    One forward pass: the final norm is applied to the last block's patch tokens (a
    LayerNorm normalises each token on its own, so the prefix tokens do not matter).
    """
    x = reference_input()
    final = reference["final_norm"]
    blocks = sorted({int(b) for b in reference["blocks"]} | {final["block"]})
    bb.eval()
    with torch.no_grad():
        maps = bb.features(x, blocks)
        tokens = {b: m.flatten(2).transpose(1, 2) for b, m in zip(blocks, maps, strict=True)}
        normed = bb.vit.norm(tokens[final["block"]])
    tol = reference["tolerance"]
    for b, want in reference["blocks"].items():
        _close(f"block {b}", _summary(tokens[int(b)]), want, tol)
    _close("final norm", _summary(normed), final, tol)


def _load(manifest: dict[str, Any], path: Path, tmp: Path, **options: Any) -> Any:
    return load_backbone(
        manifest["adapter"],
        manifest["size"],
        path,
        cache_dir=tmp / "cache",
        **{**manifest.get("options", {}), **options},
    )


# ------------------------------------------------------------------ fixtures
class _Lazy(dict):
    """Built on first use, once per module: a test that needs one file builds only it."""

    def __init__(self, build: Any) -> None:
        super().__init__()
        self.build = build

    def __missing__(self, name: str) -> Any:
        self[name] = value = self.build(name)
        return value


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    """Release objects (a negative test edits a copy)."""
    return _Lazy(lambda name: release_object(load_manifest(name)))


def _save(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def files(objects, tmp_path_factory) -> dict[str, Path]:
    """Release files as the release script saves them (``torch.save``)."""
    root = tmp_path_factory.mktemp("release")
    return _Lazy(lambda name: _save(objects[name], root / f"{name}.pth"))


# ------------------------------------------------------------------ the tests
def test_manifests_cover_every_declared_format() -> None:
    declared = {(a, f.name) for a in ("dino", "ibot", "unip") for f in get_adapter(a).formats}
    assert declared <= COVERED
    named = {(load_manifest(n)["adapter"], load_manifest(n)["format"]) for n in FILE_MANIFESTS}
    named |= {(load_manifest(n)["adapter"], "hf") for n in HF_MANIFESTS}
    assert named | {("unip", "state_dict"), ("unip", "module"), ("unip", "timm")} == COVERED


@pytest.mark.parametrize("name", FILE_MANIFESTS)
def test_release_file_loads_and_matches_the_methods_model(name, files, tmp_path) -> None:
    manifest = load_manifest(name)

    bb = _load(manifest, files[name], tmp_path)

    assert bb.meta.checkpoint_format == manifest["format"]
    assert bb.meta.random_init is False
    ref = manifest["reference"]
    assert bb.num_prefix_tokens == ref["num_prefix_tokens"]
    if "heads" in ref:
        assert bb.num_heads == ref["heads"]
    check_reference(bb, ref)


def test_ibot_student_backbone_file_loads_without_masked_embed(objects, tmp_path) -> None:
    """checkpoint_student.pth (the ImageNet-22k releases) is the same extraction from the
    student, whose backbone also holds masked_embed (shape from the full checkpoint)."""
    manifest = load_manifest("ibot_vits16_checkpoint_teacher")
    shape = load_manifest("ibot_vits16_full_checkpoint")["tensors"][
        "student/module.backbone.masked_embed"
    ]
    backbone = objects["ibot_vits16_checkpoint_teacher"]["state_dict"]
    obj = {"state_dict": {**backbone, "masked_embed": torch.ones(shape)}}
    bb = _load(manifest, _save(obj, tmp_path / "checkpoint_student.pth"), tmp_path)
    assert bb.meta.checkpoint_format == "backbone"
    check_reference(bb, manifest["reference"])


def test_unip_last_block_attention_has_the_teachers_head_split(files, tmp_path) -> None:
    """The release's last block has 16 heads (the MAE-L teacher's): its softmax maps."""
    manifest = load_manifest("unip_vit_tiny_checkpoint")
    bb = _load(manifest, files["unip_vit_tiny_checkpoint"], tmp_path)
    want = manifest["reference"]["last_attention"]
    assert bb.num_heads[-1] == manifest["last_heads"] == 16
    with torch.no_grad():
        (attn,) = bb.eval().attention(reference_input(), [want["block"]])
    assert list(attn.shape) == want["shape"]
    tol = want["tolerance"]
    a = attn.double()
    assert abs(float((a * a).sum()) - want["sum_sq"]) <= tol["sum_sq_relative"] * want["sum_sq"]
    assert abs(float(a.max()) - want["max"]) <= tol["max"]
    for got, key in (
        (attn[0, 0, 0, :8], "head0_query0_first8"),
        (attn[0, -1, 1, :8], "head_last_query1_first8"),
    ):
        diff = max(abs(g - w) for g, w in zip(got.tolist(), want[key], strict=True))
        assert diff <= tol["first8"], (key, got.tolist(), want[key])


def test_unip_release_without_last_heads_is_refused(files, tmp_path) -> None:
    """save_model stores no head count, so the file alone cannot say it."""
    manifest = load_manifest("unip_vit_tiny_checkpoint")
    path = files["unip_vit_tiny_checkpoint"]
    with pytest.raises(AdapterError, match=r"unip_vit_tiny_checkpoint\.pth.*last_heads"):
        load_backbone("unip", "tiny", path, cache_dir=tmp_path / "cache")
    assert manifest["options"] == {"last_heads": 16}


@pytest.mark.parametrize(
    "wrap,fmt",
    [
        (lambda sd: {"state_dict": sd}, "state_dict"),
        (lambda sd: {"module": sd, "epoch": 99}, "module"),
        (lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, "state_dict"),
        (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, "unip"),
        (lambda sd: dict(sd), "timm"),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "timm"),
    ],
    ids=["state_dict", "module", "state_dict-module.", "model-module.", "flat", "flat-module."],
)
def test_unip_wrappers_the_segmentation_loader_accepts(wrap, fmt, objects, tmp_path) -> None:
    """UNIP_segmentation/mmcv_custom/checkpoint.py load_checkpoint reads 'state_dict',
    'model', 'module' or the file itself, and strips a 'module.' prefix."""
    manifest = load_manifest("unip_vit_tiny_checkpoint")
    student = objects["unip_vit_tiny_checkpoint"]["model"]
    path = _save(wrap(student), tmp_path / "unip.pth")
    bb = _load(manifest, path, tmp_path)
    assert bb.meta.checkpoint_format == fmt
    check_reference(bb, manifest["reference"])


# A key each release file must have; removing it must fail naming it.
MISSING = {
    "dino_vits16_full_checkpoint": (
        "teacher/backbone.blocks.5.attn.qkv.weight",
        r"blocks\.5\.attn\.qkv\.weight",
    ),
    "dino_vits16_backbone": ("norm.bias", r"missing keys \(1\): norm\.bias"),
    "ibot_vits16_full_checkpoint": ("teacher/backbone.pos_embed", r"missing keys \(1\): pos_embed"),
    "ibot_vits16_checkpoint_teacher": (
        "state_dict/blocks.11.mlp.fc2.weight",
        r"blocks\.11\.mlp\.fc2\.weight",
    ),
    "ibot_vits16_backbone_flat": ("patch_embed.proj.weight", r"patch_embed\.proj\.weight"),
    "unip_vit_tiny_checkpoint": ("model/blocks.11.attn.qkv.bias", r"blocks\.11\.attn\.qkv\.bias"),
}


@pytest.mark.parametrize("name", FILE_MANIFESTS)
def test_release_file_missing_a_tensor_names_it(name, objects, tmp_path) -> None:
    manifest = load_manifest(name)
    obj = dict(objects[name])
    removed, pattern = MISSING[name]
    group, _, key = removed.partition("/")
    if key and group in manifest["file"]["tensor_groups"]:
        obj[group] = {k: v for k, v in obj[group].items() if k != key}
    else:
        del obj[removed]
    path = _save(obj, tmp_path / f"{name}.pth")
    with pytest.raises(
        AdapterError, match=rf"{name}\.pth.*format '{manifest['format']}'.*{pattern}"
    ):
        _load(manifest, path, tmp_path)


# The wrapper key a nested release is found by; renamed, the error must name it.
WRAPPER = {
    "dino_vits16_full_checkpoint": "teacher",
    "ibot_vits16_full_checkpoint": "teacher",
    "ibot_vits16_checkpoint_teacher": "state_dict",
}


@pytest.mark.parametrize("name", sorted(WRAPPER))
def test_release_file_without_its_wrapper_key_names_it(name, objects, tmp_path) -> None:
    manifest = load_manifest(name)
    obj = {("weights" if k == WRAPPER[name] else k): v for k, v in objects[name].items()}
    path = _save(obj, tmp_path / f"{name}.pth")
    with pytest.raises(
        AdapterError,
        match=rf"{name}\.pth.*expects weights under .*"
        rf"'{WRAPPER[name]}'.*the file has .*'weights'",
    ):
        _load(manifest, path, tmp_path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return _Lazy(lambda name: write_export(load_manifest(name), root / name))


@pytest.mark.parametrize("name", HF_MANIFESTS)
def test_hf_export_loads_and_matches_the_methods_model(name, exports, tmp_path) -> None:
    manifest = load_manifest(name)
    folder = exports[name]
    written = load_file(str(folder / "model.safetensors"))
    # save_pretrained's names and shapes are the published exports'
    assert {k: list(v.shape) for k, v in written.items()} == manifest["tensors"]
    assert json.loads((folder / "config.json").read_text())["architectures"] == [
        manifest["hf"]["class"]
    ]

    bb = _load(manifest, folder, tmp_path)

    assert bb.meta.checkpoint_format == "hf"
    assert bb.depth == manifest["hf"]["config"]["num_hidden_layers"]
    assert bb.num_prefix_tokens == manifest["reference"]["num_prefix_tokens"]
    check_reference(bb, manifest["reference"])


@pytest.mark.parametrize("name", HF_MANIFESTS)
def test_hf_export_missing_a_tensor_names_it(name, exports, tmp_path) -> None:
    manifest = load_manifest(name)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text((exports[name] / "config.json").read_text())
    state = load_file(str(exports[name] / "model.safetensors"))
    del state["layernorm.bias"]
    save_file(state, str(folder / "model.safetensors"), {"format": "pt"})
    with pytest.raises(AdapterError, match=rf"{name}.*format 'hf'.*missing keys \(1\): norm\.bias"):
        _load(manifest, folder, tmp_path)
