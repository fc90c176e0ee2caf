"""Format building blocks shared by several adapters (timm-style key layouts)."""

from __future__ import annotations

from bench.adapter import CheckpointFormat

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
