"""iBOT (Zhou et al., 2022): the teacher backbone."""

from adapters.common import flat_timm
from bench.adapter import Adapter, CheckpointFormat

TEACHER = CheckpointFormat(
    name="teacher",
    description="full training checkpoint {'teacher': {'backbone.*', 'head.*'}, ...}; "
    "teacher backbone kept, masked_embed and projection head dropped",
    key_path=("teacher",),
    strip_prefixes=("module.",),
    drop=(r"^head\.", r"masked_embed$"),
    rename=((r"^backbone\.", ""),),
)

ADAPTER = Adapter(
    name="ibot",
    description="iBOT masked self-distillation (teacher backbone)",
    formats=(
        TEACHER,
        flat_timm(
            "backbone-only release: flat timm-style dict", drop=(r"^head\.", r"masked_embed$")
        ),
    ),
    published_sizes=("small", "base", "large"),
)
