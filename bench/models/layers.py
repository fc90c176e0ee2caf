"""Building blocks of the necks and heads: conv-BN-act modules, resizing, synchronised BN."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


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


class _GlooSyncBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm that also works on CPU tensors (torch's raises on non-GPU input).

    Batch statistics are summed over ranks with a differentiable all-reduce, so a
    multi-process CPU run normalises with the same statistics as one process seeing the
    whole batch, and its gradients match too.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or not (self.training and dist.is_initialized()):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        c = input.shape[1]
        dims = [0, *range(2, input.ndim)]
        count = torch.tensor(
            [input.numel() // c], dtype=input.dtype, device=input.device
        )
        stats = torch.cat([input.sum(dims), (input * input).sum(dims), count])
        stats = all_reduce(stats, group=self.process_group or dist.group.WORLD)
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(
                self.num_batches_tracked
            )
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        shape = [1, c] + [1] * (input.ndim - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def _swap_bn(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, nn.SyncBatchNorm
    ):
        out = _GlooSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _swap_bn(child))
    return out


def convert_sync_norm(module: nn.Module) -> nn.Module:
    """BatchNorm -> synchronised BN, only when torch.distributed runs with world size > 1.

    Single-process runs keep plain BatchNorm2d (mmseg's SyncBN crashes there).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return module
    return _swap_bn(module)
