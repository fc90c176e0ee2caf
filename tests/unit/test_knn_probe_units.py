"""The k-NN probe's pieces against values worked out by hand: neighbour search, the
softmax vote, ties, patch labels, Hummingbird's bank sampling, settings errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from bench.cli import user_message
from plugins.knn_probe import PROTOCOL, KnnProbeSettings
from plugins.knn_probe.bank import resolve_layer
from plugins.knn_probe.retrieval import (
    knn_scores,
    nearest,
    patch_label_counts,
    patch_labels,
    sample_patches,
)

# Unit circle: cos(query, row) = 1, 0.6, 0.6, -1 for the query (1, 0).
BANK = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
ONE_HOT = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]])
QUERY = torch.tensor([[2.0, 0.0]])  # not unit norm: cosine must not care


def test_k1_is_the_nearest_label():
    scores = knn_scores(QUERY, BANK, ONE_HOT, k=1, temperature=0.02, chunk=100)
    assert scores.tolist() == [[1.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("temperature", "class0"),
    [
        # weights e^{1/T}, e^{0.6/T}, e^{0.6/T}: class 0 gets 1 / (1 + 2 e^{-0.4/T})
        (0.1, 1 / (1 + 2 * math.exp(-4.0))),  # 0.964664
        (1.0, 1 / (1 + 2 * math.exp(-0.4))),  # 0.427233: the two 0.6 neighbours outvote
    ],
)
def test_softmax_vote_over_three_neighbours(temperature, class0):
    scores = knn_scores(QUERY, BANK, ONE_HOT, k=3, temperature=temperature, chunk=100)
    assert scores[0, 0].item() == pytest.approx(class0, abs=1e-6)
    assert scores[0, 1].item() == pytest.approx(1 - class0, abs=1e-6)
    assert scores[0, 2].item() == 0.0  # the opposite row is not among the 3 nearest
    assert (scores.argmax(1).item() == 0) == (temperature == 0.1)


def test_soft_labels_are_averaged_by_the_weights():
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75], [0.0, 0.25, 0.75], [0, 0, 1.0]])
    w0 = 1 / (1 + 2 * math.exp(-0.4))  # T = 1, as above
    scores = knn_scores(QUERY, BANK, soft, k=3, temperature=1.0, chunk=2)
    expect = [0.5 * w0, 0.5 * w0 + 0.25 * (1 - w0), 0.75 * (1 - w0)]
    assert scores[0].tolist() == pytest.approx(expect, abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 100])
def test_ties_go_to_the_lower_bank_row_whatever_the_chunk(chunk):
    bank = torch.tensor([[0.0, 1.0], [1.0, 0.0], [3.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    sims, rows = nearest(torch.tensor([[1.0, 0.0]]), bank, k=2, chunk=chunk)
    assert rows.tolist() == [[1, 2]]  # rows 1..4 all have cosine 1
    assert sims.tolist() == [[1.0, 1.0]]
    labels = torch.eye(5)
    scores = knn_scores(torch.tensor([[1.0, 0.0]]), bank, labels, 2, 0.02, chunk)
    assert scores[0].tolist() == [0.0, 0.5, 0.5, 0.0, 0.0]  # equal weights


def test_tied_and_untied_queries_in_one_batch():
    bank = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [0.6, 0.8]])
    _, rows = nearest(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), bank, k=1, chunk=3)
    assert rows.tolist() == [[1], [0]]


@pytest.mark.parametrize(("k", "chunk"), [(1, 7), (5, 16), (12, 5), (40, 64)])
def test_search_equals_a_stable_sort_of_all_similarities(k, chunk):
    """Axis vectors scaled by powers of two: every cosine is exactly -1, 0 or 1, so ties
    abound and no rounding can break them. The reference ranks every bank row by a
    stable sort (ties keep the lower row) and keeps the first k."""
    g = torch.Generator().manual_seed(k)

    def axes(n: int) -> torch.Tensor:
        x = torch.zeros(n, 3)
        x[torch.arange(n), torch.randint(0, 3, (n,), generator=g)] = 1.0
        sign = torch.randint(0, 2, (n, 1), generator=g) * 2 - 1
        return x * sign * 2.0 ** torch.randint(0, 3, (n, 1), generator=g)

    bank, queries = axes(60), axes(9)
    sims, rows = nearest(queries, bank, k=k, chunk=chunk)
    full = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    expect = torch.sort(-full, dim=1, stable=True).indices[:, :k].sort(dim=1).values
    assert torch.equal(rows, expect)
    assert torch.allclose(sims, full.gather(1, expect))


def test_many_queries_each_get_their_own_neighbours():
    torch.manual_seed(1)
    bank = torch.randn(50, 8)
    queries = bank[[7, 3, 41]] * 3.0
    _, rows = nearest(queries, bank, k=1, chunk=16)
    assert rows[:, 0].tolist() == [7, 3, 41]


def test_empty_bank_and_non_finite_queries_are_refused():
    with pytest.raises(ValueError, match="memory bank is empty"):
        nearest(QUERY, torch.zeros(0, 2), k=1, chunk=4)
    with pytest.raises(ValueError, match="not finite"):
        nearest(torch.tensor([[float("nan"), 0.0]]), BANK, k=1, chunk=4)


def test_patch_label_counts_by_hand():
    label = torch.tensor([
        [0, 0, 1, 255],
        [0, 1, 255, 255],
        [2, 2, 255, 255],
        [2, 255, 255, 255],
    ])
    counts = patch_label_counts(label, patch=2, num_classes=3, ignore_index=255)
    # Row-major patches: top-left, top-right, bottom-left, bottom-right (all ignored).
    assert counts.tolist() == [[3, 1, 0], [0, 1, 0], [0, 0, 3], [0, 0, 0]]
    soft = patch_labels(counts[:3], "soft")
    assert soft.tolist() == [[0.75, 0.25, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    tie = patch_labels(torch.tensor([[2, 2, 0], [0, 1, 3]]), "majority")
    assert tie.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # a tie: the lower class


def test_patch_labels_refuse_values_outside_the_classes():
    with pytest.raises(ValueError, match=r"0\.\.2 and are not the ignore value 255"):
        patch_label_counts(torch.tensor([[0, 7], [1, 1]]), 2, 3, 255)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patch_label_counts(torch.zeros(3, 4, dtype=torch.long), 2, 3, 255)


def test_sampling_keeps_the_quota_deterministically_in_row_order():
    present = torch.rand(40, 5) > 0.5
    a = sample_patches(present, quota=7, seed=3, image_index=11)
    assert len(a) == 7 and a.tolist() == sorted(a.tolist())
    assert torch.equal(a, sample_patches(present, 7, 3, 11))
    assert not torch.equal(a, sample_patches(present, 7, 3, 12))
    assert sample_patches(present, 40, 0, 0).tolist() == list(range(40))


def test_sampling_prefers_patches_of_rare_classes_as_hummingbird_does():
    # Three patches of class 0 (its frequency is 3), one of class 1 (frequency 1).
    # Scores 3u1, 3u2, 3u3, u4; keep the lowest. P(u4 < 3 min(u1..u3)) =
    # int_0^{1/3} 3m * 3(1-m)^2 dm + (2/3)^3 = 99/324 + 8/27 = 0.6019 (uniform: 0.25).
    present = torch.tensor([[True, False]] * 3 + [[False, True]])
    picks = [sample_patches(present, 1, seed, 0).item() for seed in range(2000)]
    rate = sum(p == 3 for p in picks) / len(picks)
    assert rate == pytest.approx(99 / 324 + 8 / 27, abs=0.035)


def _bad(key: str, value):
    with pytest.raises(ValidationError) as info:
        KnnProbeSettings(**{key: value})
    return info.value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("k", 0),
        ("k", 10**6),
        ("temperature", 0.0),
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("memory_size", 0),
        ("memory_size", 5),  # fewer than k = 30
        ("patch_labels", "hard"),
        ("bank_dtype", "int8"),
        ("chunk", 0),
        ("feature_norm", "maybe"),
        ("kk", 3),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(key, value):
    exc = _bad(key, value)
    assert [e["loc"][0] for e in exc.errors()] == [key]
    line = user_message(exc)
    assert "\n" not in line and line.split(": ", 1)[1].startswith(f"{key}: ")


def test_memory_smaller_than_k_says_both():
    line = user_message(_bad("memory_size", 5))
    assert "memory_size 5 is smaller than k 30" in line


def test_layer_is_checked_against_the_backbone_depth():
    assert resolve_layer(-1, 12) == 11 and resolve_layer(0, 12) == 0
    for bad in (12, -13):
        with pytest.raises(ValueError, match="setting 'layer'") as info:
            resolve_layer(bad, 12)
        assert "\n" not in str(info.value)


def test_declaration_and_entry_point():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    from bench.protocols.registry import Protocol

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["unipbench.protocols"]["knn_probe"]
    assert target == "plugins.knn_probe:PROTOCOL"
    assert "plugins*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert isinstance(PROTOCOL, Protocol) and PROTOCOL.name == "knn_probe"
    assert PROTOCOL.version == "1.0" and PROTOCOL.label == "kNN"
    assert PROTOCOL.primary.key == "mIoU"
    assert PROTOCOL.settings is KnnProbeSettings
    assert callable(PROTOCOL.run_fn()) and callable(PROTOCOL.model_fn())


def test_defaults_are_hummingbirds():
    s = KnnProbeSettings()
    assert (s.k, s.temperature, s.patch_labels, s.memory_size, s.layer) == (
        30, 0.02, "soft", 1024 * 10**4, -1
    )


def test_flop_model_is_the_backbone_up_to_the_block_read():
    from bench.backbones.adapter import load_backbone
    from bench.backbones.flops import backbone_flops, count_macs
    from plugins.knn_probe.probe import evaluated_model

    bb = load_backbone("mae", "tiny", img_size=64, depth=4)
    x = torch.zeros(1, 3, 64, 64)
    whole = count_macs(evaluated_model(KnnProbeSettings(), bb, 21), (x,))
    assert whole.total == backbone_flops(bb, [64, 64])[0].total  # last block + norm
    first = count_macs(evaluated_model(KnnProbeSettings(layer=0), bb, 21), (x,))
    # Four equal blocks: block 0 alone is the embedding plus a quarter of the blocks.
    assert first.total < whole.total / 2
