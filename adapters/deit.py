"""DeiT and DeiT III (Touvron et al.): ImageNet-1k classification checkpoints, head dropped.

A distilled DeiT keeps its distillation token (as timm's register token, which sits right
after the class token and has its own position embedding, exactly like DeiT's): the
patch tokens were trained attending to it, so dropping it would change every feature.
DeiT III's position table covers the patches only (``no_embed_class``) and its blocks
carry LayerScale (``gamma_1``/``gamma_2``).
"""

from __future__ import annotations

from adapters.common import HEAD_KEYS, hf_vit
from bench.backbones.adapter import Adapter, CheckpointFormat, StateDict

LAYER_SCALE_RENAMES = ((r"\.gamma_1$", ".ls1.gamma"), (r"\.gamma_2$", ".ls2.gamma"))
DIST_TOKEN_RENAME = ((r"^dist_token$", "reg_token"),)


def _distillation_token(state: StateDict, context: dict) -> StateDict:
    """A distilled checkpoint needs one register token in the ViT built for it."""
    if "reg_token" in state:
        context.setdefault("vit_kwargs", {})["reg_tokens"] = state["reg_token"].shape[1]
        context.setdefault("meta_extra", {})["distillation_token"] = True
    return state


def _formats(variant: str) -> tuple[CheckpointFormat, ...]:
    renames = DIST_TOKEN_RENAME + (LAYER_SCALE_RENAMES if variant == "deit3" else ())
    if variant == "deit3":
        official_notes = "; blocks.N.gamma_1/2 -> LayerScale"
        timm_notes = " (ls1/ls2.gamma; gamma_1/2 also read)"
    else:
        official_notes = timm_notes = "; distilled: dist_token kept"
    formats = (
        CheckpointFormat(
            name="official",
            # main.py's checkpoint.pth also holds a second full copy of the weights under
            # 'model_ema'; the published files and the repository's own loaders use 'model'.
            description=f"{variant} release {{'model': ...}} (main.py's checkpoint also has "
            "'optimizer', 'lr_scheduler', 'model_ema', 'scaler', 'args'; 'model' is read); "
            f"head/head_dist dropped{official_notes}",
            key_path=("model",),
            strip_prefixes=("module.",),
            drop=HEAD_KEYS,
            rename=renames,
            convert=_distillation_token,
        ),
        CheckpointFormat(
            name="timm",
            description=f"timm's {variant}_* Hub file, a flat state dict; head/head_dist "
            f"dropped{timm_notes}",
            strip_prefixes=("module.",),
            drop=HEAD_KEYS,
            rename=renames,
            convert=_distillation_token,
        ),
    )
    if variant == "deit":
        formats += (
            hf_vit(
                "Hugging Face export (ViTModel / DeiTModel / DeiTForImageClassification... "
                "folder); classifiers dropped, distillation token kept",
                model_types=("vit", "deit"),
            ),
        )
    return formats


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
    vit_kwargs={"no_embed_class": True},
)
