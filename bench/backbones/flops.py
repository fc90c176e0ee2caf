"""Compute cost of a backbone and of backbone + decode head, in multiply-adds (GMACs).

Counted with fvcore's ``FlopCountAnalysis`` (one multiply-add = one flop). fvcore has no
handler for ``aten::scaled_dot_product_attention`` (timm's fused attention), so one is
added here; timm's unfused path goes through ``aten::matmul``, which fvcore already counts.
Every count is reported twice: with the attention matmuls (q@k^T and attn@v; the
convention of timm's results tables) and without them (the convention of mmcv's
``get_model_complexity_info``, which the UNIP paper used and which only sees modules).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Any

import torch
from torch import nn

CONVENTION = "multiply-adds"
# Ops that, inside an attention module, are the token-token products (not projections).
ATTENTION_MATMUL_OPS = frozenset(
    {"scaled_dot_product_attention", "matmul", "bmm", "baddbmm", "einsum"}
)


def _import_fvcore() -> Any:
    # fvcore.nn scripts a loss function at import time, which torch now warns about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import fvcore.nn
        import fvcore.nn.jit_handles
    return fvcore.nn


def _shape(value: Any) -> list[int]:
    shape = _import_fvcore().jit_handles.get_shape(value)
    if shape is None:
        raise ValueError("scaled_dot_product_attention input without a static shape")
    return list(shape)


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of ``softmax(q @ k^T) @ v``: the two matmuls, nothing else.

    q: ``... x Nq x E``, k: ``... x Nk x E``, v: ``... x Nk x Ev``. Softmax, scaling and
    masking are elementwise and left out, as fvcore does for every other op.
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    rows = math.prod(q[:-1])  # batch x heads x queries
    return rows * k[-2] * q[-1] + rows * k[-2] * v[-1]


def _attention_module_names(model: nn.Module) -> list[str]:
    """Names of the outermost attention modules (timm ``Attention`` and look-alikes)."""
    names: list[str] = []
    for name, mod in model.named_modules():
        if not type(mod).__name__.endswith("Attention"):
            continue
        if any(name.startswith(n + ".") for n in names):
            continue
        names.append(name)
    return names


@dataclass(frozen=True)
class MacCount:
    """Multiply-adds of one forward pass, split into attention matmuls and the rest."""

    total: int
    attention: int
    unsupported_ops: dict[str, int]

    @property
    def without_attention(self) -> int:
        return self.total - self.attention


def count_macs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> MacCount:
    """Trace ``model(*inputs)`` once with fvcore and count multiply-adds."""
    FlopCountAnalysis = _import_fvcore().FlopCountAnalysis  # noqa: N806

    was_training = model.training
    model.eval()
    try:
        fca = FlopCountAnalysis(model, inputs)
        fca.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        fca.unsupported_ops_warnings(False)
        fca.uncalled_modules_warnings(False)
        fca.tracer_warnings("none")
        with warnings.catch_warnings(), torch.no_grad():
            # torch.jit.trace is deprecated in favour of export, but fvcore is built on it.
            warnings.simplefilter("ignore", FutureWarning)
            total = int(fca.total())
        per_module = fca.by_module_and_operator()
        attention = sum(
            int(count)
            for name in _attention_module_names(model)
            for op, count in per_module.get(name, {}).items()
            if op in ATTENTION_MATMUL_OPS
        )
        unsupported = dict(fca.unsupported_ops())
    finally:
        model.train(was_training)
    return MacCount(total=total, attention=attention, unsupported_ops=unsupported)


def count_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@dataclass
class FlopsReport:
    """What the store keeps about a model's cost; every number says how it was counted."""

    backbone_gmacs: float
    total_gmacs: float
    backbone_gmacs_no_attn: float
    total_gmacs_no_attn: float
    params_m: float
    backbone_params_m: float
    input_size: list[int]
    counter: str
    convention: str = CONVENTION
    attention_matmuls_included: bool = True  # in backbone_gmacs / total_gmacs
    neck: str | None = None
    head: str | None = None
    num_classes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def counter_name() -> str:
    return f"fvcore-{version('fvcore')} FlopCountAnalysis + sdpa handler"


def _g(n: int) -> float:
    return round(n / 1e9, 4)


def _m(n: int) -> float:
    return round(n / 1e6, 4)


