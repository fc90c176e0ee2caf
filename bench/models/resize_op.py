"""Bilinear resizing as one opaque operator in compiled graphs on the CPU.

Traced by ``torch.compile``, ``F.interpolate(mode="bilinear")`` is decomposed into index
arithmetic, and autograd then derives its backward from that decomposition: a
scatter-add (``_unsafe_index_put``) that inductor fuses with the neighbouring batch norms
and softmax into the largest kernels of a compiled segmentation step on the CPU, slower
than ATen's own upsampling kernels by more than the fusion saves. Wrapped as a custom
operator, the resize and its gradient stay ATen's ``upsample_bilinear2d`` and
``upsample_bilinear2d_backward`` kernels, the same ones an eager step runs, so the
compiled step computes exactly what the eager one does there.

Only compiled graphs use it (:func:`bench.models.layers.resize`); eager code, FLOP
counting and ``torch.jit`` tracing see the plain ``F.interpolate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

OP_NAMESPACE = "unipbench"


def _empty_like_layout(ref: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """An empty (N, C, H, W) tensor in ``ref``'s memory format (what ATen's kernels return)."""
    fmt = suggest_memory_format(ref)
    return ref.new_empty(tuple(shape)).contiguous(memory_format=fmt)


@torch.library.custom_op(f"{OP_NAMESPACE}::resize_bilinear", mutates_args=())
def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` of an NCHW map."""
    out = F.interpolate(x, size=list(size), mode="bilinear", align_corners=False)
    return out.contiguous(memory_format=suggest_memory_format(x))


@resize_bilinear.register_fake
def _resize_bilinear_fake(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return _empty_like_layout(x, (*x.shape[:2], *size))


@torch.library.custom_op(f"{OP_NAMESPACE}::resize_bilinear_backward", mutates_args=())
def resize_bilinear_backward(grad: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    """The gradient of :func:`resize_bilinear` with respect to its input (ATen's kernel)."""
    out = torch.ops.aten.upsample_bilinear2d_backward(
        grad, list(grad.shape[-2:]), list(input_size), False
    )
    return out.contiguous(memory_format=suggest_memory_format(grad))


@resize_bilinear_backward.register_fake
def _resize_bilinear_backward_fake(grad: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    return _empty_like_layout(grad, input_size)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 (torch.library's signature)
    x, _ = inputs
    ctx.input_size = tuple(x.shape)


def _backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN202
    return resize_bilinear_backward(grad, ctx.input_size), None


resize_bilinear.register_autograd(_backward, setup_context=_setup_context)
