"""Reading Hugging Face ``transformers`` export folders (config.json + weights) safely.

Only the ViT families that published pre-training methods were exported as (ViTMAE for
MAE, ViT for DINO and DeiT, DeiT for distilled DeiT) are understood. The weights are read
without running code (safetensors, or a pickle through the checkpoint allow-list), and the
config is translated into the keyword arguments of the equivalent timm ViT.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.checkpoints.reader import CheckpointError, load_pickle_checkpoint, load_safetensors

# Weights file names save_pretrained writes, in the order we prefer them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# model_type -> the number of prefix tokens besides the class token (DeiT's distillation
# token). Everything else about these families maps onto a plain timm ViT.
MODEL_TYPES: dict[str, int] = {"vit_mae": 0, "vit": 0, "deit": 1}


def hf_weights_file(path: str | Path) -> Path:
    """The export's single weights file; sharded or weightless folders are refused."""
    root = Path(path)
    for name in WEIGHT_FILES:
        if (root / name).is_file():
            return root / name
    if any((root / name).is_file() for name in SHARD_INDEXES):
        raise CheckpointError(
            f"{root} is a sharded Hugging Face export; ViT backbones fit one file, so "
            "re-save it with save_pretrained(..., max_shard_size='20GB')"
        )
    raise CheckpointError(
        f"{root} is not a Hugging Face export: it has none of {', '.join(WEIGHT_FILES)}"
    )


def read_config(path: str | Path) -> dict[str, Any]:
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path} is not a Hugging Face export: config.json is missing")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {config_path}: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} does not hold a JSON object")
    return config


def vit_kwargs_from_config(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """timm ``VisionTransformer`` keyword arguments equivalent to an HF ViT config."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"{source}: model_type {model_type!r} is not a supported ViT export "
            f"(supported: {', '.join(sorted(MODEL_TYPES))})"
        )
    try:
        hidden = int(config["hidden_size"])
        kwargs: dict[str, Any] = {
            "depth": int(config["num_hidden_layers"]),
            "patch_size": int(config.get("patch_size", 16)),
            "mlp_ratio": int(config["intermediate_size"]) / hidden,
            "qkv_bias": bool(config.get("qkv_bias", True)),
            # HF exports use LayerNorm eps 1e-12 where timm defaults to 1e-6.
            "norm_layer": partial(nn.LayerNorm, eps=float(config.get("layer_norm_eps", 1e-12))),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: missing or invalid ViT setting ({exc})") from None
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(
            f"{source}: hidden_act {config.get('hidden_act')!r} is not supported (only 'gelu')"
        )
    if int(config.get("num_channels", 3)) != 3:
        raise CheckpointError(f"{source}: only 3-channel exports are supported")
    if MODEL_TYPES[model_type]:
        kwargs["reg_tokens"] = MODEL_TYPES[model_type]
    return kwargs


def read_hf_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and metadata of an HF export folder, read without running code.

    Metadata: ``model_type``, ``architectures``, ``config`` (the parsed config.json),
    ``weights_file`` and ``vit_kwargs`` (arguments for the equivalent timm ViT, including
    ``depth`` from ``num_hidden_layers``).
    """
    root = Path(path)
    config = read_config(root)
    vit_kwargs = vit_kwargs_from_config(config, source=str(root / "config.json"))
    weights = hf_weights_file(root)
    if weights.suffix == ".safetensors":
        state = load_safetensors(weights)
    else:
        state = load_pickle_checkpoint(weights)
        if not isinstance(state, dict):
            raise CheckpointError(f"{weights} does not hold a state dict")
    metadata = {
        "model_type": config["model_type"],
        "architectures": list(config.get("architectures") or []),
        "config": config,
        "weights_file": str(weights),
        "vit_kwargs": vit_kwargs,
    }
    return state, metadata
