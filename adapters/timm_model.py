"""Any timm ViT-family model (VisionTransformer and its DINOv2 / register variants, Eva and
EVA-02) with a timm-format checkpoint.

The size *is* the timm model name, pretrained tag included where it matters for the
normalisation (``eva02_tiny_patch14_224.mim_in22k``): it fixes the architecture, and the
sizes this adapter answers to are whatever timm registers, with no table to edit here.

.. code-block:: yaml

    models:
      - adapter: timm
        name: EVA-02
        size: eva02_tiny_patch14_224.mim_in22k
        checkpoint: /data/ckpt/eva02_tiny_mim_in22k.safetensors

The geometry (width, depth, heads, patch size) is read off the model timm builds; tables
print the size word of the name (``tiny`` -> ``T``, ``giant`` -> ``g``). Checkpoints are
the files timm writes or publishes (a flat state dict, ``.pth`` or ``.safetensors``; a
``{'state_dict' | 'model': ...}`` wrapper is read too), passed through the architecture's
own ``checkpoint_filter_fn`` (what ``timm.create_model(pretrained=True)`` does: original
EVA / DINOv2 / CLIP layouts renamed, position tables resampled to the model's grid), and
then checked key by key. Mean and std are the pretrained config's.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any

import torch
from torch import nn

from bench.backbones.adapter import Adapter, AdapterError, CheckpointFormat, SizeSpec, StateDict
from bench.registry import did_you_mean

# Size words in timm model names and the letters tables print for them.
_SIZE_WORDS = {
    "tiny": "T",
    "small": "S",
    "medium": "M",
    "base": "B",
    "large": "L",
    "huge": "H",
    "giant": "g",
    "gigantic": "G",
}


def _architecture(name: str) -> str:
    """``eva02_tiny_patch14_224.mim_in22k`` -> ``eva02_tiny_patch14_224``."""
    return name.split(".", 1)[0]


def _letter(name: str) -> str:
    words = re.split(r"[_.\-]", _architecture(name))
    for w in words:
        if w in _SIZE_WORDS:
            return _SIZE_WORDS[w]
    return name


def _vit_family() -> tuple[type, ...]:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    return (VisionTransformer, Eva)


@functools.lru_cache(maxsize=64)
def _meta_model(name: str) -> nn.Module:
    """timm's model for ``name`` with no memory behind its weights (geometry only)."""
    import timm

    arch = _architecture(name)
    if not timm.is_model(arch):
        raise AdapterError(
            f"adapter 'timm': {name!r} is not a timm model name (e.g. "
            "eva02_tiny_patch14_224.mim_in22k, vit_small_patch14_dinov2.lvd142m)."
            + did_you_mean(arch, timm.list_models())
        )
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    if not isinstance(model, _vit_family()):
        raise AdapterError(
            f"adapter 'timm': {name!r} builds a {type(model).__name__}, not a ViT-family "
            "model (timm VisionTransformer or Eva); its features cannot be read as ViT blocks"
        )
    return model


def timm_size(name: str) -> SizeSpec:
    """The SizeSpec of timm model ``name``, read off the model timm builds (no weights)."""
    model = _meta_model(name)
    return SizeSpec(
        name=name,
        letter=_letter(name),
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=int(model.blocks[0].attn.num_heads),
        patch_size=int(model.patch_embed.patch_size[0]),
    )


def _filter_fn(model: nn.Module) -> Any:
    """The architecture module's ``checkpoint_filter_fn`` (timm's convention), if any."""
    return getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)


def _timm_filter(state: StateDict, context: dict) -> StateDict:
    """What ``create_model(pretrained=True)`` does to a file: the architecture's filter,
    applied against the model being loaded (its grid; built without memory, only its
    shapes are read), then the classifier dropped (the backbone is built without one)."""
    from bench.backbones.adapter import get_adapter

    adapter = get_adapter(context["adapter"])
    options = {k: context[k] for k in ("depth", "patch_size") if context.get(k) is not None}
    with torch.device("meta"):
        model = adapter.build_vit(
            context["size"], context.get("img_size", 224), weight_init="skip", **options
        )
    pos = state.get("pos_embed")
    if isinstance(pos, torch.Tensor) and pos.ndim == 3:
        # The filter resamples the table to the model's grid: record the file's own first.
        n_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        side = int(round((pos.shape[1] - n_prefix) ** 0.5))
        context["pretrain_img_size"] = side * int(model.patch_embed.patch_size[0])
    fn = _filter_fn(model)
    out = dict(fn(dict(state), model)) if fn is not None else dict(state)
    return {k: v for k, v in out.items() if not k.startswith("head.")}


TIMM_FILE = CheckpointFormat(
    name="timm",
    description="a timm-format state dict (.pth / .safetensors, flat or under 'state_dict' "
    "/ 'model'), passed through the architecture's checkpoint_filter_fn; head dropped",
    strip_prefixes=("module.",),
    convert=_timm_filter,
)


class TimmAdapter(Adapter):
    """Sizes are timm model names; the model is whatever timm builds for the name."""

    def size(self, size: str) -> SizeSpec:
        return timm_size(str(size).strip())

    def canonical_size(self, size: str) -> str:
        return self.size(size).name

    def size_for_width(self, embed_dim: int) -> SizeSpec | None:
        return None  # every timm model is a size: no hint to give

    def normalisation(self, size: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.size(size).name)
        if cfg is None or cfg.mean is None or cfg.std is None:
            return self.mean, self.std
        return tuple(float(m) for m in cfg.mean), tuple(float(s) for s in cfg.std)

    def build_vit(
        self,
        size: str,
        img_size: int | tuple[int, int] = 224,
        drop_path_rate: float = 0.0,
        depth: int | None = None,
        **overrides: Any,
    ) -> nn.Module:
        import timm

        spec = self.size(size)
        kwargs: dict[str, Any] = dict(
            pretrained=False,
            num_classes=0,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            dynamic_img_size=True,
        )
        if depth is not None:
            kwargs["depth"] = int(depth)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        if kwargs.get("weight_init") == "skip" and not _takes_weight_init(spec.name):
            del kwargs["weight_init"]  # Eva initialises in its constructor, always
        return timm.create_model(spec.name, **kwargs)


def _takes_weight_init(name: str) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(_meta_model(name), VisionTransformer)


ADAPTER = TimmAdapter(
    name="timm",
    description="any timm ViT-family model (size = the timm model name, e.g. "
    "eva02_tiny_patch14_224.mim_in22k) with a timm-format checkpoint",
    formats=(TIMM_FILE,),
    sizes=(),
    published_sizes=(),
)