def backbone_flops(backbone: nn.Module, img_size: int | Sequence[int]) -> tuple[MacCount, int]:
    """Cost of ``backbone`` on an ``img_size`` image, padded to its patch size as the
    segmentors pad it (a 512 crop is 518 px for a patch-14 ViT)."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    p = int(getattr(backbone, "patch_size", 1))
    x = torch.zeros(1, 3, -(-int(h) // p) * p, -(-int(w) // p) * p)
    return count_macs(backbone, (x,)), count_params(backbone)


# Classes of the decode head when none are named: SODA's 21 (the last conv barely counts).
DEFAULT_NUM_CLASSES = 21


def model_flops(
    adapter: str,
    size: str,
    img_size: int | Sequence[int] = 224,
    *,
    neck: str | None = None,
    head: str | None = None,
    num_classes: int | None = None,
    options: dict | None = None,
    decode_head: bool = True,
    protocol: str | None = None,
) -> FlopsReport:
    """Cost of ``adapter``'s ViT of ``size`` at ``img_size``, alone and with its decode path.

    The total is the model ``protocol`` evaluates (default: the first declared protocol,
    the paper's fine-tuning: backbone + neck + decode head, with the adapter's defaults,
    e.g. LL-FPN for UNIP, reading the size's blocks); ``neck``/``head`` replace the
    protocol's settings of those names. Training-only parts (the auxiliary head) are left
    out, as in the paper. ``decode_head=False`` counts the backbone alone (total =
    backbone). Either way the backbone is the one the protocol evaluates (fine-tuning:
    with the adapter's default LayerScale and relative position bias; their parameters
    count, their elementwise work does not). Weights do not change a count, so no
    checkpoint is read.
    """
    from bench.backbones.adapter import downstream_options, load_backbone
    from bench.protocols.config import resolve_settings
    from bench.protocols.registry import get_protocol, ordered_protocols

    declared = get_protocol(protocol) if protocol else ordered_protocols()[0]
    hw = [img_size, img_size] if isinstance(img_size, int) else [int(s) for s in img_size]
    backbone = load_backbone(adapter, size, None, img_size=hw,
                             **downstream_options(adapter, options))
    overrides: dict[str, Any] = {"crop_size": max(hw)}
    for key, value in (("neck", neck), ("head", head)):
        if value is not None:
            if key not in declared.settings.model_fields:
                raise ValueError(f"protocol {declared.name} has no {key} setting; drop --{key}")
            overrides[key] = value
    # The schedule does not enter a count: give one, so that any dataset name would do.
    fields = declared.settings.model_fields
    overrides.update({k: v for k, v in (("iters", 1), ("warmup_iters", 0)) if k in fields})
    settings = resolve_settings(declared.name, "", adapter, size, overrides)
    num_classes = num_classes or DEFAULT_NUM_CLASSES
    path = _evaluated_model(declared.name, settings, backbone, num_classes)
    bb, bb_params = backbone_flops(backbone, hw)
    total, total_params = bb, bb_params
    if decode_head:
        total = count_macs(path, (torch.zeros(1, 3, *hw),))
        total_params = count_params(path)
        neck, head = getattr(settings, "neck", None), getattr(settings, "head", None)
    else:
        neck = head = num_classes = None
    return FlopsReport(
        backbone_gmacs=_g(bb.total),
        total_gmacs=_g(total.total),
        backbone_gmacs_no_attn=_g(bb.without_attention),
        total_gmacs_no_attn=_g(total.without_attention),
        params_m=_m(total_params),
        backbone_params_m=_m(bb_params),
        input_size=hw,
        counter=counter_name(),
        neck=neck,
        head=head,
        num_classes=num_classes,
    )


def _evaluated_model(protocol: str, settings: Any, backbone: nn.Module, num_classes: int):
    """The module whose forward a run of ``protocol`` evaluates, minus training-only parts,
    as the protocol declares it (``evaluated_model``). It may change ``backbone`` in place
    (fine-tuning adds LayerScale), so the backbone is counted after it is built."""
    from bench.protocols.registry import get_protocol

    declared = get_protocol(protocol)
    build = declared.model_fn()
    if build is None:
        raise ValueError(
            f"protocol {declared.name!r} declares no evaluated_model, so its FLOPs cannot "
            "be counted; declare one (settings, backbone, num_classes -> module)"
        )
    return build(settings, backbone, num_classes)


def protocol_flops(
    protocol: str,
    settings: Any,
    adapter: str,
    size: str,
    num_classes: int,
    options: dict | None = None,
    checkpoint: str | None = None,
) -> FlopsReport:
    """Cost of the model a protocol run evaluates, at the settings' crop size.

    The model is the protocol's declared ``evaluated_model`` (fine-tuning: backbone with
    the settings' LayerScale and relative position bias + neck + decode head, no
    auxiliary head; probes: backbone + their 1x1 heads). The checkpoint is loaded
    because it can fix the geometry (a UNIP student's depth and last-block heads come
    from its metadata); its values do not change a count.
    """
    from bench.backbones.adapter import downstream_options, load_backbone
    from bench.protocols.registry import get_protocol

    protocol = get_protocol(protocol).name  # an unknown name fails before any loading
    hw = [settings.crop_size, settings.crop_size]
    opts = downstream_options(adapter, options)
    backbone = load_backbone(adapter, size, checkpoint, img_size=hw, **opts)
    model = _evaluated_model(protocol, settings, backbone, num_classes)
    bb, bb_params = backbone_flops(backbone, hw)
    total = count_macs(model, (torch.zeros(1, 3, *hw),))
    return FlopsReport(
        backbone_gmacs=_g(bb.total),
        total_gmacs=_g(total.total),
        backbone_gmacs_no_attn=_g(bb.without_attention),
        total_gmacs_no_attn=_g(total.without_attention),
        params_m=_m(count_params(model)),
        backbone_params_m=_m(bb_params),
        input_size=hw,
        counter=counter_name(),
        neck=getattr(settings, "neck", None),
        head=getattr(settings, "head", None),
        num_classes=num_classes,
    )
