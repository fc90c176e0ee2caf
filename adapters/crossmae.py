"""CrossMAE (Fu et al., 2024): MAE with cross-attention decoding; encoder weights."""

from adapters.common import flat_timm
from bench.adapter import Adapter, CheckpointFormat

PRETRAIN = CheckpointFormat(
    name="pretrain",
    description="official pre-training file {'model': encoder+decoder, ...}; "
    "decoder_*, mask_token and decoder norms dropped",
    key_path=("model",),
    strip_prefixes=("module.",),
    drop=(r"^decoder", r"^mask_token$", r"^dec_"),
)

ADAPTER = Adapter(
    name="crossmae",
    description="CrossMAE pre-training (encoder weights)",
    formats=(PRETRAIN, flat_timm("timm-style encoder state dict")),
    published_sizes=("small", "base", "large"),
)
