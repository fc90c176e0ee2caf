"""Building blocks of the necks and heads: conv-BN-act modules, resizing, synchronised BN."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bench.models.resize_op import resize_bilinear


class ConvModule(nn.Sequential):
    """Conv (no bias: BN follows) + BatchNorm2d + ReLU, as mmcv's ConvModule with BN."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, padding: int = 0) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with align_corners=False (mmseg's convention); a no-op at equal size."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.device.type == "cpu" and torch.compiler.is_compiling():
        # Compiled on the CPU: ATen's kernels as one opaque operator (see resize_op).
        return resize_bilinear(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def pad_to_multiple(img: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad bottom/right so both sides are multiples of the patch size."""
    h, w = img.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph))
    return img


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], patch: int) -> torch.Tensor:
    """Logits of the patch-padded input -> the unpadded input's ``size``."""
    padded = (size[0] + (-size[0]) % patch, size[1] + (-size[1]) % patch)
    return resize(logits, padded)[..., : size[0], : size[1]]


def cross_entropy(
    logits: torch.Tensor, label: torch.Tensor, ignore_index: int, norm: str = "all_pixels"
) -> torch.Tensor:
    """Pixel-wise cross-entropy (``ignore_index`` pixels contribute 0), reduced by ``norm``.

    ``all_pixels`` is mmseg 0.x's ``CrossEntropyLoss``: the mean over every pixel of this
    process's batch, ignored ones included, so a crop that is mostly padding weighs less.
    Several processes each take their own mean and DDP averages the gradients, as in the
    release. ``labelled_pixels`` divides by the labelled pixels of the whole batch, summed
    over all processes, so that a multi-process run equals one process seeing every image.
    """
    total = F.cross_entropy(logits.float(), label, ignore_index=ignore_index, reduction="sum")
    if norm == "all_pixels":
        return total / max(label.numel(), 1)
    if norm != "labelled_pixels":
        raise ValueError(f"unknown loss normalisation {norm!r}; use all_pixels or labelled_pixels")
    count = (label != ignore_index).sum().to(total.dtype)
    world = 1
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        count = count.detach().clone()
        dist.all_reduce(count)
    return total * world / count.clamp(min=1)


class GlooSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics are summed over ranks: a synced BN for gloo/CPU.

    torch's SyncBatchNorm refuses CPU tensors (and DDP refuses CPU modules holding it).
    The statistics go through a differentiable all-reduce, so a multi-process CPU run
    normalises, and back-propagates, as one process seeing the whole batch would.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        c = input.shape[1]
        dims = [0, 2, 3]
        count = torch.full((1,), input.numel() // c, dtype=input.dtype, device=input.device)
        sums = _AllReduceSum.apply(torch.cat([input.sum(dims), count]))
        n = sums[-1]
        mean = sums[:c] / n
        centred = input - mean.view(1, c, 1, 1)
        # Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2, which
        # loses precision in float32 when the mean dwarfs the spread.
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(
                self.num_batches_tracked
            )
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        out = centred * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of every rank's incoming gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _to_gloo_sync(module: nn.Module) -> nn.Module:
    out = module
    if type(module) is nn.BatchNorm2d:
        out = GlooSyncBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )
        out.load_state_dict(module.state_dict())
        if module.affine:
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_gloo_sync(child))
    return out


def convert_sync_norm(module: nn.Module) -> nn.Module:
    """BatchNorm -> synchronised BN, only when torch.distributed runs with world size > 1.

    Single-process runs keep plain BatchNorm2d (mmseg's SyncBN crashes there). GPU
    process groups get torch's SyncBatchNorm; gloo (CPU) ones get GlooSyncBatchNorm2d.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return module
    if dist.get_backend() == "gloo":
        return _to_gloo_sync(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
