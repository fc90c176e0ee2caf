"""The k-NN probe's arithmetic on tensors: patch labels, bank sampling, neighbour search
and the vote. No data loading and no backbone here, so each piece is checked by hand.

Neighbours are exact (brute force over chunks of the bank, cosine similarity in float32).
Ties are resolved by position: among equal similarities the lower bank row wins, so the
result does not depend on the chunk size or on the device's top-k implementation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def patch_label_counts(
    label: torch.Tensor, patch: int, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """Per-patch pixel counts of each class, ``(H/p * W/p) x K`` in row-major patch order.

    ``label`` is ``H x W`` with H and W multiples of ``patch``; ``ignore_index`` pixels
    count nowhere.
    """
    h, w = label.shape
    if h % patch or w % patch:
        raise ValueError(f"label {h}x{w} is not a multiple of the patch size {patch}")
    gh, gw = h // patch, w // patch
    blocks = label.reshape(gh, patch, gw, patch).permute(0, 2, 1, 3).reshape(gh * gw, -1)
    keep = blocks != ignore_index
    if keep.any():
        bad = blocks[keep]
        if int(bad.min()) < 0 or int(bad.max()) >= num_classes:
            raise ValueError(
                f"label values {int(bad.min())}..{int(bad.max())} fall outside "
                f"0..{num_classes - 1} and are not the ignore value {ignore_index}"
            )
    rows = torch.arange(gh * gw, device=label.device)[:, None].expand_as(blocks)
    flat = rows[keep] * num_classes + blocks[keep].long()
    return torch.bincount(flat, minlength=gh * gw * num_classes).reshape(gh * gw, num_classes)


def patch_labels(counts: torch.Tensor, mode: str) -> torch.Tensor:
    """Bank labels from pixel counts: 'soft' distributions or 'majority' one-hots (ties:
    the lower class). Rows without a labelled pixel must be dropped before."""
    counts = counts.float()
    if mode == "soft":
        return counts / counts.sum(1, keepdim=True)
    if mode == "majority":
        # argmax returns the first maximum: the lower class index on a tie.
        return F.one_hot(counts.argmax(1), counts.shape[1]).float()
    raise ValueError(f"unknown patch_labels {mode!r}; use 'soft' or 'majority'")


def sample_patches(present: torch.Tensor, quota: int, seed: int, image_index: int) -> torch.Tensor:
    """Rows (ascending) of the at most ``quota`` patches one image keeps in the bank.

    ``present`` is ``patches x K`` booleans (class occurs among the patch's labelled
    pixels). Hummingbird's rule: a class's frequency is the number of the image's patches
    it occurs in; a patch scores the sum of its classes' frequencies times U(0,1), and
    the lowest scores are kept, so patches of rare classes are kept first. The uniform
    draws come from (seed, image index) alone: the same on any number of processes.
    """
    n = present.shape[0]
    if n <= quota:
        return torch.arange(n)
    present = present.cpu()
    freq = present.sum(0).double()
    score = (present.double() * freq).sum(1)
    rng = np.random.default_rng([int(seed), int(image_index)])
    score = score * torch.from_numpy(rng.random(n))
    # A stable sort: equal scores keep the lower row, as neighbour ties do.
    order = torch.sort(score, stable=True).indices[:quota]
    return order.sort().values


def _select_exact(
    sims: torch.Tensor, rows: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_select` for rows whose k-th value is tied beyond position k."""
    n, c = sims.shape
    threshold = sims.topk(k, dim=1).values[:, -1:]
    above = sims > threshold
    tied = sims == threshold
    room = k - above.sum(1, keepdim=True)
    keep = above | (tied & (tied.cumsum(1, dtype=torch.int32) <= room))
    # Exactly k kept per row: scatter each kept column to its rank among the kept ones
    # (the rest to a spare column), which keeps them ascending.
    slot = torch.where(keep, keep.cumsum(1) - 1, k)
    cols = torch.arange(c, device=sims.device).expand(n, c)
    cols = torch.empty(n, k + 1, dtype=torch.int64, device=sims.device).scatter_(1, slot, cols)
    cols = cols[:, :k]
    return sims.gather(1, cols), rows.gather(1, cols)


def _select(sims: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of each row of ``sims`` (``rows`` ascending along dim 1), lower
    rows first among equals; kept in ascending row order."""
    c = sims.shape[1]
    k = min(k, c)
    if k == c:
        return sims, rows
    values, cols = sims.topk(k, dim=1)
    # Where no value outside the top k equals the k-th, top-k's set is the answer
    # whatever its tie order; only the other rows need the exact rule.
    ambiguous = (sims >= values[:, -1:]).sum(1) > k
    cols = cols.sort(dim=1).values
    out_sims, out_rows = sims.gather(1, cols), rows.gather(1, cols)
    if ambiguous.any():
        idx = ambiguous.nonzero()[:, 0]
        out_sims[idx], out_rows[idx] = _select_exact(sims[idx], rows[idx], k)
    return out_sims, out_rows


@torch.no_grad()
def nearest(
    queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and bank rows of each query's ``k`` nearest bank rows.

    ``queries`` ``N x D`` and ``bank`` ``M x D`` need not be normalised. Returns two
    ``N x min(k, M)`` tensors, neighbours in ascending bank-row order.
    """
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty: no training patch has a labelled pixel")
    if not torch.isfinite(queries).all():
        raise ValueError("query features are not finite (inf/nan from the backbone)")
    q = F.normalize(queries.float(), dim=1)
    best_sims: torch.Tensor | None = None
    best_rows: torch.Tensor | None = None
    for start in range(0, bank.shape[0], chunk):
        keys = F.normalize(bank[start : start + chunk].float(), dim=1)
        sims = q @ keys.T
        rows = torch.arange(start, start + keys.shape[0], device=q.device).expand_as(sims)
        sims, rows = _select(sims, rows, k)
        if best_sims is not None:
            # Earlier chunks hold lower rows: the concatenation stays ascending.
            sims = torch.cat([best_sims, sims], dim=1)
            rows = torch.cat([best_rows, rows], dim=1)
            sims, rows = _select(sims, rows, k)
        best_sims, best_rows = sims, rows
    assert best_sims is not None and best_rows is not None
    return best_sims, best_rows


def vote(sims: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class scores ``N x K``: the neighbours' labels (``N x k x K``) weighted by
    softmax(similarity / temperature) over the k neighbours."""
    weights = torch.softmax(sims.float() / temperature, dim=1)
    return torch.einsum("nk,nkc->nc", weights, labels.float())


@torch.no_grad()
def knn_scores(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    k: int,
    temperature: float,
    chunk: int,
) -> torch.Tensor:
    """Class scores of each query patch from its k nearest labelled bank patches."""
    sims, rows = nearest(queries, bank, k, chunk)
    return vote(sims, bank_labels[rows], temperature)
