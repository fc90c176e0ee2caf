"""Writing files safely: atomic replacement, a clear disk-full error, writability checks.

Every file a run writes goes through :func:`atomic_write` (temp file in the same folder,
fsync, rename) or one of its forms (:func:`atomic_write_text`, :func:`atomic_write_bytes`),
so a crash or a full disk leaves the previous version intact. Files that a writer must
create by name (an image library's ``save``, a hard link) use :func:`atomic_replace`.
Folders and files a run will write are checked with :func:`check_writable` before any
training, so a read-only store or workdir fails in seconds instead of after the run.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
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


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere setting and restoring it is the only way to learn it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _give_mode(tmp: str, path: Path) -> None:
    """The temp file gets ``path``'s mode, or a new file's (mkstemp makes it 0600)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)


def _failed(exc: BaseException, tmp: str | Path | None, path: Path) -> BaseException:
    """Remove the temp file; a full disk becomes :class:`DiskFullError` naming ``path``."""
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)
    if is_disk_full(exc):
        return DiskFullError(path, kept=path.exists())
    return exc


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path``, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact, never a half-written one; a full
    disk raises :class:`DiskFullError` naming ``path`` and what is kept. The file keeps
    the mode of the one it replaces (a new one gets the umask's, as ``open`` gives it).
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
        _give_mode(tmp, path)
        os.replace(tmp, path)
    except BaseException as exc:
        err = _failed(exc, tmp, path)
        if err is exc:
            raise
        raise err from exc
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_replace(path: str | Path, make: Callable[[Path], None]) -> Path:
    """Call ``make(tmp)`` to create the new file at a fresh temp path next to ``path``,
    then rename it over ``path``.

    For writers that need a file name (an image library's ``save``, ``os.link``); nothing
    exists at ``tmp`` beforehand. Not fsynced: meant for bulk files a rerun rebuilds
    (prepared datasets); what must survive a power cut goes through :func:`atomic_write`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        make(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        err = _failed(exc, tmp, path)
        if err is exc:
            raise
        raise err from exc
    return path


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
