"""The results store: an append-only JSONL file, one declared, versioned record per run.

A record's fields are those every run has; what a protocol adds to its result
(``per_layer``, ``lr_sweep``, a plug-in's own fields) is kept under ``extra`` without the
store knowing it. Records of an older schema are upgraded when read (:data:`UPGRADES`),
so a schema change never hides the results already stored.

Writers take a file lock and append each record with a single ``write`` + flush + fsync,
so concurrent runs never interleave or lose a record; under the same lock a second
``done`` record of a run id is refused, so a run is recorded done once whoever finishes
it. Readers skip a half-written or garbled line with a warning instead of failing, and
never let it spoil the others.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.jsonsafe import json_safe

# 2: protocol-specific result fields (per_layer, mode, ...) moved under ``extra``.
STORE_SCHEMA_VERSION = 2
DEFAULT_STORE = Path("results/store/results.jsonl")
# Long enough for a slow network file system, short enough to notice a stale lock.
LOCK_TIMEOUT_S = 120


class StoreWarning(UserWarning):
    """A store line that could not be read; the rest of the store is still used."""


class FlopsInfo(BaseModel):
    """How much a forward pass costs and how that was counted (see :mod:`bench.backbones.flops`)."""

    model_config = ConfigDict(extra="allow")

    backbone_gmacs: float
    total_gmacs: float
    backbone_gmacs_no_attn: float | None = None
    total_gmacs_no_attn: float | None = None
    params_m: float
    backbone_params_m: float | None = None
    input_size: list[int]
    counter: str
    convention: str
    attention_matmuls_included: bool


class GitInfo(BaseModel):
    commit: str | None = None
    dirty: bool | None = None


class RunRecord(BaseModel):
    """One finished (done or failed) run. Bump STORE_SCHEMA_VERSION on breaking changes."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = STORE_SCHEMA_VERSION
    run_id: str
    suite: str
    protocol: str
    protocol_version: str
    status: Literal["done", "failed"]
    error: str | None = None
    # the run's identity, fully resolved (what the run id hashes)
    config: dict[str, Any]
    model_name: str
    adapter: str
    size: str
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    random_init: bool
    dataset: str
    dataset_root: str | None = None
    dataset_fingerprint: dict[str, str] | None = None  # split -> sha256 of its file list
    seed: int
    # results
    metrics: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    # The protocol's own result fields (e.g. per_layer, mode, lr_sweep), as it returned them.
    extra: dict[str, Any] = Field(default_factory=dict)
    inference: dict[str, Any] | None = None
    iterations: int | None = None
    flops: FlopsInfo | None = None
    params_m: float | None = None
    wall_time_s: float | None = None  # the session that finished the run
    train_time_s: float | None = None  # training loop over all sessions (resumes included)
    # provenance
    git: GitInfo = Field(default_factory=GitInfo)
    versions: dict[str, str | None] = Field(default_factory=dict)
    device: dict[str, Any] | str | None = None  # what the protocol ran on
    host: str | None = None
    timestamp: str = Field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def per_layer(self) -> Any:
        """Metrics per probed block of a ``per_layer`` protocol (None for others)."""
        return self.extra.get("per_layer")

    @property
    def mode(self) -> str | None:
        return self.extra.get("mode")


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 kept ``per_layer`` and ``mode`` at the top level, and nothing else a
    protocol returned: they move under ``extra``."""
    out = dict(data)
    extra = dict(out.pop("extra", None) or {})
    for key in ("per_layer", "mode"):
        value = out.pop(key, None)
        if value is not None:
            extra[key] = value
    out["extra"] = extra
    out["schema_version"] = 2
    return out


# schema version -> function turning a record of that version into the next one.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def upgrade_record(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` in the current schema, upgraded step by step from an older one; a
    ValueError for a schema this version cannot read (a newer one, or no version)."""
    version = data.get("schema_version")
    while version != STORE_SCHEMA_VERSION:
        step = UPGRADES.get(version) if isinstance(version, int) else None
        if step is None:
            raise ValueError(
                f"a record of store schema {version!r} (this version reads "
                f"{', '.join(map(str, sorted(UPGRADES)))} and {STORE_SCHEMA_VERSION})"
            )
        data = step(data)
        version = data.get("schema_version")
    return data


def append_record(path: str | Path, record: RunRecord | dict) -> bool:
    """Append one record atomically with respect to other writers using the same lock.

    Returns False, writing nothing, for a ``done`` record of a run id that already has
    one: two processes that both finished a run must not leave two results of it.
    """
    rec = record if isinstance(record, RunRecord) else RunRecord.model_validate(record)
    line = json.dumps(json_safe(rec.model_dump(mode="json")), sort_keys=True, allow_nan=False)
    line += "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        if rec.status == "done" and done_record(path, rec.run_id) is not None:
            return False
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = line.encode()
            # A writer killed mid-line leaves no newline at the end; start on a fresh line
            # so the torn record is skipped on read instead of swallowing this one.
            size = os.fstat(fd).st_size
            if size and _last_byte(path) != b"\n":
                data = b"\n" + data
            written = os.write(fd, data)
            if written != len(data):  # a single write short of the data: disk full etc.
                raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
    return True


def done_record(path: str | Path, run_id: str) -> RunRecord | None:
    """The store's ``done`` record of ``run_id`` as a reader would take it, else None.

    Lines are written with sorted keys and json's default separators, so only lines that
    hold ``"run_id": "<id>"`` are parsed: a large store costs one read.
    """
    path = Path(path)
    if not path.exists():
        return None
    needle = json.dumps({"run_id": run_id})[1:-1].encode()
    with open(path, "rb") as f:
        for raw in f:
            if needle not in raw:
                continue
            try:
                rec = RunRecord.model_validate(upgrade_record(json.loads(raw)))
            except (ValueError, TypeError, AttributeError):
                continue  # torn, garbled or foreign: readers skip it too
            if rec.run_id == run_id and rec.status == "done":
                return rec
    return None


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def iter_records(path: str | Path) -> Iterator[RunRecord]:
    """Every readable record in file order; unreadable lines are skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            text = raw.strip()
            if not text:
                continue
            try:
                data = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError):
                warnings.warn(
                    f"{path}:{lineno}: skipping an unreadable line (half-written or garbled)",
                    StoreWarning,
                    stacklevel=2,
                )
                continue
            if not isinstance(data, dict):
                warnings.warn(f"{path}:{lineno}: skipping a non-object line", StoreWarning,
                              stacklevel=2)
                continue
            try:
                data = upgrade_record(data)
            except ValueError as exc:
                warnings.warn(f"{path}:{lineno}: skipping {exc}", StoreWarning, stacklevel=2)
                continue
            try:
                yield RunRecord.model_validate(data)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                warnings.warn(
                    f"{path}:{lineno}: skipping an invalid record ({where}: {first['msg']})",
                    StoreWarning,
                    stacklevel=2,
                )


def read_records(path: str | Path) -> list[RunRecord]:
    return list(iter_records(path))


def latest_by_run(records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """The record that counts for each run id: the last ``done`` one, else the last one.

    A run that failed and later succeeded is done; a later failure of a rerun (e.g. with
    ``--force``) does not hide an earlier success.
    """
    out: dict[str, RunRecord] = {}
    for rec in records:
        prev = out.get(rec.run_id)
        if prev is None or rec.status == "done" or prev.status != "done":
            out[rec.run_id] = rec
    return out
