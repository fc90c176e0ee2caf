"""MAE (He et al., 2022): the encoder of the pre-training checkpoint."""

from adapters.common import flat_timm, hf_vit
from bench.backbones.adapter import Adapter, CheckpointFormat

PRETRAIN = CheckpointFormat(
    name="pretrain",
    description="pre-training file {'model': ...}: as main_pretrain.py's save_model writes it "
    "(encoder+decoder, 'optimizer', 'epoch', 'scaler', 'args') or as published "
    "(mae_pretrain_vit_*.pth: the encoder only); decoder_*, mask_token dropped",
    key_path=("model",),
    strip_prefixes=("module.",),
    drop=(r"^decoder", r"^mask_token$"),
)

ADAPTER = Adapter(
    name="mae",
    description="Masked autoencoder pre-training (encoder weights)",
    formats=(
        PRETRAIN,
        flat_timm("timm's vit_*_patch16_224.mae (flat encoder state dict, no head); "
                  "head/fc_norm dropped"),
        hf_vit(
            "Hugging Face export (ViTMAEModel / ViTMAEForPreTraining folder); decoder dropped",
            model_types=("vit_mae",),
        ),
    ),
    published_sizes=("tiny", "small", "base", "large"),
)
