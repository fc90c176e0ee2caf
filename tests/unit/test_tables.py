"""Leaderboards from a fixture store: golden Markdown / LaTeX / CSV, seeds, reference, marks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.results.store import RunRecord, append_record, read_records
from bench.results.tables import (
    ConflictingRecordsError,
    MixedVersionsError,
    build_leaderboard,
    load_reference,
    render,
    select_records,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REFERENCE = Path(__file__).resolve().parents[2] / "results/reference/paper-figure2.yaml"
DATASETS = ("soda", "mfnet_thermal", "scut_seg")
# (model name, adapter, size, random init, seeds, FT mIoU per dataset, LP mIoU per dataset,
#  FT GMACs, backbone params): made-up values, chosen to exercise every table feature.
ROWS = [
    ("mae", "mae", "tiny", False, [0], (40.0, 45.0, 55.0), (20.0, 21.0, 25.0), 36.2, 5.5),
    ("mae", "mae", "small", False, [0, 1], (55.0, 50.0, 60.0), (30.0, 31.0, 32.0), 156.1, 21.7),
    ("deit3", "deit3", "small", False, [0], (60.0, 58.0, 66.0), (42.0, 40.0, 47.0), 156.1, 21.7),
    ("unip_mae_l", "unip", "small", False, [0, 1], (64.0, 60.0, 69.0), (45.0, 42.0, 45.0),
     156.1, 21.7),
    ("ibot", "ibot", "small", True, [0], (10.0, 12.0, 11.0), (5.0, 6.0, 7.0), 156.1, 21.7),
]


def fixture_records(version: str = "1.0") -> list[dict]:
    out = []
    for name, adapter, size, random_init, seeds, ft, lp, gmacs, params in ROWS:
        for seed in seeds:
            for protocol, values in (("fine_tune", ft), ("linear_probe", lp)):
                for dataset, value in zip(DATASETS, values, strict=True):
                    miou = value + (1.0 if seed == 1 else 0.0)  # seed 1 one point higher
                    flops = {
                        "backbone_gmacs": 31.8, "total_gmacs": gmacs if protocol == "fine_tune"
                        else 31.9, "params_m": 40.7, "backbone_params_m": params,
                        "input_size": [512, 512], "counter": "fvcore-test",
                        "convention": "multiply-adds", "attention_matmuls_included": True,
                    }
                    out.append({
                        "run_id": f"{name}-{size}-{protocol}-{dataset}-{seed}",
                        "suite": "fixture", "protocol": protocol, "protocol_version": version,
                        "status": "done", "config": {}, "model_name": name,
                        "adapter": adapter, "size": size, "random_init": random_init,
                        "dataset": dataset, "seed": seed,
                        "metrics": {"mIoU": miou, "mAcc": miou + 10, "aAcc": 90.0,
                                    "per_class_iou": [miou]},
                        "flops": flops,
                    })
    return out


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "results.jsonl"
    for rec in fixture_records():
        append_record(path, rec)
    # a failed run and a run of another suite must not show up
    append_record(path, {**fixture_records()[0], "run_id": "x", "status": "failed",
                         "error": "boom", "metrics": None})
    append_record(path, {**fixture_records()[0], "run_id": "y", "suite": "other"})
    return path


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path}; UPDATE_GOLDEN=1 rewrites it"


def board(store: Path):
    recs = select_records(read_records(store), suite="fixture")
    return build_leaderboard(recs, load_reference(REFERENCE), title="fixture leaderboard")


@pytest.mark.parametrize(("fmt", "golden"), [("md", "leaderboard.md"),
                                             ("latex", "leaderboard.tex"),
                                             ("csv", "leaderboard.csv")])
def test_golden_tables(store: Path, fmt: str, golden: str) -> None:
    check_golden(golden, render(board(store), fmt))


def test_values_seeds_reference_and_marks(store: Path) -> None:
    lb = board(store)
    rows = {r.label: r for r in lb.rows}
    assert list(rows) == ["mae-T", "mae-S", "deit3-S", "ibot-S †", "unip_mae_l-S"]  # paper order
    mae_s = rows["mae-S"]
    ft = mae_s.cells["fine_tune:soda"]
    assert (ft.mean, round(ft.std, 4), ft.n) == (55.5, 0.7071, 2)
    assert mae_s.cells["fine_tune:avg"].mean == pytest.approx(55.5)
    assert mae_s.cells["fine_tune:ref"].mean == 55.4
    assert mae_s.cells["fine_tune:diff"].mean == pytest.approx(0.1)
    assert rows["ibot-S †"].random_init
    assert "ibot-S" not in [r.label for r in lb.rows if not r.random_init]
    md = render(lb, "md")
    assert "**64.5 ± 0.7**" in md  # best FT SODA: unip_mae_l-S, mean of 64 and 65
    assert "ibot" in md and "fine_tune:ref" not in rows["ibot-S †"].cells  # not the paper's
    assert "† random-init backbone" in md


def test_mixed_versions_refused_unless_allowed(store: Path) -> None:
    for rec in fixture_records("2.0")[:3]:
        append_record(store, {**rec, "run_id": rec["run_id"] + "-v2"})
    with pytest.raises(MixedVersionsError, match="protocol versions 1.0, 2.0"):
        select_records(read_records(store), suite="fixture")
    recs = select_records(read_records(store), suite="fixture", allow_mixed_versions=True)
    assert "protocol versions: FT 1.0, 2.0; LP 1.0" in render(build_leaderboard(recs), "md")


def test_protocols_of_different_versions_share_a_table(store: Path) -> None:
    """Versions are per protocol: LP at 2.0 beside FT at 1.0 is not a mix."""
    recs = [RunRecord.model_validate({**r, "suite": "v", "protocol_version": "2.0"})
            for r in fixture_records() if r["protocol"] == "linear_probe"]
    recs += [RunRecord.model_validate({**r, "suite": "v"})
             for r in fixture_records() if r["protocol"] == "fine_tune"]
    chosen = select_records(recs, suite="v")
    assert len(chosen) == len(recs)
    assert "protocol versions: FT 1.0; LP 2.0" in build_leaderboard(chosen).notes


def test_two_runs_of_one_seed_are_not_averaged_as_two_seeds(store: Path) -> None:
    # The same suite rerun with a changed hyperparameter: new run ids, same seeds.
    for rec in fixture_records()[:2]:
        append_record(store, {**rec, "run_id": rec["run_id"] + "-lr2",
                              "metrics": {**rec["metrics"], "mIoU": 0.0}})
    with pytest.raises(ConflictingRecordsError, match=r"mae-T soda fine_tune seed 0: runs "
                       r"mae-tiny-fine_tune-soda-0 \(suite fixture\) and "
                       r"mae-tiny-fine_tune-soda-0-lr2"):
        select_records(read_records(store), suite="fixture")
    # Selecting the runs of one configuration (what --suite <file> does) is fine.
    ids = {r["run_id"] for r in fixture_records()}
    recs = select_records(read_records(store), suite="fixture", run_ids=ids)
    rows = {r.label: r for r in build_leaderboard(recs).rows}
    cell = rows["mae-T"].cells["fine_tune:soda"]
    assert (cell.mean, cell.n) == (40.0, 1)


def test_reference_columns_only_for_the_papers_datasets(store: Path) -> None:
    recs = [r for r in select_records(read_records(store), suite="fixture")
            if r.dataset == "soda"]
    lb = build_leaderboard(recs, load_reference(REFERENCE))
    assert not any(c.kind in ("ref", "diff") for c in lb.columns)
    assert any("paper values not shown" in n for n in lb.notes)


def test_layerwise_best_layer_column() -> None:
    recs = [RunRecord.model_validate({
        **fixture_records()[0], "run_id": f"lw{seed}", "protocol": "layerwise_probe",
        "dataset": "ade20k", "seed": seed,
        "extra": {"per_layer": {str(i): {"mIoU": float(i == 7) * 30 + i + seed}
                            for i in range(12)}},
    }) for seed in (0, 1)]
    lb = build_leaderboard(recs)
    cell = lb.rows[0].cells["layerwise_probe:ade20k"]
    assert cell.mean == pytest.approx(37.5) and cell.note == "L8"
    assert "37.5 ± 0.7 (L8)" in render(lb, "md")


def test_records_of_an_older_store_schema_show_in_tables() -> None:
    """The golden schema-1 store (written before records kept protocol fields under
    ``extra``) still makes a leaderboard: FT, LP and the layer-wise best block."""
    store = GOLDEN / "store" / "schema1-tiny.jsonl"
    board = build_leaderboard(select_records(read_records(store), suite="tiny"))
    assert [c.title for c in board.columns] == [
        "FT soda", "LP soda", "LW best soda", "GFLOPs", "Params (M)"]
    (row,) = board.rows
    assert row.label == "mae-T †" and row.cells["layerwise_probe:soda"].note.startswith("L")
    assert row.cells["linear_probe:soda"].mean is not None
    assert "protocol version 2.0" in render(board, "md")
