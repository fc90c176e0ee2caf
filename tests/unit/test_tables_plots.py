"""Figures from a fixture store: mIoU vs GFLOPs per protocol and layer-wise curves.

What is drawn is read back from each matplotlib figure as it is saved (title, axis labels,
scale, every line's points, point labels, legend) and compared with values worked out
here from the fixture's table of made-up results, not from the plotting code.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from test_tables import DATASETS, ROWS, fixture_records

from bench.results.plots import plot_layerwise, plot_miou_vs_flops
from bench.results.store import RunRecord

PNG = b"\x89PNG\r\n\x1a\n"
LETTER = {"tiny": "T", "small": "S"}


@pytest.fixture
def drawn(monkeypatch) -> dict[str, dict[str, Any]]:
    """File name -> what its figure shows, captured just before matplotlib writes it."""
    figures: dict[str, dict[str, Any]] = {}
    real_savefig = Figure.savefig

    def capture(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> Any:
        (ax,) = self.axes
        figures[Path(fname).name] = {
            "title": ax.get_title(),
            "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(),
            "xscale": ax.get_xscale(),
            "lines": {
                line.get_label(): list(zip(line.get_xdata(), line.get_ydata(), strict=True))
                for line in ax.get_lines()
            },
            "points": sorted((t.get_text(), *t.xy) for t in ax.texts),
            "legend": [t.get_text() for t in ax.get_legend().get_texts()],
        }
        return real_savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    return figures


# One result left out: MAE-S fine-tuning has seeds 0 and 1 on two datasets but only seed 0
# on SODA, so averaging seeds per dataset first differs from one flat mean.
DROPPED = "mae-small-fine_tune-soda-1"


def expected_series(protocol: str) -> dict[str, list[tuple[float, float, str]]]:
    """Legend label -> [(GFLOPs, mIoU averaged over seeds then datasets, size letter)], by
    size, from the fixture table (seed 1 scores one point above seed 0)."""
    out: dict[str, list[tuple[float, float, str]]] = {}
    for name, _, size, random_init, seeds, ft, lp, gmacs, _ in ROWS:
        values = ft if protocol == "fine_tune" else lp
        per_dataset = []
        for dataset, value in zip(DATASETS, values, strict=True):
            kept = [s for s in seeds if f"{name}-{size}-{protocol}-{dataset}-{s}" != DROPPED]
            per_dataset.append(statistics.fmean(value + (1.0 if s == 1 else 0.0) for s in kept))
        gflops = gmacs if protocol == "fine_tune" else 31.9  # the fixture's LP head cost
        label = f"{name} (random init)" if random_init else name
        out.setdefault(label, []).append((gflops, statistics.fmean(per_dataset), LETTER[size]))
    return out


def test_miou_vs_gflops_one_png_per_protocol(tmp_path: Path, drawn) -> None:
    recs = [RunRecord.model_validate(r) for r in fixture_records() if r["run_id"] != DROPPED]
    written = plot_miou_vs_flops(recs, tmp_path)
    assert [p.name for p in written] == ["miou_vs_gflops_ft.png", "miou_vs_gflops_lp.png"]
    for p in written:
        assert p.read_bytes()[:8] == PNG
    for name, protocol, title in (("miou_vs_gflops_ft.png", "fine_tune", "Fine-tuning"),
                                  ("miou_vs_gflops_lp.png", "linear_probe", "Linear probing")):
        fig = drawn[name]
        want = expected_series(protocol)
        assert fig["title"] == f"{title}: mIoU vs cost"
        assert fig["xlabel"] == "GFLOPs (multiply-adds, backbone + decode head)"
        assert fig["ylabel"] == f"mIoU (%), average over {len(DATASETS)} dataset(s)"
        assert fig["xscale"] == "log"
        assert fig["legend"] == sorted(want)  # one entry per method, by name
        assert set(fig["lines"]) == set(want)
        for label, pts in want.items():
            got = fig["lines"][label]
            assert [x for x, _ in got] == pytest.approx([x for x, _, _ in pts]), label
            assert [y for _, y in got] == pytest.approx([y for _, y, _ in pts]), label
        # Every point is labelled with its size letter, at the point.
        points = sorted((size, x, y) for pts in want.values() for x, y, size in pts)
        assert [(t, round(x, 6), round(y, 6)) for t, x, y in fig["points"]] == [
            (t, round(x, 6), round(y, 6)) for t, x, y in points
        ]
    # Spot check of the arithmetic: MAE-S fine-tuning, (55 + 50.5 + 60.5) / 3.
    assert drawn["miou_vs_gflops_ft.png"]["lines"]["mae"][1] == pytest.approx((156.1, 166 / 3))


def test_layerwise_curves_one_png_per_dataset(tmp_path: Path, drawn) -> None:
    base = fixture_records()[0]
    recs = [RunRecord.model_validate({
        **base, "run_id": f"{name}{ds}", "protocol": "layerwise_probe", "dataset": ds,
        "model_name": name, "extra": {"per_layer": {str(i): {"mIoU": i * k} for i in range(12)}},
    }) for name, k in (("mae", 1.0), ("unip", 2.0)) for ds in ("ade20k", "nyuv2_depth")]
    written = plot_layerwise(recs, tmp_path)
    assert [p.name for p in written] == ["layerwise_probe_ade20k.png",
                                        "layerwise_probe_nyuv2_depth.png"]
    assert all(p.read_bytes()[:8] == PNG for p in written)
    for ds in ("ade20k", "nyuv2_depth"):
        fig = drawn[f"layerwise_probe_{ds}.png"]
        assert fig["title"] == f"Layer-wise linear probing: {ds}"
        assert (fig["xlabel"], fig["ylabel"]) == ("block (1-based)", "mIoU (%)")
        assert fig["legend"] == ["mae-T", "unip-T"]  # the base record is a ViT-T
        # Block i (0-based) is drawn at i + 1 with the record's mIoU, i * k.
        assert fig["lines"]["mae-T"] == [(i + 1, float(i)) for i in range(12)]
        assert fig["lines"]["unip-T"] == [(i + 1, 2.0 * i) for i in range(12)]
    assert plot_miou_vs_flops(recs, tmp_path / "none") == []  # no FT/LP results
