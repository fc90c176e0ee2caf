"""Figures from a fixture store: mIoU vs GFLOPs per protocol and layer-wise curves."""

from __future__ import annotations

from pathlib import Path

from test_tables import fixture_records

from bench.plots import plot_layerwise, plot_miou_vs_flops
from bench.store import RunRecord

PNG = b"\x89PNG\r\n\x1a\n"


def test_miou_vs_gflops_one_png_per_protocol(tmp_path: Path) -> None:
    recs = [RunRecord.model_validate(r) for r in fixture_records()]
    written = plot_miou_vs_flops(recs, tmp_path)
    assert [p.name for p in written] == ["miou_vs_gflops_ft.png", "miou_vs_gflops_lp.png"]
    for p in written:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000


def test_layerwise_curves_one_png_per_dataset(tmp_path: Path) -> None:
    base = fixture_records()[0]
    recs = [RunRecord.model_validate({
        **base, "run_id": f"{name}{ds}", "protocol": "layerwise_probe", "dataset": ds,
        "model_name": name, "extra": {"per_layer": {str(i): {"mIoU": i * k} for i in range(12)}},
    }) for name, k in (("mae", 1.0), ("unip", 2.0)) for ds in ("ade20k", "nyuv2_depth")]
    written = plot_layerwise(recs, tmp_path)
    assert [p.name for p in written] == ["layerwise_probe_ade20k.png",
                                        "layerwise_probe_nyuv2_depth.png"]
    assert all(p.read_bytes()[:8] == PNG for p in written)
    assert plot_miou_vs_flops(recs, tmp_path / "none") == []  # curves instead
