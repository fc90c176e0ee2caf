"""AdamW parameter groups: weight-decay rules and layer-wise lr decay.

The weight-decay rules are named after what the UNIP release ran, because the paper's
numbers come from its actual behaviour, not from its intent:

- ``no_bias_norm``: the release's fine-tuning constructor (``LayerDecayOptimizerConstructor``)
  exempts 1-D tensors and names ending in ``.bias``. It also lists ``pos_embed`` and
  ``cls_token``, but compares those bare names with prefixed ones (``backbone.pos_embed``),
  so in the paper's runs both DO get weight decay.
- ``no_bias_norm_tokens``: what that constructor meant: tokens and position tables exempt too.
- ``all``: mmcv's default constructor with no ``paramwise_cfg`` (the released probing configs):
  every parameter decays, biases included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

WeightDecayRule = Literal["no_bias_norm", "no_bias_norm_tokens", "all"]
WEIGHT_DECAY_RULES: tuple[str, ...] = ("no_bias_norm", "no_bias_norm_tokens", "all")
TOKEN_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token", "mask_token")


def wants_weight_decay(
    name: str, param: torch.Tensor, rule: WeightDecayRule = "no_bias_norm"
) -> bool:
    """Whether ``name`` is decayed under ``rule`` (see the module docstring)."""
    if rule == "all":
        return True
    if param.ndim <= 1 or name.endswith(".bias"):
        return False
    if rule == "no_bias_norm":
        return True
    if rule == "no_bias_norm_tokens":
        leaf = name.rsplit(".", 1)[-1]
        return leaf not in TOKEN_NAMES
    raise ValueError(
        f"unknown weight-decay rule {rule!r}; use one of {', '.join(WEIGHT_DECAY_RULES)}"
    )


def check_betas(betas: tuple[float, float]) -> tuple[float, float]:
    """AdamW's betas, each in [0, 1) (a settings validator; ValueError otherwise)."""
    if not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must each be in [0, 1), got {betas}")
    return betas


def layer_decay_multiplier(layer_id: int, num_layers: int, decay: float) -> float:
    """decay ** (num_layers + 1 - layer_id): embeddings smallest, neck/head exactly 1."""
    return decay ** (num_layers + 1 - layer_id)


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    layer_id: Callable[[str], int] | None = None,
    num_layers: int = 0,
    decay_rule: WeightDecayRule = "no_bias_norm",
) -> list[dict]:
    """Groups keyed by (layer id, decay or not), each with its ``lr`` and ``lr_scale``.

    ``layer_id`` maps a parameter name to 0 (embeddings) .. num_layers + 1 (neck/head);
    without it every parameter is at num_layers + 1, i.e. multiplier 1.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        lid = layer_id(name) if layer_id is not None else num_layers + 1
        decay = wants_weight_decay(name, p, decay_rule)
        key = (lid, decay)
        if key not in groups:
            scale = layer_decay_multiplier(lid, num_layers, layer_decay)
            groups[key] = {
                "params": [],
                "names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decay else 0.0,
                "layer_id": lid,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_adamw(
    groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` output; the ``names`` bookkeeping is kept out of torch."""
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return torch.optim.AdamW(clean, lr=lr, betas=betas)
