"""Normalised mutual information between queries and keys of softmax attention maps.

NMI near 1: every query attends its own neighbourhood (local pattern); near 0: all queries
attend the same keys (global pattern, attention collapse). Definition of Park et al.
(ICLR 2023) as used by UNIP: uniform queries, keys distributed as the mean attention row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

# NMI-HAD's target: the most hybrid layer is the one closest to it (stable for 0.06-0.12).
NMI_TARGET = 0.09
# Pattern bounds on a layer's mean NMI (see unip.analysis): they bracket that stable range.
LOCAL_THRESHOLD = 0.15
GLOBAL_THRESHOLD = 0.05


def attention_nmi(attn: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """NMI of every (image, head) of a ``B x H x N x N`` softmax attention map -> ``B x H``.

    Prefix tokens (CLS, registers) are dropped as queries and keys and the remaining rows
    renormalised. ``p(q) = 1/N``, ``p(k) = mean_q A[q, k]``,
    ``I = sum_q,k p(q) A log(A / p(k))`` and ``NMI = I / sqrt(H(Q) H(K))``.
    Computed in float32 (float64 input stays float64) whatever the input precision.
    A row with no mass left after dropping the prefix (all attention on CLS, or fp16
    underflow) is taken as uniform: it says nothing about locality.
    """
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"expected B x heads x N x N attention, got shape {tuple(attn.shape)}")
    if not 0 <= num_prefix_tokens < attn.shape[-1]:
        raise ValueError(
            f"num_prefix_tokens={num_prefix_tokens} leaves no patch tokens of {attn.shape[-1]}"
        )
    dtype = torch.float64 if attn.dtype == torch.float64 else torch.float32
    tiny = torch.finfo(dtype).tiny
    k = num_prefix_tokens
    a = attn[..., k:, k:]
    n = a.shape[-1]
    # Renormalising folds the cast to float32 into one pass (half / float -> float).
    mass = a.sum(-1, keepdim=True, dtype=dtype)
    a = a / mass.clamp_min(tiny)
    empty = (mass <= 0).sum((-2, -1)).to(dtype)  # rows taken as uniform, added analytically
    p_k = (a.sum(-2) + empty[..., None] / n) / n  # B x H x N
    # sum_q,k p(q) A log A, with 0 log 0 = 0 via the clamp (xlogy is far slower on CPU).
    neg_cond_entropy = (a * a.clamp_min(tiny).log()).sum((-2, -1)) / n - empty * math.log(n) / n
    h_k = -(p_k * p_k.clamp_min(tiny).log()).sum(-1)
    mi = h_k + neg_cond_entropy
    denom = torch.sqrt(h_k * math.log(n))
    # One patch token, or every query on one key: no information to normalise; call it 0.
    nmi = torch.where(denom > 0, mi / denom.clamp_min(tiny), 0.0)
    return nmi.clamp(0.0, 1.0)


@dataclass(frozen=True)
class LayerNMI:
    """NMI of one layer over images and heads."""

    layer: int  # 1-based block index
    mean: float
    std: float  # over every (image, head) value
    head_std: float  # spread between heads (of the per-head image means)
    image_std: float  # spread between images (of the per-image head means)
    min: float
    max: float
    per_head: list[float]
    num_images: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarise_layer(layer: int, values: torch.Tensor) -> LayerNMI:
    """Aggregate a layer's ``images x heads`` NMI values into a :class:`LayerNMI`."""
    if values.ndim != 2 or values.numel() == 0:
        raise ValueError(f"expected a non-empty images x heads tensor, got {tuple(values.shape)}")
    v = values.double()

    def _std(t: torch.Tensor) -> float:
        return float(t.std(unbiased=False)) if t.numel() > 1 else 0.0

    per_head = v.mean(0)
    return LayerNMI(
        layer=layer,
        mean=float(v.mean()),
        std=_std(v.flatten()),
        head_std=_std(per_head),
        image_std=_std(v.mean(1)),
        min=float(v.min()),
        max=float(v.max()),
        per_head=[float(x) for x in per_head],
        num_images=int(v.shape[0]),
    )
