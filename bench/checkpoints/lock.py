"""``checkpoints.lock``: the sha256 of every catalogue checkpoint fetched, pinned.

The first ``unipbench checkpoints fetch`` of an id records the file's full sha256, size and
URL here; every later load of the id compares the cached file with the pin, so a file that
changed (on the server, or in the cache) stops the run with both digests named. The lock
is plain JSON, sorted, meant to be committed beside the suites it pins.

Where it is: ``--lock`` on the command line, else ``$UNIPBENCH_LOCK``, else
``checkpoints.lock`` in the working directory (where relative suite paths are taken from).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from bench.checkpoints.reader import CheckpointError, check_sha256
from bench.diskio import atomic_write_text

LOCK_NAME = "checkpoints.lock"
LOCK_ENV = "UNIPBENCH_LOCK"
LOCK_VERSION = 1


class LockFileError(CheckpointError):
    """A lock file that cannot be read or does not have the expected shape."""


@dataclass(frozen=True)
class Pin:
    """What was fetched for one id."""

    sha256: str
    size: int
    url: str
    file: str


def lock_path(path: str | Path | None = None) -> Path:
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(LOCK_ENV)
    return Path(env).expanduser() if env else Path(LOCK_NAME)


def read_lock(path: str | Path | None = None) -> dict[str, Pin]:
    """The pins of the lock file (none when it does not exist yet)."""
    p = lock_path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LockFileError(f"cannot read lock file {p}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LockFileError(
            f"lock file {p} is not valid JSON (line {exc.lineno}: {exc.msg}); fix it, or delete "
            "it and fetch the checkpoints again to re-pin them"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
        raise LockFileError(f"lock file {p}: expected {{'version': 1, 'checkpoints': {{id: pin}}}}")
    if data.get("version") != LOCK_VERSION:
        raise LockFileError(f"lock file {p}: version {data.get('version')!r} is not supported "
                            f"(this unipbench writes version {LOCK_VERSION})")
    pins: dict[str, Pin] = {}
    for cid, raw in data["checkpoints"].items():
        try:
            pins[cid] = Pin(
                sha256=check_sha256(raw["sha256"], "sha256"),
                size=int(raw["size"]),
                url=str(raw["url"]),
                file=str(raw["file"]),
            )
        except (TypeError, KeyError, ValueError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise LockFileError(f"lock file {p}: checkpoints.{cid}: {detail}") from None
    return pins


def write_pin(path: str | Path | None, cid: str, pin: Pin) -> Path:
    """Add or replace ``cid``'s pin; concurrent writers (parallel fetches) are serialised."""
    p = lock_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(p.with_name(f".{p.name}.lock"))):
        pins = read_lock(p)
        pins[cid] = pin
        body = {
            "version": LOCK_VERSION,
            "checkpoints": {k: asdict(v) for k, v in sorted(pins.items())},
        }
        atomic_write_text(p, json.dumps(body, indent=2) + "\n")
    return p
