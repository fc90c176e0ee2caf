"""attention_nmi: known answers on constructed maps, and an independent loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unip.nmi import attention_nmi, summarise_layer


def reference_nmi(a: np.ndarray, prefix: int) -> float:
    """The definition written out with plain loops (float64), for one N x N map."""
    a = a[prefix:, prefix:].astype(np.float64)
    n = a.shape[0]
    rows = []
    for q in range(n):
        s = sum(a[q])
        rows.append([a[q][k] / s for k in range(n)])
    p_k = [sum(rows[q][k] for q in range(n)) / n for k in range(n)]
    mi = 0.0
    for q in range(n):
        for k in range(n):
            if rows[q][k] > 0:
                mi += (1 / n) * rows[q][k] * math.log(rows[q][k] / p_k[k])
    h_q = math.log(n)
    h_k = -sum(p * math.log(p) for p in p_k if p > 0)
    return mi / math.sqrt(h_q * h_k)


def with_prefix(
    patch_maps: torch.Tensor, prefix: int = 1, prefix_mass: float = 0.3
) -> torch.Tensor:
    """Embed ``... x N x N`` row-stochastic maps into ``N + prefix`` tokens: every row puts
    ``prefix_mass`` on the prefix keys, prefix rows attend uniformly."""
    *lead, n, _ = patch_maps.shape
    full = torch.zeros(*lead, n + prefix, n + prefix, dtype=patch_maps.dtype)
    full[..., prefix:, prefix:] = patch_maps * (1 - prefix_mass)
    full[..., prefix:, :prefix] = prefix_mass / prefix
    full[..., :prefix, :] = 1.0 / (n + prefix)
    return full


def window_maps(side: int, radius: int) -> torch.Tensor:
    """Each patch of a side x side torus attends uniformly to its (2r+1)^2 window."""
    n = side * side
    a = torch.zeros(n, n, dtype=torch.float64)
    for r in range(side):
        for c in range(side):
            for dr in range(-radius, radius + 1):
                for dc in range(-radius, radius + 1):
                    a[r * side + c, ((r + dr) % side) * side + (c + dc) % side] = 1.0
    return a / a.sum(-1, keepdim=True)


def test_identity_attention_is_one() -> None:
    eye = torch.eye(16, dtype=torch.float64).expand(2, 3, 16, 16)
    nmi = attention_nmi(with_prefix(eye), num_prefix_tokens=1)
    assert nmi.shape == (2, 3)
    torch.testing.assert_close(nmi, torch.ones(2, 3, dtype=torch.float64))


def test_every_query_attending_the_same_keys_is_zero() -> None:
    row = torch.softmax(torch.randn(25, dtype=torch.float64), 0)
    same = row.expand(25, 25)[None, None]
    assert attention_nmi(same, num_prefix_tokens=0).abs().max() < 1e-9
    uniform = torch.full((1, 2, 26, 26), 1 / 26)
    assert attention_nmi(uniform).abs().max() < 1e-6


def test_local_windows_have_the_known_value_and_order() -> None:
    side = 9
    n = side * side
    values = []
    for radius in range(4):
        w = (2 * radius + 1) ** 2
        nmi = float(attention_nmi(with_prefix(window_maps(side, radius)[None, None])))
        # On a torus p(k) is uniform: I = log N - log w, H(K) = H(Q) = log N.
        assert nmi == pytest.approx((math.log(n) - math.log(w)) / math.log(n), abs=1e-9)
        values.append(nmi)
    assert values[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert 0 < values[-1] < 1


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_matches_loop_reference_on_random_maps(prefix: int) -> None:
    g = torch.Generator().manual_seed(prefix)
    logits = torch.randn(2, 3, 10 + prefix, 10 + prefix, generator=g, dtype=torch.float64) * 3
    attn = logits.softmax(-1)
    got = attention_nmi(attn, num_prefix_tokens=prefix)
    for b in range(2):
        for h in range(3):
            want = reference_nmi(attn[b, h].numpy(), prefix)
            assert float(got[b, h]) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_float32_matches_reference_at_vit_size() -> None:
    attn = (torch.randn(1, 2, 197, 197) * 4).softmax(-1)
    got = attention_nmi(attn)
    want = attention_nmi(attn.double())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=0)


def test_fp16_input_is_computed_in_float32() -> None:
    attn = (torch.randn(2, 4, 65, 65) * 3).softmax(-1)
    got = attention_nmi(attn.half())
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, attention_nmi(attn), atol=2e-3, rtol=0)


def test_prefix_mass_is_renormalised_away() -> None:
    patch = (torch.randn(2, 3, 16, 16, dtype=torch.float64) * 2).softmax(-1)
    base = attention_nmi(patch, num_prefix_tokens=0)
    for mass in (0.0, 0.5, 0.9):
        torch.testing.assert_close(attention_nmi(with_prefix(patch, 1, mass)), base)
    torch.testing.assert_close(attention_nmi(with_prefix(patch, 2, 0.4), 2), base)


def test_rows_with_all_mass_on_prefix_are_uniform_not_nan() -> None:
    side = 4
    patch = window_maps(side, 0)  # identity
    full = with_prefix(patch[None, None], 1, 0.2)
    full[0, 0, 1, :] = 0.0
    full[0, 0, 1, 0] = 1.0  # query 0 attends only CLS
    got = float(attention_nmi(full))
    expected_rows = patch.clone()
    expected_rows[0] = 1.0 / (side * side)
    assert math.isfinite(got)
    assert got == pytest.approx(reference_nmi(expected_rows.numpy(), 0), rel=1e-9)


def test_each_image_and_head_is_independent() -> None:
    maps = [window_maps(5, r) for r in range(3)] + [torch.full((25, 25), 1 / 25).double()]
    stacked = torch.stack(maps).reshape(2, 2, 25, 25)
    got = attention_nmi(stacked, num_prefix_tokens=0)
    for i, m in enumerate(maps):
        assert float(got.flatten()[i]) == pytest.approx(float(attention_nmi(m[None, None], 0)))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="B x heads x N x N"):
        attention_nmi(torch.rand(3, 5, 5))
    with pytest.raises(ValueError, match="no patch tokens"):
        attention_nmi(torch.rand(1, 1, 2, 2), num_prefix_tokens=2)


def test_summarise_layer_spreads() -> None:
    values = torch.tensor([[0.1, 0.3], [0.3, 0.5]])
    s = summarise_layer(4, values)
    assert s.layer == 4 and s.num_images == 2
    assert s.mean == pytest.approx(0.3)
    assert s.per_head == pytest.approx([0.2, 0.4])
    assert s.head_std == pytest.approx(0.1)
    assert s.image_std == pytest.approx(0.1)
    assert (s.min, s.max) == pytest.approx((0.1, 0.5))
    assert s.std == pytest.approx(float(values.double().std(unbiased=False)))
