"""Format building blocks shared by several adapters (timm-style and HF export layouts)."""

from __future__ import annotations

import re

import torch

from bench.backbones.adapter import AdapterError, CheckpointFormat, StateDict, get_adapter

# Classification heads and pooling norms that a backbone does not use.
HEAD_KEYS = (r"^head\.", r"^head_dist\.", r"^fc_norm\.")


def flat_timm(description: str, drop: tuple[str, ...] = HEAD_KEYS) -> CheckpointFormat:
    """A bare timm-style state dict (``.pth`` or ``.safetensors``)."""
    return CheckpointFormat(
        name="timm",
        description=description,
        key_path=(),
        strip_prefixes=("module.",),
        drop=drop,
    )


# Hugging Face ViT naming -> timm naming, per key. q/k/v are renamed here and fused into
# timm's single qkv projection by ``_fuse_qkv``; ``attention.output.dense`` must be
# matched before the MLP's ``output.dense``.
_LAYER = r"^encoder\.layer\.(\d+)\."
HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.distillation_token$", "reg_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (_LAYER + r"attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.\2."),
    (_LAYER + r"attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (_LAYER + r"layernorm_before\.", r"blocks.\1.norm1."),
    (_LAYER + r"layernorm_after\.", r"blocks.\1.norm2."),
    (_LAYER + r"intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (_LAYER + r"output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
)
# Poolers, classifiers, the MAE decoder and the masked-image-modelling mask token.
HF_DROP = (
    r"^pooler\.",
    r"^(cls_|distillation_)?classifier\.",
    r"^decoder\.",
    r"^embeddings\.mask_token$",
)
_QKV_RE = re.compile(r"^(blocks\.\d+\.attn)\.(query|key|value)\.(weight|bias)$")


def _check_geometry(context: dict) -> None:
    """The export's width and heads must be the requested size's, or say which size it is."""
    config = context["file_metadata"]["config"]
    adapter = get_adapter(context["adapter"])
    want = adapter.size(context["size"])
    got = (int(config["hidden_size"]), int(config["num_attention_heads"]))
    if got != (want.embed_dim, want.num_heads):
        fits = [s.name for s in adapter.sizes if (s.embed_dim, s.num_heads) == got]
        hint = f"; it is a ViT-{fits[0]} export, pass size={fits[0]!r}" if fits else ""
        raise AdapterError(
            f"Hugging Face export {context['file_metadata']['weights_file']} has hidden_size "
            f"{got[0]} and {got[1]} heads, but size {want.name!r} means {want.embed_dim} and "
            f"{want.num_heads}{hint}"
        )


def _fuse_qkv(state: StateDict) -> StateDict:
    """Concatenate HF's separate q, k, v projections into timm's ``attn.qkv``.

    timm splits qkv's output as (3, heads, head_dim), which is exactly [q; k; v] stacked.
    Blocks missing one of the three are left alone so the key check names them.
    """
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    out: StateDict = {}
    for k, v in state.items():
        m = _QKV_RE.match(k)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
        else:
            out[k] = v
    for (prefix, kind), qkv in parts.items():
        if set(qkv) == {"query", "key", "value"}:
            out[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["query"], qkv["key"], qkv["value"]])
        else:
            out.update({f"{prefix}.{name}.{kind}": t for name, t in qkv.items()})
    return out


def hf_vit(description: str, model_types: tuple[str, ...]) -> CheckpointFormat:
    """A Hugging Face export folder of one of ``model_types`` (``vit_mae``, ``vit``, ``deit``).

    Checking the model type keeps, say, a distilled-DeiT export from loading into DINO.
    """

    def convert(state: StateDict, context: dict) -> StateDict:
        meta = context["file_metadata"]
        if meta["model_type"] not in model_types:
            raise AdapterError(
                f"Hugging Face export {meta['weights_file']} is a {meta['model_type']!r} model "
                f"({', '.join(meta['architectures']) or 'no architecture named'}); adapter "
                f"{context['adapter']!r} reads {', '.join(repr(t) for t in model_types)}"
            )
        _check_geometry(context)
        return _fuse_qkv(state)

    return CheckpointFormat(
        name="hf",
        description=description,
        strip_prefixes=("vit.", "deit."),
        drop=HF_DROP,
        rename=HF_RENAMES,
        convert=convert,
        directory=True,
    )

