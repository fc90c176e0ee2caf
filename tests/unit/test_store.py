"""Results store: declared records, atomic appends under concurrency, torn lines skipped."""

from __future__ import annotations

import json
import multiprocessing as mp
import warnings
from pathlib import Path

import pytest

from bench.results.store import (
    STORE_SCHEMA_VERSION,
    RunRecord,
    StoreWarning,
    append_record,
    done_record,
    latest_by_run,
    read_records,
    upgrade_record,
)


def record(run_id: str, status: str = "done", **extra) -> dict:
    base = {
        "run_id": run_id,
        "suite": "unit",
        "protocol": "fine_tune",
        "protocol_version": "1.0",
        "status": status,
        "config": {"seed": 0},
        "model_name": "mae",
        "adapter": "mae",
        "size": "tiny",
        "random_init": True,
        "dataset": "soda",
        "seed": 0,
        "metrics": {"mIoU": 12.5, "mAcc": 20.0, "aAcc": 60.0, "per_class_iou": [1.0] * 21},
    }
    base.update(extra)
    return base


def test_roundtrip_keeps_every_field(tmp_path: Path) -> None:
    store = tmp_path / "s" / "results.jsonl"
    append_record(store, record("a", git={"commit": "abc", "dirty": True}, wall_time_s=3.5))
    (rec,) = read_records(store)
    assert rec.schema_version == STORE_SCHEMA_VERSION
    assert rec.git.commit == "abc" and rec.git.dirty is True
    assert rec.metrics["per_class_iou"] == [1.0] * 21
    assert rec.timestamp.endswith("+00:00")


def test_undeclared_field_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not_a_field"):
        append_record(tmp_path / "r.jsonl", record("a", not_a_field=1))


