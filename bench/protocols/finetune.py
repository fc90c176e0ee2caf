"""Fine-tuning: backbone + neck + UPerNet (+ auxiliary FCN), AdamW with layer-wise lr decay."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from bench.backbones.backbone import Backbone
from bench.models.segmentor import Segmentor, build_segmentor
from bench.models.vit_extras import add_finetune_extras
from bench.protocols.config import FineTuneSettings
from bench.protocols.context import RunContext
from bench.protocols.engine import Trainer, build_scheduler
from bench.protocols.optim import build_adamw, param_groups


def finetune_backbone(backbone: Backbone, s: FineTuneSettings) -> Backbone:
    """The loaded backbone as the released pipeline fine-tunes it: LayerScale and, where
    the settings ask, the relative position bias over the training crop's patch grid."""
    side = math.ceil(s.crop_size / backbone.patch_size)  # crops are padded to the patch
    add_finetune_extras(backbone, s.layer_scale_init, s.rel_pos_bias, (side, side))
    return backbone


def build_model(backbone: Backbone, num_classes: int, s: FineTuneSettings,
                ignore_index: int = 255) -> Segmentor:
    """The segmentor of the settings; head_* and aux_* settings are UPerNet's and FCN's.

    The backbone is given the fine-tuning extras first (:func:`finetune_backbone`)."""
    finetune_backbone(backbone, s)
    return build_segmentor(
        backbone,
        num_classes,
        neck=s.neck,
        head=s.head,
        neck_kwargs={"layers": list(s.layers)},
        head_kwargs={
            "channels": s.head_channels or backbone.embed_dim,
            "pool_scales": tuple(s.pool_scales),
            "dropout": s.head_dropout,
        },
        aux_head=s.aux_head,
        aux_kwargs={
            "channels": s.aux_channels,
            "num_convs": s.aux_num_convs,
            "in_index": s.aux_in_index,
            "dropout": s.aux_dropout,
        },
        aux_loss_weight=s.aux_loss_weight,
        ignore_index=ignore_index,
        loss_norm=s.loss_norm,
    )


def optimizer_groups(model: Segmentor, s: FineTuneSettings) -> list[dict]:
    """Layer ids from the backbone (embeddings 0, block i -> i+1); neck and heads get
    depth+1, i.e. multiplier 1."""
    bb = model.backbone
    return param_groups(
        model.named_parameters(),
        lr=s.lr,
        weight_decay=s.weight_decay,
        layer_decay=s.layer_decay,
        layer_id=lambda name: bb.layer_id(name) if name.startswith("backbone.") else bb.depth + 1,
        num_layers=bb.depth,
        decay_rule=s.weight_decay_rule,
    )


def run(ctx: RunContext) -> dict[str, Any]:
    s = ctx.settings
    assert isinstance(s, FineTuneSettings)
    acc = ctx.accelerator
    model = build_model(ctx.backbone, ctx.info.num_classes, s, ctx.info.ignore_index)
    optimizer = build_adamw(optimizer_groups(model, s), lr=s.lr, betas=s.betas)
    scheduler = build_scheduler(optimizer, s)
    model = model.to(acc.device)
    prepared, optimizer = acc.prepare(model, optimizer)
    eval_set = ctx.eval_set()
    inner: nn.Module = acc.unwrap_model(prepared)

    def evaluate() -> list[dict]:
        inner.eval()
        return ctx.evaluate(inner, eval_set, num_heads=1)

    trainer = Trainer(
        acc, prepared, optimizer, scheduler, inner, ctx.train_stream(ctx.train_set()),
        evaluate, s, ctx.checkpointer(), num_heads=1, progress=ctx.progress,
        description=f"fine-tune {ctx.dataset['name']}", primary=ctx.primary,
    )
    return trainer.run().result()



def evaluated_model(s: FineTuneSettings, backbone: Backbone, num_classes: int) -> nn.Module:
    """What a fine-tuning run evaluates: the fine-tuning backbone + neck + decode head."""
    finetune_backbone(backbone, s)
    return build_model(backbone, num_classes, s.model_copy(update={"aux_head": None}))
