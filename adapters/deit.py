"""DeiT and DeiT III (Touvron et al.): ImageNet-1k classification checkpoints, head dropped."""

from __future__ import annotations

import torch

from adapters.common import HEAD_KEYS
from bench.adapter import Adapter, CheckpointFormat


def _drop_dist_token(state: dict[str, torch.Tensor], context: dict) -> dict[str, torch.Tensor]:
    """Distilled DeiT: remove the distillation token and its position embedding."""
    if "dist_token" in state:
        state = dict(state)
        del state["dist_token"]
        pe = state["pos_embed"]
        state["pos_embed"] = torch.cat([pe[:, :1], pe[:, 2:]], dim=1)
    return state


def _formats(variant: str) -> tuple[CheckpointFormat, ...]:
    renames = ((r"\.gamma_1$", ".ls1.gamma"), (r"\.gamma_2$", ".ls2.gamma"))
    return (
        CheckpointFormat(
            name="official",
            description=f"{variant} release {{'model': ...}}; head (and dist_token/head_dist) "
            "dropped" + ("; gamma_1/2 -> LayerScale" if variant == "deit3" else ""),
            key_path=("model",),
            strip_prefixes=("module.",),
            drop=HEAD_KEYS,
            rename=renames if variant == "deit3" else (),
            convert=_drop_dist_token,
        ),
        CheckpointFormat(
            name="timm",
            description="timm state dict; head dropped",
            strip_prefixes=("module.",),
            drop=HEAD_KEYS,
            rename=renames if variant == "deit3" else (),
            convert=_drop_dist_token,
        ),
    )


DEIT = Adapter(
    name="deit",
    description="DeiT supervised ImageNet-1k (classification checkpoint, head dropped)",
    formats=_formats("deit"),
    published_sizes=("tiny", "small", "base"),
)

DEIT3 = Adapter(
    name="deit3",
    description="DeiT III supervised, LayerScale (classification checkpoint, head dropped)",
    formats=_formats("deit3"),
    published_sizes=("small", "base", "large"),
    layer_scale=True,
)
