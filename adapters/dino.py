"""DINO (Caron et al., 2021): the teacher backbone."""

from adapters.common import flat_timm, hf_vit
from bench.backbones.adapter import Adapter, CheckpointFormat

TEACHER = CheckpointFormat(
    name="teacher",
    description="full training checkpoint {'teacher': {'backbone.*', 'head.*'}, 'student', "
    "...}; teacher backbone kept, (module.)backbone. stripped, projection head dropped",
    key_path=("teacher",),
    strip_prefixes=("module.",),
    keep_prefix=None,
    drop=(r"^head\.",),
    rename=((r"^backbone\.", ""),),
)

ADAPTER = Adapter(
    name="dino",
    description="DINO self-distillation (teacher backbone)",
    formats=(
        TEACHER,
        flat_timm("backbone-only release: flat timm-style dict"),
        hf_vit("Hugging Face export (ViTModel folder); pooler dropped", model_types=("vit",)),
    ),
    published_sizes=("small", "base"),
)
