"""Bilinear upsampling of logits as two small matrix products: the sweep's fast loss path.

Upsampling patch logits (h x w) to the crop (H x W) with ``align_corners=False`` is
separable: ``out = A_h @ x @ A_w.T``, with A's rows the interpolation weights torch's
``upsample_bilinear2d`` uses (source index ``(i + 0.5) * in / out - 0.5``, clamped at 0).
The products give the same numbers to float rounding, and back-propagate through two
matrix products instead of the interpolation's scatter, which on CPU is most of a linear
head's cost. Heads trained together use it, one head alone keeps ``F.interpolate``.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=64)
def bilinear_matrix(out_size: int, in_size: int, rows: int, device: str) -> torch.Tensor:
    """The first ``rows`` rows of the (out_size x in_size) bilinear interpolation matrix."""
    scale = in_size / out_size
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = src - i0
    a = torch.zeros(out_size, in_size, dtype=torch.float64)
    idx = torch.arange(out_size)
    a.index_put_((idx, i0), 1 - w1, accumulate=True)
    a.index_put_((idx, i1), w1, accumulate=True)
    return a[:rows].to(torch.float32).to(device)


def upsample_logits_matmul(
    logits: torch.Tensor, size: tuple[int, int], patch: int
) -> torch.Tensor:
    """As :func:`bench.models.layers.upsample_logits`: the patch-padded input's logits,
    upsampled and cropped to ``size`` (N x K x H x W), by matrix products."""
    h, w = logits.shape[-2:]
    padded = (size[0] + (-size[0]) % patch, size[1] + (-size[1]) % patch)
    dev = str(logits.device)
    a_h = bilinear_matrix(padded[0], h, size[0], dev)
    a_w = bilinear_matrix(padded[1], w, size[1], dev)
    # In fp32 and rounded once to the logits' type, as upsample_bilinear2d computes a
    # half-precision input; autocast would round after each of the two products.
    with torch.autocast(device_type=logits.device.type, enabled=False):
        out = torch.matmul(a_h, torch.matmul(logits.float(), a_w.t()))
    return out.to(logits.dtype)
