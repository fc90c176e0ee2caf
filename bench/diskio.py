"""Writing files safely: atomic replacement, a clear disk-full error, writability checks.

Every file a run writes goes through :func:`atomic_write` (temp file in the same folder,
fsync, rename), so a crash or a full disk leaves the previous version intact. Folders
and files a run will write are checked with :func:`check_writable` before any training,
so a read-only store or workdir fails in seconds instead of after the run.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# A full disk or an exhausted quota: the two ways a write to a local file runs out of room.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# torch's zip writer turns a short write into "[enforce fail at inline_container.cc:...]
# unexpected pos N vs M"; on a local file a short write means the device is full.
_TORCH_SHORT_WRITE = "unexpected pos"


class DiskFullError(OSError):
    """No space left while writing ``path``; the message says what was kept."""

    def __init__(self, path: Path, kept: bool) -> None:
        kept_text = (
            f"the previous {path.name} is kept intact (writes are atomic)"
            if kept
            else "nothing partial was left behind (writes are atomic)"
        )
        self.message = (
            f"no space left on device while writing {path}: {kept_text}; free some space "
            "and rerun"
        )
        super().__init__(errno.ENOSPC, self.message, str(path))

    def __str__(self) -> str:
        return self.message


class NotWritableError(OSError):
    """A folder or file a command must write to is not writable; names it and why."""

    def __init__(self, path: Path, what: str, reason: str) -> None:
        self.message = f"{what} {path} is not writable ({reason}); nothing was run"
        super().__init__(errno.EACCES, self.message, str(path))

    def __str__(self) -> str:
        return self.message


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it was raised from says the device is full."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _NO_SPACE:
            return True
        if isinstance(cur, RuntimeError) and _TORCH_SHORT_WRITE in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path``, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact, never a half-written one; a full
    disk raises :class:`DiskFullError` naming ``path`` and what is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFullError(path, kept=path.exists()) from exc
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def _nearest_existing(path: Path) -> Path:
    cur = path
    while not cur.exists() and cur != cur.parent:
        cur = cur.parent
    return cur


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Raise :class:`NotWritableError` unless ``path`` is, or can be created as, a folder
    this process may write in. Creates nothing.

    ``os.access`` honours read-only mounts even for root, and permissions otherwise.
    """
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        where = "it is" if existing == path else f"{existing} is"
        raise NotWritableError(path, what, f"{where} a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" in {existing}"
        raise NotWritableError(path, what, f"permission denied or read-only file system{where}")
    return path


def check_writable_file(path: str | Path, what: str) -> Path:
    """Raise :class:`NotWritableError` unless ``path`` can be written (or created)."""
    path = Path(path)
    if path.exists():
        if path.is_dir():
            raise NotWritableError(path, what, "it is a folder")
        if not os.access(path, os.W_OK):
            raise NotWritableError(path, what, "permission denied or read-only file system")
        return path
    check_writable_dir(path.parent, f"the folder of the {what}")
    return path


def os_error_line(exc: OSError) -> str:
    """One line for an OSError that names the path: '<path>: <reason>'."""
    if isinstance(exc, DiskFullError | NotWritableError):
        return str(exc)
    if exc.filename is not None:
        reason = exc.strerror or str(exc)
        paths = str(exc.filename)
        if exc.filename2 is not None:
            paths += f" -> {exc.filename2}"
        return f"{paths}: {reason}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
