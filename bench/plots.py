"""Figures from store records: average mIoU vs GFLOPs (as the paper's Figure 2) and
layer-wise probing curves, written as PNG with matplotlib's Agg backend."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.adapter import size_letter
from bench.store import RunRecord
from bench.tables import PROTOCOL_SHORT, SIZE_ORDER, layer_curve

TITLES = {"fine_tune": "Fine-tuning", "linear_probe": "Linear probing"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in tests
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path: Path) -> Path:
    """Grid, legend, layout; write ``path`` and free the figure."""
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.clf()
    _pyplot().close(fig)
    return path


def _average_points(records: Sequence[RunRecord], protocol: str) -> dict[str, list[tuple]]:
    """method -> [(gflops, avg mIoU, size)] over sizes, for rows with every dataset."""
    recs = [r for r in records if r.protocol == protocol and r.metrics and r.flops]
    datasets = {r.dataset for r in recs}
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    gflops: dict[tuple[str, str], float] = {}
    for r in recs:
        key = (r.model_name, r.size)
        cells.setdefault(key, {}).setdefault(r.dataset, []).append(float(r.metrics["mIoU"]))
        gflops[key] = r.flops.total_gmacs  # type: ignore[union-attr]
    series: dict[str, list[tuple]] = {}
    for (method, size), per_ds in cells.items():
        if set(per_ds) != datasets:
            continue  # an average over fewer datasets would not be comparable
        avg = statistics.fmean(statistics.fmean(v) for v in per_ds.values())
        series.setdefault(method, []).append((gflops[(method, size)], avg, size))
    for pts in series.values():
        pts.sort(key=lambda p: SIZE_ORDER.get(p[2], 9))
    return series


def plot_miou_vs_flops(records: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """One PNG per protocol (FT, LP): a series per method, its sizes as points, log x."""
    plt = _pyplot()
    written = []
    for protocol in ("fine_tune", "linear_probe"):
        series = _average_points(records, protocol)
        if not series:
            continue
        n_data = len({r.dataset for r in records if r.protocol == protocol})
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
        random_init = {r.model_name for r in records if r.random_init}
        adapter_of = {r.model_name: r.adapter for r in records}
        for method, pts in sorted(series.items()):
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            label = f"{method} (random init)" if method in random_init else method
            ax.plot(xs, ys, marker="o", label=label)
            for x, y, size in pts:
                ax.annotate(size_letter(size, adapter_of.get(method)), (x, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("GFLOPs (multiply-adds, backbone + decode head)")
        ax.set_ylabel(f"mIoU (%), average over {n_data} dataset(s)")
        ax.set_title(f"{TITLES[protocol]}: mIoU vs cost")
        name = f"miou_vs_gflops_{PROTOCOL_SHORT[protocol].lower()}.png"
        written.append(_finish(fig, ax, Path(out_dir) / name))
    return written


def plot_layerwise(records: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """One PNG per dataset: mIoU of every probed block, a curve per method-size."""
    plt = _pyplot()
    written = []
    recs = [r for r in records if r.protocol == "layerwise_probe" and r.per_layer]
    for dataset in sorted({r.dataset for r in recs}):
        curves: dict[str, dict[int, list[float]]] = {}
        for r in recs:
            if r.dataset != dataset:
                continue
            label = f"{r.model_name}-{size_letter(r.size, r.adapter)}"
            for layer, v in layer_curve(r.per_layer):
                curves.setdefault(label, {}).setdefault(layer, []).append(v)
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
        for label, points in sorted(curves.items()):
            layers = sorted(points)
            ax.plot([i + 1 for i in layers], [statistics.fmean(points[i]) for i in layers],
                    marker=".", label=label)
        ax.set_xlabel("block (1-based)")
        ax.set_ylabel("mIoU (%)")
        ax.set_title(f"Layer-wise linear probing: {dataset}")
        written.append(_finish(fig, ax, Path(out_dir) / f"layerwise_{dataset}.png"))
    return written
