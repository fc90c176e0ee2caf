"""Sizes are declared by adapters: names, letters, geometry and per-size protocol defaults."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.backbones.adapter import (
    STANDARD_VIT_SIZES,
    VIT_LARGE,
    VIT_SMALL,
    Adapter,
    AdapterError,
    SizeSpec,
    canonical_size,
    get_adapter,
    load_backbone,
    register_adapter,
    size_letter,
)
from bench.protocols.config import resolve_settings
from bench.registry import ADAPTERS

# The published ViT geometries (Dosovitskiy et al.; DeiT for ViT-T): width, depth, heads.
PUBLISHED = {"T": (192, 12, 3), "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16)}


@pytest.fixture
def huge_only():
    """A plug-in adapter whose only size is its own (no core table knows it)."""
    spec = SizeSpec("huge", "H", 1280, 32, 16, patch_size=14, aliases=("vit-h",),
                    protocol_defaults={"fine_tune": {"drop_path": 0.3, "layers": [7, 15, 23, 31]}})
    adapter = Adapter(
        name="huge_method",
        description="test",
        formats=(),
        sizes=(spec,),
        published_sizes=("huge",),
        protocol_defaults={"fine_tune": {"layer_decay": 0.9, "drop_path": 0.25}},
    )
    register_adapter(adapter, overwrite=True)
    yield adapter
    ADAPTERS.unregister("huge_method")


def test_standard_sizes_are_the_published_vits() -> None:
    got = {s.letter: (s.embed_dim, s.depth, s.num_heads) for s in STANDARD_VIT_SIZES}
    assert got == PUBLISHED
    assert all(s.patch_size == 16 for s in STANDARD_VIT_SIZES)


@pytest.mark.parametrize("name", ["mae", "deit", "dino", "ibot", "crossmae"])
def test_ordinary_vit_adapters_share_the_standard_sizes(name) -> None:
    assert get_adapter(name).sizes == STANDARD_VIT_SIZES


@pytest.mark.parametrize("given,canonical", [("S", "small"), ("vit_l", "large"),
                                             ("ViT-T", "tiny"), (" Base ", "base")])
def test_names_letters_and_aliases_resolve(given, canonical) -> None:
    mae = get_adapter("mae")
    assert mae.canonical_size(given) == canonical == canonical_size(given)
    assert mae.letter(given) == canonical[0].upper()


def test_unknown_size_names_the_adapters_sizes() -> None:
    with pytest.raises(AdapterError, match=r"unknown ViT size 'large' for adapter 'unip'; "
                       r"use one of T \(tiny\), S \(small\), B \(base\)"):
        get_adapter("unip").size("large")
    with pytest.raises(AdapterError, match="Did you mean 'small'"):
        get_adapter("mae").size("smal")


def test_protocol_defaults_merge_size_then_adapter(huge_only) -> None:
    assert huge_only.protocol_defaults("fine_tune", "H") == {
        "drop_path": 0.25,  # the adapter's wins over the size's
        "layers": [7, 15, 23, 31],
        "layer_decay": 0.9,
    }
    assert huge_only.protocol_defaults("linear_probe", "huge") == {}
    assert dict(huge_only.protocol_defaults) == {
        "fine_tune": {"layer_decay": 0.9, "drop_path": 0.25}
    }
    mae = get_adapter("mae")  # the standard sizes bring nothing: the protocols use the depth
    assert mae.protocol_defaults("fine_tune", "L") == {}
    assert mae.protocol_defaults("fine_tune", "B") == {}


def test_malformed_protocol_defaults_are_named() -> None:
    with pytest.raises(AdapterError, match=r"adapter 'bad': protocol_defaults\['fine_tune'\] "
                       "must be a mapping of settings, got a list"):
        Adapter(name="bad", description="", formats=(), protocol_defaults={"fine_tune": [1]})


def test_returned_defaults_are_the_callers_to_change(huge_only) -> None:
    huge_only.protocol_defaults("fine_tune", "H")["layers"].append(99)
    assert huge_only.protocol_defaults("fine_tune", "H")["layers"] == [7, 15, 23, 31]


def test_a_plug_in_size_needs_no_core_edit(huge_only) -> None:
    bb = load_backbone("huge_method", "vit-h", None, img_size=28, depth=1)
    assert (bb.embed_dim, bb.patch_size, bb.num_heads, bb.meta.size) == (1280, 14, [16], "huge")
    assert size_letter("huge", "huge_method") == "H"
    assert size_letter("large") == "L" and size_letter("eva-x") == "eva-x"
    settings = resolve_settings("fine_tune", "soda", "huge_method", "H", {})
    assert settings.model_fields_set >= {"iters"}  # the size resolves for the protocols


def test_size_geometry_reaches_the_vit_and_extra_kwargs_apply() -> None:
    spec = dataclasses.replace(VIT_SMALL, name="small14", letter="S14", aliases=(),
                               patch_size=14, vit_kwargs={"mlp_ratio": 2.0})
    adapter = Adapter(name="s14", description="test", formats=(), sizes=(spec,))
    vit = adapter.build_vit("S14", 56, depth=1)
    assert vit.patch_embed.patch_size == (14, 14)
    assert vit.blocks[0].mlp.fc1.out_features == 2 * 384
    assert not VIT_LARGE.protocol_defaults  # what protocols read of ViT-L follows its depth


def test_output_shape_describes_every_returned_level() -> None:
    bb = load_backbone("dinov2", "S", None, img_size=28, depth=2)
    shapes = bb.output_shape([0, -1, 1])
    assert [(s.channels, s.stride) for s in shapes] == [(384, 14)] * 3
    maps = bb.features(torch.randn(1, 3, 28, 42), [0, -1, 1])
    assert [m.shape[1] for m in maps] == [s.channels for s in shapes]
    assert [42 // m.shape[-1] for m in maps] == [s.stride for s in shapes]


def test_suite_sizes_are_checked_against_the_models_adapter(tmp_path) -> None:
    from bench.suites.load import SuiteError, load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(
        'suite: sizes\nprotocol_version: "2.1"\n'
        "models:\n  - {adapter: dinov2, size: g}\n  - {adapter: unip, size: L}\n"
        "datasets:\n  - {name: soda, root: data/soda}\nprotocols:\n  linear_probe:\n"
    )
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1, problems  # DINOv2's g is a size; UNIP has no ViT-L
    assert "models[1].size: unknown ViT size 'L' for adapter 'unip'" in problems[0]
