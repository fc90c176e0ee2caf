"""Bilinear upsampling by matrix products against torch's own F.interpolate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.models.layers import upsample_logits
from bench.models.matmul_upsample import bilinear_matrix, upsample_logits_matmul


@pytest.mark.parametrize(
    ("size", "patch"),
    [((128, 128), 16), ((128, 171), 16), ((480, 480), 16), ((97, 64), 14), ((32, 32), 8)],
)
def test_values_and_gradients_match_interpolate(size, patch):
    g = torch.Generator().manual_seed(0)
    grid = (-(-size[0] // patch), -(-size[1] // patch))
    x = torch.randn(2, 5, *grid, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, *size, generator=g, dtype=torch.float64)
    ref = upsample_logits(x, size, patch)
    (ref_grad,) = torch.autograd.grad(ref, x, upstream)
    x32 = x.detach().float().requires_grad_()
    mine = upsample_logits_matmul(x32, size, patch)
    (mine_grad,) = torch.autograd.grad(mine, x32, upstream.float())
    assert mine.shape == ref.shape == (2, 5, *size)
    torch.testing.assert_close(mine.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine_grad.double(), ref_grad, rtol=1e-5, atol=1e-4)


def test_rows_are_torchs_interpolation_weights():
    # Interpolating the identity gives the matrix itself: compare row by row.
    for out_size, in_size in [(128, 8), (30, 7), (16, 16)]:
        eye = torch.eye(in_size, dtype=torch.float64)[None, None]  # 1 x 1 x in x in
        ref = F.interpolate(eye, size=(out_size, in_size), mode="bilinear",
                            align_corners=False)[0, 0]
        mine = bilinear_matrix(out_size, in_size, out_size, "cpu").double()
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-7)
        assert torch.allclose(mine.sum(1), torch.ones(out_size, dtype=torch.float64))


def test_half_precision_logits_round_once_like_interpolate():
    # Mixed precision hands the loss bf16/fp16 logits: one rounding of the fp32 result,
    # as upsample_bilinear2d does, so both agree to the type's last bit.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 21, 8, 8, generator=g).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mine = upsample_logits_matmul(x, (128, 128), 16)
    ref = upsample_logits(x, (128, 128), 16)
    assert mine.dtype == ref.dtype == torch.bfloat16
    ulp = 2.0**-7  # bf16's relative spacing
    diff = (mine.float() - ref.float()).abs() / ref.float().abs().clamp(min=1e-3)
    assert diff.max().item() <= ulp
    assert (mine == ref).float().mean().item() > 0.99
