"""Results store: declared records, atomic appends under concurrency, torn lines skipped."""

from __future__ import annotations

import json
import multiprocessing as mp
import warnings
from pathlib import Path

import pytest

from bench.store import (
    STORE_SCHEMA_VERSION,
    RunRecord,
    StoreWarning,
    append_record,
    latest_by_run,
    read_records,
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
        append_record(store, record(f"w{worker}-{i}", per_layer=[worker * 1000 + i] * 1500))


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
