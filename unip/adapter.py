"""UNIP (NMI-HAD distilled students): ViT-T/S/B whose last block has the teacher's heads.

``head_split`` says how the last block's attention is split into heads:

- ``distilled`` (the default of ``load_backbone``; attention analysis, distillation): the
  teacher layer's head count, as in pre-training. It cannot be read off the weights (qkv
  has the same shape for any head count), so it comes from the metadata the trainer saves
  (``{'model': ..., 'unip': {'last_heads': H, ...}}``) or from ``last_heads=`` for released
  files without it; when neither says it, loading fails.
- ``uniform`` (what the evaluation protocols use, through ``downstream_options``): the
  size's own head count in every block, as the released fine-tuning and linear-probing
  configs build UNIP-T/S/B; ``last_heads`` appears nowhere downstream in the release.
"""

from __future__ import annotations

from typing import Any

from timm.models.vision_transformer import Attention
from torch import nn

from adapters.common import flat_timm
from bench.backbones.adapter import (
    VIT_BASE,
    VIT_SMALL,
    VIT_TINY,
    Adapter,
    AdapterError,
    CheckpointFormat,
)
from bench.backbones.backbone import INFRARED_MEAN, INFRARED_STD

UNIP_META_KEY = "unip"


def _metadata_heads(raw: Any) -> int | None:
    if isinstance(raw, dict):
        meta = raw.get(UNIP_META_KEY)
        if isinstance(meta, dict) and meta.get("last_heads") is not None:
            return int(meta["last_heads"])
    return None


def replace_last_attention(vit: nn.Module, heads: int) -> nn.Module:
    """Give the last block ``heads`` attention heads (same width, new head split)."""
    blk = vit.blocks[-1]
    old = blk.attn
    dim = old.qkv.in_features
    if dim % heads:
        raise AdapterError(f"embed dim {dim} is not divisible by last_heads={heads}")
    if old.num_heads == heads:
        return vit
    blk.attn = Attention(
        dim,
        num_heads=heads,
        qkv_bias=old.qkv.bias is not None,
        qk_norm=not isinstance(old.q_norm, nn.Identity),
    )
    return vit


def _positive_heads(value: Any) -> int:
    """``last_heads`` as given (``--option last_heads=16`` passes a string) or an error."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    if not isinstance(text, int) or isinstance(text, bool) or text <= 0:
        raise AdapterError(f"last_heads={value!r} is not a positive whole number of heads")
    return text


HEAD_SPLITS = ("distilled", "uniform")


def _head_split(value: Any) -> str:
    if value not in HEAD_SPLITS:
        raise AdapterError(
            f"head_split={value!r} is not one of {', '.join(HEAD_SPLITS)} (distilled: the "
            "teacher's heads in the last block, as pre-trained; uniform: the size's heads in "
            "every block, as the released downstream configs)"
        )
    return str(value)


class UnipAdapter(Adapter):
    def customise(self, vit: nn.Module, context: dict) -> nn.Module:
        given = context.get("last_heads")
        stored = _metadata_heads(context.get("raw"))
        split = _head_split(context.get("head_split", "distilled"))
        extra = context.setdefault("meta_extra", {})
        extra["head_split"] = split
        if split == "uniform":
            if given is not None:
                raise AdapterError(
                    f"last_heads={given} was given with head_split='uniform' (the evaluation "
                    "protocols' default for UNIP, as in the released downstream configs, "
                    "where every block has the size's heads): drop last_heads, or set "
                    "head_split: distilled to keep the pre-training split"
                )
            if stored is not None:
                extra["distilled_last_heads"] = stored
            return vit
        if given is not None and stored is not None and _positive_heads(given) != stored:
            raise AdapterError(
                f"last_heads={given} contradicts the metadata of {context.get('source', '')} "
                f"({UNIP_META_KEY}.last_heads={stored})"
            )
        heads = _positive_heads(given) if given is not None else stored
        if heads is None and "raw" in context:
            raise AdapterError(
                f"UNIP checkpoint {context.get('source', '')} has no 'unip.last_heads' "
                "metadata and no last_heads= was "
                "given: the last block's head count (the teacher layer's, e.g. 16 for a "
                "ViT-L teacher) cannot be inferred from the weights. Pass last_heads=H."
            )
        if heads is not None:
            vit = replace_last_attention(vit, int(heads))
            context.setdefault("meta_extra", {})["last_heads"] = int(heads)
        return vit


def _geometry_from_metadata(state: dict, context: dict) -> dict:
    """The trainer records the student's depth; build that many blocks (shallow students)."""
    meta = (context.get("raw") or {}).get(UNIP_META_KEY)
    if isinstance(meta, dict) and meta.get("depth") is not None:
        context.setdefault("vit_kwargs", {})["depth"] = int(meta["depth"])
    return state


TRAINER = CheckpointFormat(
    name="unip",
    description="UNIP pre-training output {'model': prefix-free student, ...}: the "
    "release's save_model (needs last_heads=), or unipbench distill's, whose 'unip' "
    "metadata holds last_heads",
    key_path=("model",),
    strip_prefixes=("module.", "student."),
    convert=_geometry_from_metadata,
)


def _wrapped(key: str, description: str) -> CheckpointFormat:
    """The other wrappers the release's segmentation loader accepts.

    UNIP_segmentation/mmcv_custom/checkpoint.py load_checkpoint reads
    ``checkpoint['state_dict']``, else ``['model']``, else ``['module']`` (DeepSpeed's
    model states, what save_model writes without a loss scaler), else the file itself,
    and strips a ``module.`` prefix.
    """
    return CheckpointFormat(
        name=key,
        description=description,
        key_path=(key,),
        strip_prefixes=("module.",),
        convert=_geometry_from_metadata,
    )


ADAPTER = UnipAdapter(
    name="unip",
    description="UNIP: NMI-HAD distilled student (last block with the teacher's heads)",
    # The release loader's order of precedence: 'state_dict', 'model', 'module', flat.
    formats=(
        _wrapped("state_dict", "{'state_dict': student} (needs last_heads=)"),
        TRAINER,
        _wrapped("module", "DeepSpeed model states {'module': student, ...} (needs last_heads=)"),
        flat_timm("flat student state dict (needs last_heads=)"),
    ),
    extra_options=("last_heads", "head_split"),
    downstream_options={"head_split": "uniform"},
    # The release fine-tunes students with layer decay 0.85, the LL-FPN neck and no
    # relative position bias (its train_scripts pass use_rel_pos_bias=False).
    protocol_defaults={
        "fine_tune": {"layer_decay": 0.85, "neck": "llfpn", "rel_pos_bias": False},
    },
    # Students are ViT-T/S/B (a ViT-L teacher's attention distilled into a smaller ViT).
    sizes=(VIT_TINY, VIT_SMALL, VIT_BASE),
    published_sizes=("tiny", "small", "base"),
    # Students are distilled on infrared-normalised images (InfMix), not ImageNet ones.
    mean=INFRARED_MEAN,
    std=INFRARED_STD,
)
