"""Figures of the attention analysis: NMI per layer, and query attention over an image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from unip.analysis import AttentionAnalysis  # noqa: E402

PATTERN_COLOURS = {"local": "tab:blue", "hybrid": "tab:green", "global": "tab:red"}


def plot_nmi(analysis: AttentionAnalysis, path: str | Path, title: str = "") -> Path:
    """Mean NMI per layer with its spread over images and heads, thresholds and target."""
    path = Path(path)
    ids = [s.layer for s in analysis.layers]
    means = [s.mean for s in analysis.layers]
    stds = [s.std for s in analysis.layers]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(ids) + 2.5), 3.6), dpi=120)
    ax.axhspan(
        analysis.global_threshold,
        analysis.local_threshold,
        color="0.93",
        zorder=0,
        label=f"hybrid band ({analysis.global_threshold:g}-{analysis.local_threshold:g})",
    )
    ax.errorbar(ids, means, yerr=stds, color="0.4", lw=1, capsize=2, zorder=1, label="mean ± std")
    for pattern, colour in PATTERN_COLOURS.items():
        pts = [
            (i, m) for i, m, p in zip(ids, means, analysis.patterns, strict=True) if p == pattern
        ]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color=colour, label=pattern, zorder=2, s=22)
    ax.axhline(analysis.target, color="k", ls="--", lw=0.8, label=f"target {analysis.target:g}")
    chosen = analysis.layers[ids.index(analysis.teacher_layer)]
    ax.scatter(
        [chosen.layer],
        [chosen.mean],
        s=120,
        facecolors="none",
        edgecolors="k",
        zorder=3,
        label=f"closest: layer {chosen.layer}",
    )
    ax.set_xlabel("layer (1-based)")
    ax.set_ylabel("NMI")
    ax.set_xticks(ids)
    ax.set_ylim(bottom=0)
    ax.set_title(title or "attention NMI per layer")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_query_maps(
    image: torch.Tensor,
    maps: torch.Tensor,
    layers: Sequence[int],
    queries: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    path: str | Path,
    title: str = "",
) -> Path:
    """A layers x queries grid of attention maps over the (de-normalised, grey) image.

    ``maps`` is ``layers x queries x gh x gw`` (from ``query_attention_maps``); the query
    patch is outlined in each panel. Each panel's colours run from 0 to its own maximum,
    which is printed in the panel as a multiple of uniform attention (1 / patches): a flat
    map reads ``max 1.1x``, a peaked one ``max 30x``.
    """
    path = Path(path)
    h, w = image.shape[-2:]
    gh, gw = maps.shape[-2:]
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    grey = (image.float().cpu() * s + m).mean(0).clamp(0, 1).numpy()
    up = F.interpolate(maps.flatten(0, 1)[:, None], size=(h, w), mode="nearest")[:, 0]
    up = up.reshape(len(layers), len(queries), h, w)
    fig, axes = plt.subplots(
        len(layers),
        len(queries),
        squeeze=False,
        figsize=(2.2 * len(queries), 2.2 * len(layers)),
        dpi=120,
    )
    ph, pw = h / gh, w / gw
    uniform = 1.0 / (gh * gw)
    shown = None
    for r, layer in enumerate(layers):
        for c, q in enumerate(queries):
            ax = axes[r][c]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            a = up[r, c]
            peak = float(a.max())
            shown = ax.imshow((a / max(peak, 1e-12)).numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.text(
                0.03,
                0.03,
                f"max {peak / uniform:.1f}x",
                transform=ax.transAxes,
                fontsize=7,
                color="w",
                bbox={"facecolor": "k", "alpha": 0.5, "pad": 1, "lw": 0},
            )
            qr, qc = divmod(q, gw)
            ax.add_patch(plt.Rectangle((qc * pw, qr * ph), pw, ph, fill=False, ec="w", lw=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
            if r == 0:
                ax.set_title(f"query {q} ({qr},{qc})", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes, shrink=0.6, pad=0.02)
        bar.set_label("attention / panel max (head mean, CLS dropped)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