def test_truncated_last_line_is_skipped_and_next_append_starts_fresh(tmp_path: Path) -> None:
    store = tmp_path / "results.jsonl"
    append_record(store, record("a"))
    append_record(store, record("b"))
    line = json.dumps(record("torn", schema_version=STORE_SCHEMA_VERSION))
    with open(store, "a") as f:
        f.write(line[: len(line) // 2])  # a writer killed mid-record, no newline
    with pytest.warns(StoreWarning, match=r"results.jsonl:3: skipping an unreadable line"):
        assert [r.run_id for r in read_records(store)] == ["a", "b"]
    append_record(store, record("c"))
    with pytest.warns(StoreWarning):
        assert [r.run_id for r in read_records(store)] == ["a", "b", "c"]


def test_garbled_and_foreign_lines_do_not_spoil_the_rest(tmp_path: Path) -> None:
    store = tmp_path / "results.jsonl"
    append_record(store, record("a"))
    with open(store, "a") as f:
        f.write("\x00\x01 not json\n")
        f.write(json.dumps({**record("old"), "schema_version": 0}) + "\n")
        f.write(json.dumps({**record("bad"), "schema_version": 1, "status": "weird"}) + "\n")
        f.write("[1, 2]\n")
    append_record(store, record("b"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [r.run_id for r in read_records(store)]
    assert ids == ["a", "b"]
    messages = [str(w.message) for w in caught if w.category is StoreWarning]
    assert len(messages) == 4
    assert any("schema 0" in m for m in messages)
    assert any("status" in m for m in messages)


def test_latest_by_run_prefers_success() -> None:
    recs = [RunRecord.model_validate(record("a", "failed", error="boom", metrics=None)),
            RunRecord.model_validate(record("a")),
            RunRecord.model_validate(record("b", "failed", error="x", metrics=None)),
            RunRecord.model_validate(record("a", "failed", error="later", metrics=None))]
    latest = latest_by_run(recs)
    assert latest["a"].status == "done"
    assert latest["b"].status == "failed"


def _writer(store: str, worker: int, n: int) -> None:
    for i in range(n):
        # ~10 kB per line: far above PIPE_BUF, so unlocked appends could interleave.
        values = [worker * 1000 + i] * 1500
        append_record(store, record(f"w{worker}-{i}", extra={"per_layer": values}))


def test_concurrent_writers_lose_and_interleave_nothing(tmp_path: Path) -> None:
    store = tmp_path / "results.jsonl"
    workers, n = 4, 25
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(store), w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)  # any torn line fails the test
        recs = read_records(store)
    assert len(recs) == workers * n
    assert len(store.read_text().splitlines()) == workers * n
    for r in recs:
        w, i = (int(x) for x in r.run_id[1:].split("-"))
        assert r.per_layer == [w * 1000 + i] * 1500


def test_undefined_per_class_iou_is_written_as_strict_json_null(tmp_path: Path) -> None:
    store = tmp_path / "r.jsonl"
    metrics = {"mIoU": 50.0, "mAcc": 60.0, "aAcc": 70.0,
               "per_class_iou": [50.0, float("nan")], "per_class_acc": [60.0, float("inf")]}
    append_record(store, record("a", metrics=metrics))

    def refuse(token: str) -> None:
        raise AssertionError(f"non-JSON constant {token} in the store")

    line = store.read_text().strip()
    stored = json.loads(line, parse_constant=refuse)
    assert stored["metrics"]["per_class_iou"] == [50.0, None]
    assert stored["metrics"]["per_class_acc"] == [60.0, None]
    assert read_records(store)[0].metrics["per_class_iou"] == [50.0, None]


# ---------------------------------------------------------------- schema upgrades
GOLDEN_V1 = Path(__file__).resolve().parents[1] / "golden" / "store" / "schema1-tiny.jsonl"


def test_schema1_store_written_by_an_older_version_still_reads(tmp_path: Path) -> None:
    """tests/golden/store/schema1-tiny.jsonl was written by the schema-1 code (a tiny
    suite: three done runs, three failed): every record reads, per_layer and mode moved
    under extra, and done_record finds its runs."""
    lines = GOLDEN_V1.read_text().splitlines()
    assert {json.loads(line)["schema_version"] for line in lines} == {1}
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        recs = read_records(GOLDEN_V1)
    assert [(r.protocol, r.status) for r in recs] == [
        ("fine_tune", "done"), ("linear_probe", "done"), ("layerwise_probe", "done"),
        ("fine_tune", "failed"), ("linear_probe", "failed"), ("layerwise_probe", "failed"),
    ]
    assert all(r.schema_version == STORE_SCHEMA_VERSION for r in recs)
    raw = [json.loads(line) for line in lines]
    lw = recs[2]
    assert lw.per_layer == raw[2]["per_layer"] and sorted(lw.per_layer) == ["0", "1"]
    assert recs[1].mode == raw[1]["mode"] == "on_the_fly" and recs[0].extra == {}
    assert recs[0].metrics == raw[0]["metrics"] and recs[0].flops.total_gmacs > 0
    copy = tmp_path / "results.jsonl"
    copy.write_text(GOLDEN_V1.read_text())
    assert done_record(copy, recs[2].run_id) == lw
    # A new record goes after the old ones in the current schema; both read back.
    append_record(copy, record("new", extra={"lr_sweep": [{"lr": 1e-3}], "knn_k": 20}))
    both = read_records(copy)
    assert len(both) == 7 and both[-1].extra == {"lr_sweep": [{"lr": 1e-3}], "knn_k": 20}
    assert json.loads(copy.read_text().splitlines()[-1])["schema_version"] == 2


def test_upgrade_steps_and_unknown_schemas() -> None:
    v1 = {**record("a"), "schema_version": 1, "per_layer": {"0": {"mIoU": 1.0}},
          "mode": "cached"}
    v2 = upgrade_record(v1)
    assert v2["schema_version"] == 2 and "per_layer" not in v2 and "mode" not in v2
    assert v2["extra"] == {"per_layer": {"0": {"mIoU": 1.0}}, "mode": "cached"}
    assert upgrade_record(v2) == v2  # the current schema is left as it is
    assert upgrade_record({**record("b"), "schema_version": 1})["extra"] == {}
    for version in (0, 3, None, "1"):
        with pytest.raises(ValueError, match=f"store schema {version!r}"):
            upgrade_record({**record("c"), "schema_version": version})


def test_a_protocols_own_fields_are_kept_without_the_store_knowing_them(
    tmp_path: Path,
) -> None:
    store = tmp_path / "r.jsonl"
    extra = {"per_layer": {"3": {"mIoU": 5.0}}, "best_layer": 3, "neighbours": [1, 2]}
    append_record(store, record("a", protocol="knn_probe", extra=extra))
    (rec,) = read_records(store)
    assert rec.extra == extra and rec.per_layer == {"3": {"mIoU": 5.0}} and rec.mode is None
