"""Figures from store records, written as PNG with matplotlib's Agg backend: for each
protocol with a primary metric and FLOPs, its average metric vs GFLOPs (as the paper's
Figure 2); for each ``per_layer`` protocol, its metric per block, a figure per dataset.
Titles and metrics come from the protocols' declarations (:mod:`bench.protocols.registry`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.backbones.adapter import size_letter
from bench.results.store import RunRecord
from bench.results.tables import SIZE_ORDER, ProtocolView, layer_curve, protocol_views


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


def _average_points(records: Sequence[RunRecord], view: ProtocolView) -> dict[str, list[tuple]]:
    """method -> [(gflops, average metric, size)] over sizes, for rows with every dataset."""
    key = view.metric.key
    recs = [r for r in records if r.protocol == view.name and r.flops
            and (r.metrics or {}).get(key) is not None]
    datasets = {r.dataset for r in recs}
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    gflops: dict[tuple[str, str], float] = {}
    for r in recs:
        row = (r.model_name, r.size)
        cells.setdefault(row, {}).setdefault(r.dataset, []).append(float(r.metrics[key]))
        gflops[row] = r.flops.total_gmacs  # type: ignore[union-attr]
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
    """One PNG per protocol whose records have its primary metric and FLOPs (per_layer
    protocols have their curves instead): a series per method, its sizes as points, log x.
    """
    plt = _pyplot()
    written = []
    for view in protocol_views(records):
        if view.per_layer:
            continue
        series = _average_points(records, view)
        if not series:
            continue
        n_data = len({r.dataset for r in records if r.protocol == view.name})
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
        ax.set_ylabel(f"{view.metric.label}, average over {n_data} dataset(s)")
        ax.set_title(f"{view.title}: {view.metric.key} vs cost")
        name = f"{_file_part(view.metric.key)}_vs_gflops_{_file_part(view.short)}.png"
        written.append(_finish(fig, ax, Path(out_dir) / name))
    return written


def _file_part(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())


def plot_layerwise(records: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """For each per_layer protocol, one PNG per dataset: its metric at every probed
    block, a curve per method-size (``<protocol>_<dataset>.png``)."""
    written = []
    for view in protocol_views(records):
        if view.per_layer:
            recs = [r for r in records if r.protocol == view.name and r.per_layer]
            written += _layer_curves(recs, view, Path(out_dir))
    return written


def _layer_curves(recs: list[RunRecord], view: ProtocolView, out_dir: Path) -> list[Path]:
    plt = _pyplot()
    written = []
    for dataset in sorted({r.dataset for r in recs}):
        curves: dict[str, dict[int, list[float]]] = {}
        for r in recs:
            if r.dataset != dataset:
                continue
            label = f"{r.model_name}-{size_letter(r.size, r.adapter)}"
            for layer, v in layer_curve(r.per_layer, view.metric.key):
                curves.setdefault(label, {}).setdefault(layer, []).append(v)
        fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
        for label, points in sorted(curves.items()):
            layers = sorted(points)
            ax.plot([i + 1 for i in layers], [statistics.fmean(points[i]) for i in layers],
                    marker=".", label=label)
        ax.set_xlabel("block (1-based)")
        ax.set_ylabel(view.metric.label)
        ax.set_title(f"{view.title}: {dataset}")
        name = f"{_file_part(view.name)}_{_file_part(dataset)}.png"
        written.append(_finish(fig, ax, out_dir / name))
    return written
