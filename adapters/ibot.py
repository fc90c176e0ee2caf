"""iBOT (Zhou et al., 2022): the teacher backbone.

The release offers each model as a full training checkpoint and as a backbone file
(``checkpoint_teacher.pth``; ``checkpoint_student.pth`` for the ImageNet-22k models),
which the repository's ``extract_backbone_weights.py`` writes as
``{'state_dict': {backbone keys, 'backbone.' / 'module.backbone.' removed}}``.
"""

from adapters.common import flat_timm
from bench.backbones.adapter import Adapter, CheckpointFormat

# Only the student is built with masked image modelling, so only its backbone (and a
# file extracted from it) carries ``masked_embed``; heads come along with --with_head.
NOT_BACKBONE = (r"^head\.", r"masked_embed$")

TEACHER = CheckpointFormat(
    name="teacher",
    description="full training checkpoint {'teacher': {'backbone.*', 'head.*'}, ...}; "
    "teacher backbone kept, masked_embed and projection head dropped",
    key_path=("teacher",),
    strip_prefixes=("module.",),
    drop=NOT_BACKBONE,
    rename=((r"^backbone\.", ""),),
)

BACKBONE = CheckpointFormat(
    name="backbone",
    description="released backbone (checkpoint_teacher.pth / checkpoint_student.pth) "
    "{'state_dict': backbone}, as extract_backbone_weights.py writes it; masked_embed "
    "and head keys dropped",
    key_path=("state_dict",),
    strip_prefixes=("module.",),
    drop=NOT_BACKBONE,
)

ADAPTER = Adapter(
    name="ibot",
    description="iBOT masked self-distillation (teacher backbone)",
    formats=(
        TEACHER,
        BACKBONE,
        flat_timm("flat backbone dict (the fine-tuning code's extractor)", drop=NOT_BACKBONE),
    ),
    published_sizes=("small", "base", "large"),
)
