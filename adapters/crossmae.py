"""CrossMAE (Fu et al., 2024): MAE with a cross-attention decoder; encoder weights.

Every released CrossMAE checkpoint is trained with ``--weight_fm`` (TonyLianLong/CrossMAE,
models_cross.py). Its encoder then carries ``wfm.linear.weight`` (how each decoder block
mixes the encoder's block outputs) and ``dec_norms.<i>`` (one LayerNorm per decoder block,
applied to that mix), and it has no final ``norm``: models_cross.py defines none, with or
without ``weight_fm``, and the decoder reads the unnormalised block outputs. So the
backbone's final norm is the identity for these files (``final_norm`` in the backbone
meta); block features, which protocols read without the final norm, are unaffected.

CrossMAE adds no position embedding to the class token (only ``pos_embed[:, 1:]`` to the
patches); the fixed sin-cos table's class entry is zero in its files. timm adds the whole
table, so that entry is zeroed here, which keeps the class token as CrossMAE computes it.
"""

from __future__ import annotations

import re

from torch import nn

from bench.backbones.adapter import Adapter, AdapterError, CheckpointFormat, StateDict

WFM_KEY = "wfm.linear.weight"
_DEC_NORM = re.compile(r"^dec_norms\.(\d+)\.(weight|bias)$")


def _weight_fm_encoder(state: StateDict, context: dict) -> StateDict:
    """Check and drop the weighted-feature-map module; the encoder keeps no final norm."""
    source = context.get("source", "")
    if WFM_KEY not in state:
        why = (
            "it has 'norm.weight' like an MAE pre-training file (use adapter 'mae')"
            if "norm.weight" in state
            else "without --weight_fm models_cross.py's encoder cannot run (it has no final norm)"
        )
        raise AdapterError(
            f"checkpoint {source} has no {WFM_KEY!r} under 'model': released CrossMAE "
            f"checkpoints are trained with --weight_fm and have it; {why}"
        )
    wfm = state.pop(WFM_KEY)
    if wfm.ndim != 2:
        raise AdapterError(
            f"checkpoint {source}: {WFM_KEY!r} has shape {tuple(wfm.shape)}, expected "
            "(decoder blocks, feature maps)"
        )
    # One dec_norms LayerNorm per decoder block (wfm's rows); a missing one means a broken file.
    dec_norms = {k for k in state if _DEC_NORM.match(k)}
    wanted = {f"dec_norms.{i}.{p}" for i in range(wfm.shape[0]) for p in ("weight", "bias")}
    if dec_norms != wanted:
        bad = sorted(wanted - dec_norms) or sorted(dec_norms - wanted)
        raise AdapterError(
            f"checkpoint {source}: {WFM_KEY!r} mixes features for {wfm.shape[0]} decoder "
            f"blocks but the dec_norms keys do not match: {', '.join(bad[:6])}"
        )
    for k in dec_norms:
        del state[k]
    if "pos_embed" in state:
        pos = state["pos_embed"].clone()
        pos[:, :1] = 0  # CrossMAE's class token gets no position embedding
        state["pos_embed"] = pos
    context["final_norm"] = "identity"
    context.setdefault("meta_extra", {}).update(
        final_norm="identity", weight_fm_feature_maps=int(wfm.shape[1])
    )
    return state


PRETRAIN_WFM = CheckpointFormat(
    name="pretrain-wfm",
    description="released pre-training file (trained with --weight_fm): {'model': encoder "
    "(no final norm) + wfm + dec_norms + decoder, 'optimizer', 'epoch', 'scaler', 'args'}; "
    "decoder_*, mask_token, wfm, dec_norms dropped; final norm = identity",
    key_path=("model",),
    strip_prefixes=("module.",),
    drop=(r"^decoder", r"^mask_token$"),
    convert=_weight_fm_encoder,
)


class CrossMaeAdapter(Adapter):
    def customise(self, vit: nn.Module, context: dict) -> nn.Module:
        if context.get("final_norm") == "identity":
            vit.norm = nn.Identity()
        return vit


ADAPTER = CrossMaeAdapter(
    name="crossmae",
    description="CrossMAE pre-training (encoder weights)",
    formats=(PRETRAIN_WFM,),
    published_sizes=("small", "base", "large"),
)
