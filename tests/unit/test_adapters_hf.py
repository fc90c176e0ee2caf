"""Hugging Face ``transformers`` export folders load into the mae, dino and deit adapters.

Each export is written by ``save_pretrained`` from a small random ``transformers`` model;
the backbone's block outputs must equal the model's ``hidden_states`` (``hidden_states[0]``
is the embedding output, so block i is ``hidden_states[i + 1]``). The backbone classes
themselves (ViTMAEModel, ViTModel for DINO, DeiTModel), at their published geometry, are
checked against the methods' own models in test_release_formats_ssl.py; the task-head
classes whose encoders sit under ``vit.`` / ``deit.`` are checked here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    ViTConfig,
    ViTForImageClassification,
    ViTMAEConfig,
    ViTMAEForPreTraining,
    ViTMAEModel,
    ViTModel,
)

from bench.backbones.adapter import AdapterError, load_backbone
from bench.checkpoints.hf_export import read_hf_export
from bench.checkpoints.reader import CheckpointError

DEPTH = 2
GEOMETRY = dict(
    hidden_size=192, num_attention_heads=3, intermediate_size=768, num_hidden_layers=DEPTH
)
TOL = 1e-4
GRID = 14 * 14


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval()


def mae_config() -> ViTMAEConfig:
    # mask_ratio 0 keeps every patch; the noise passed at inference keeps their order.
    return ViTMAEConfig(
        **GEOMETRY, mask_ratio=0.0, decoder_hidden_size=64, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4, decoder_intermediate_size=128,
    )


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "vit", None) or getattr(model, "deit", None) or model


def hf_hidden_states(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    enc = encoder_of(model)
    kwargs = {}
    if isinstance(enc, ViTMAEModel):
        kwargs["noise"] = torch.arange(GRID, dtype=torch.float32).expand(x.shape[0], GRID)
    with torch.no_grad():
        return enc(x, output_hidden_states=True, **kwargs).hidden_states


CASES = [
    ("mae", lambda: ViTMAEForPreTraining(mae_config()), 1),
    ("deit", lambda: ViTForImageClassification(ViTConfig(**GEOMETRY, num_labels=10)), 1),
    (
        "deit",
        lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**GEOMETRY, num_labels=10)),
        2,
    ),
]


@pytest.mark.parametrize(
    "adapter,make_model,prefix",
    CASES,
    ids=["ViTMAEForPreTraining", "ViTForImageClassification-deit",
         "DeiTForImageClassificationWithTeacher"],
)
def test_hf_export_matches_hidden_states(tmp_path, adapter, make_model, prefix) -> None:
    model = randomise(make_model())
    model.save_pretrained(tmp_path / "export")

    bb = load_backbone(adapter, "tiny", tmp_path / "export", cache_dir=tmp_path / "cache")

    assert bb.meta.checkpoint_format == "hf"
    assert bb.depth == DEPTH  # from config.json, no depth= given
    assert bb.num_prefix_tokens == prefix
    x = torch.randn(2, 3, 224, 224)
    hidden = hf_hidden_states(model, x)
    with torch.no_grad():
        feats = bb.eval().features(x, list(range(DEPTH)))
    for i, f in enumerate(feats):
        ref = hidden[i + 1][:, prefix:].transpose(1, 2).reshape(f.shape)
        assert (f - ref).abs().max().item() <= TOL
    # The final LayerNorm (eps 1e-12 as in the config) is HF's ``layernorm``.
    with torch.no_grad():
        last = bb.features(x, [-1], norm=True)[0]
        ref_last = encoder_of(model).layernorm(hidden[-1])[:, prefix:]
    assert (last - ref_last.transpose(1, 2).reshape(last.shape)).abs().max().item() <= TOL
    assert bb.vit.norm.eps == 1e-12


def test_mae_fixed_position_table_is_taken_from_the_export(tmp_path) -> None:
    """ViTMAE's sin-cos table is a frozen parameter saved with the weights; it is loaded."""
    model = ViTMAEModel(mae_config()).eval()
    assert "embeddings.position_embeddings" in model.state_dict()
    pos = torch.arange(1 + GRID)[:, None] / 10000 ** (torch.arange(96)[None] / 96)
    with torch.no_grad():
        model.embeddings.position_embeddings.copy_(torch.cat([pos.sin(), pos.cos()], 1)[None])
    model.save_pretrained(tmp_path / "export")
    bb = load_backbone("mae", "tiny", tmp_path / "export", cache_dir=tmp_path)
    assert torch.equal(bb.vit.pos_embed, model.embeddings.position_embeddings)


def test_read_hf_export_metadata(tmp_path) -> None:
    ViTMAEForPreTraining(mae_config()).save_pretrained(tmp_path)
    state, meta = read_hf_export(tmp_path)
    assert meta["model_type"] == "vit_mae"
    assert meta["architectures"] == ["ViTMAEForPreTraining"]
    kw = meta["vit_kwargs"]
    assert kw["depth"] == DEPTH and kw["mlp_ratio"] == 4.0 and kw["qkv_bias"] is True
    assert kw["norm_layer"](8).eps == 1e-12
    assert "vit.encoder.layer.0.attention.attention.query.weight" in state


def test_pytorch_model_bin_export_is_read_safely(tmp_path) -> None:
    """Older exports hold ``pytorch_model.bin``: the same keys, pickled."""
    from safetensors.torch import load_file

    model = randomise(ViTModel(ViTConfig(**GEOMETRY)))
    model.save_pretrained(tmp_path)
    torch.save(load_file(str(tmp_path / "model.safetensors")), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    bb = load_backbone("dino", "tiny", tmp_path, cache_dir=tmp_path / "cache")
    assert torch.equal(bb.vit.cls_token, model.embeddings.cls_token)


def test_wrong_size_names_the_export_and_its_size(tmp_path) -> None:
    ViTModel(ViTConfig(**GEOMETRY)).save_pretrained(tmp_path)
    with pytest.raises(AdapterError, match=r"hidden_size 192 and 3 heads.*size='tiny'"):
        load_backbone("dino", "small", tmp_path, cache_dir=tmp_path / "cache")


def test_export_of_another_family_is_refused(tmp_path) -> None:
    DeiTModel(DeiTConfig(**GEOMETRY)).save_pretrained(tmp_path)
    with pytest.raises(AdapterError, match=r"'deit' model.*adapter 'dino' reads 'vit'"):
        load_backbone("dino", "tiny", tmp_path, cache_dir=tmp_path / "cache")


def test_unsupported_model_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "swin"}))
    with pytest.raises(CheckpointError, match="model_type 'swin'"):
        read_hf_export(tmp_path)


def test_folder_without_config_is_not_an_export(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a Hugging Face export"):
        load_backbone("mae", "tiny", tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_hf_export(tmp_path)


def test_digest_of_export_is_its_weights_file(tmp_path) -> None:
    ViTModel(ViTConfig(**GEOMETRY)).save_pretrained(tmp_path / "export")
    bb = load_backbone("dino", "tiny", tmp_path / "export", cache_dir=tmp_path / "cache")
    data = (tmp_path / "export" / "model.safetensors").read_bytes()
    assert bb.meta.checkpoint_sha256 == hashlib.sha256(data).hexdigest()
