"""AdamW parameter groups: no weight decay on biases/norms/tokens, layer-wise lr decay."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token", "mask_token")


def wants_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights (all 1-D tensors), position embeddings and tokens: no decay."""
    if param.ndim <= 1 or name.endswith(".bias"):
        return False
    leaf = name.rsplit(".", 1)[-1]
    return leaf not in NO_DECAY_NAMES and not any(n in name for n in NO_DECAY_NAMES)


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
        decay = wants_weight_decay(name, p)
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
