"""Catalogue checkpoints on disk: fetched into the cache, pinned, verified, resolved.

A catalogue id's file lives at ``<cache>/<id>/<publisher's file name>`` (the cache is
``$UNIPBENCH_CACHE/checkpoints``, by default ``~/.cache/unipbench/checkpoints``); while it
downloads it is ``<file>.part``, which is resumed, never loaded. ``fetch`` checks every
digest the publisher states and pins the file's sha256 in the lock file
(:mod:`bench.checkpoints.lock`); ``resolve_id`` — what loading an id goes through — finds
the cached file and compares it with the pin before anything reads it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from filelock import FileLock

from bench.checkpoints.catalogue import (
    CatalogueError,
    Entry,
    get_entry,
    is_catalogue_id,
    load_catalogue,
    unknown_id_message,
)
from bench.checkpoints.download import CHUNK, DownloadError, download_resumable
from bench.checkpoints.lock import Pin, lock_path, read_lock, write_pin
from bench.checkpoints.reader import cache_root, cached_sha256, sha256_file


def cached_file(entry: Entry, cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / entry.id / str(entry.file)


def partial_of(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def fetch_command(cid: str, force: bool = False) -> str:
    return f"`unipbench checkpoints fetch {'--force ' if force else ''}{cid}`"


def _no_download(entry: Entry) -> CatalogueError:
    return CatalogueError(f"checkpoint {entry.id} has no download: {entry.unavailable}")


def _mismatch(
    entry: Entry | None,
    sha256: str,
    md5: str | None = None,
    pin: Pin | None = None,
    lock: Path | None = None,
    expected: str | None = None,
) -> str | None:
    """What is wrong with a file of digest ``sha256`` (and ``md5``) for ``entry``, or None."""
    if pin is not None and sha256 != pin.sha256:
        return f"has sha256 {sha256}, but {lock} pins {pin.sha256}"
    if expected and sha256 != expected:
        return f"has sha256 {sha256}, the suite expects {expected}"
    if entry is None:
        return None
    if entry.sha256 and sha256 != entry.sha256:
        return f"has sha256 {sha256}, the publisher states {entry.sha256}"
    if entry.sha256_prefix and not sha256.startswith(entry.sha256_prefix):
        return (f"has sha256 {sha256}, but its published name says it starts with "
                f"{entry.sha256_prefix}")
    if md5 is not None and entry.md5_prefix and not md5.startswith(entry.md5_prefix):
        return f"has md5 {md5}, the publisher lists md5 starting {entry.md5_prefix}"
    return None


# ------------------------------------------------------------------------- resolve
def resolve_id(
    cid: str,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    lock: str | Path | None = None,
) -> tuple[Path, str]:
    """The cached file of catalogue id ``cid`` and its sha256, checked against its pin.

    Refuses (one line, with the command that fixes it) an id not fetched yet, a file not
    pinned in the lock (unless ``sha256`` or the publisher gives the digest), and a file
    whose digest differs from the pin, ``sha256`` or the publisher's.
    """
    entry = get_entry(cid)
    if entry.unavailable:
        raise _no_download(entry)
    path = cached_file(entry, cache_dir)
    if not path.is_file():
        part = partial_of(path)
        kept = f" (the interrupted download {part} is resumed)" if part.exists() else ""
        raise CatalogueError(
            f"checkpoint {cid} is not downloaded yet: run {fetch_command(cid)}{kept}"
        )
    lock_file = lock_path(lock)
    pin = read_lock(lock_file).get(cid)
    digest = cached_sha256(path, cache_dir)
    wrong = _mismatch(entry, digest, pin=pin, lock=lock_file, expected=sha256)
    if wrong:
        raise CatalogueError(
            f"checkpoint {cid} ({path}) {wrong}: the file changed since it was fetched; "
            f"run {fetch_command(cid, force=True)} to download it again"
        )
    if pin is None and not sha256 and not entry.sha256:
        raise CatalogueError(
            f"checkpoint {cid} is in the cache ({path}) but not pinned in {lock_file}: run "
            f"{fetch_command(cid)} to verify and pin it"
        )
    return path, digest


def resolve_spec(
    spec: str, sha256: str | None = None, cache_dir: str | Path | None = None
) -> tuple[Path, str] | None:
    """``resolve_id`` for a catalogue id; None for anything else (a path, a URL).

    An id-shaped name that is neither an id nor an existing path is an error with the
    closest ids, rather than a bare "does not exist".
    """
    if is_catalogue_id(spec):
        return resolve_id(spec, sha256=sha256, cache_dir=cache_dir)
    message = unknown_id_message(spec)
    if message:
        raise CatalogueError(message)
    return None


def catalogue_identity(cid: str, sha256: str | None = None, lock: str | Path | None = None
                       ) -> str:
    """What identifies an id's weights in a run id: the expected digest (given, pinned or
    published), else the id itself until the file is pinned."""
    if sha256:
        return sha256.lower()
    pin = read_lock(lock).get(cid)
    if pin is not None:
        return pin.sha256
    entry = get_entry(cid)
    return entry.sha256 or f"catalogue:{cid}"


# ------------------------------------------------------------------------- fetch
@dataclass(frozen=True)
class Fetched:
    id: str
    path: Path
    sha256: str
    size: int
    how: str  # "cached", "downloaded" or "resumed"
    pinned_now: bool


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch(
    cid: str,
    cache_dir: str | Path | None = None,
    lock: str | Path | None = None,
    force: bool = False,
    stream: IO[str] | None = None,
    terminal: bool | None = None,
) -> Fetched:
    """Download ``cid`` into the cache (resuming a ``.part``), verify it, pin it.

    A cached file that matches its pin (or, unpinned, the publisher's digests) is kept
    unless ``force``. A download that does not match is discarded with an error naming
    both digests; the pin is never changed by a download that disagrees with it.
    """
    entry = get_entry(cid)
    if entry.unavailable:
        raise _no_download(entry)
    url = str(entry.download_url)
    target = cached_file(entry, cache_dir)
    lock_file = lock_path(lock)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One download of a file at a time (parallel fetches, job arrays sharing a cache).
    with FileLock(str(target.with_name(f".{target.name}.lock"))):
        pin = read_lock(lock_file).get(cid)
        if target.is_file() and not force:
            digest = cached_sha256(target, cache_dir)
            md5 = _md5_file(target) if entry.md5_prefix and pin is None else None
            if _mismatch(entry, digest, md5, pin=pin, lock=lock_file) is None:
                pinned_now = pin is None
                if pinned_now:
                    write_pin(lock_file, cid, Pin(digest, target.stat().st_size, url, target.name))
                return Fetched(cid, target, digest, target.stat().st_size, "cached", pinned_now)
        part = partial_of(target)
        if force:
            part.unlink(missing_ok=True)
        got = download_resumable(url, part, desc=cid, stream=stream, terminal=terminal)
        wrong = _mismatch(entry, got.sha256, got.md5, pin=pin, lock=lock_file)
        if wrong:
            part.unlink(missing_ok=True)
            advice = (
                f"If the publisher replaced the file on purpose, remove {cid!r} from "
                f"{lock_file} and fetch again" if pin is not None and got.sha256 != pin.sha256
                else "The download is corrupt or the server sent another file: try again, "
                "and report it to the publisher if it persists."
            )
            raise DownloadError(
                f"download of {cid} from {url} {wrong}; the file was discarded. {advice}"
            )
        os.replace(part, target)
        pinned_now = pin is None
        if pinned_now:
            write_pin(lock_file, cid, Pin(got.sha256, got.size, url, target.name))
    cached_sha256(target, cache_dir)  # remember the digest, so that loading does not rehash
    how = "resumed" if got.resumed_from else "downloaded"
    return Fetched(cid, target, got.sha256, got.size, how, pinned_now)


# ------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class Verdict:
    what: str
    ok: bool
    message: str


def verify_id(cid: str, cache_dir: str | Path | None = None, lock: str | Path | None = None
              ) -> Verdict:
    """Re-read ``cid``'s cached file in full and compare it with its pin and the publisher's
    digests (unlike loading, which trusts a digest remembered for an unchanged file)."""
    lock_file = lock_path(lock)
    pin = read_lock(lock_file).get(cid)
    entry = load_catalogue().get(cid)
    if entry is None and pin is None:
        get_entry(cid)  # raises: unknown id, with suggestions
    if entry is not None and entry.unavailable:
        return Verdict(cid, False, f"no download: {entry.unavailable}")
    name = pin.file if pin is not None else str(entry.file)  # type: ignore[union-attr]
    path = cache_root(cache_dir) / cid / name
    if not path.is_file():
        return Verdict(cid, False, f"not downloaded ({path}): run {fetch_command(cid)}")
    digest = sha256_file(path)
    md5 = _md5_file(path) if entry is not None and entry.md5_prefix else None
    wrong = _mismatch(entry, digest, md5, pin=pin, lock=lock_file)
    if wrong:
        return Verdict(cid, False, f"{path} {wrong}: run {fetch_command(cid, force=True)}")
    if pin is None:
        return Verdict(cid, False,
                       f"{path} is not pinned in {lock_file}: run {fetch_command(cid)}")
    return Verdict(cid, True, f"{path} sha256 {digest} (pinned)")


def verify_file(path: Path, lock: str | Path | None = None) -> Verdict:
    """Which catalogue checkpoint the file ``path`` is, by its digests (e.g. a file
    downloaded by hand): a pinned id with its sha256, or an entry of the same file name
    whose published digest it matches; a mismatch with a same-named entry fails."""
    lock_file = lock_path(lock)
    digest = sha256_file(path)
    pinned = [cid for cid, pin in read_lock(lock_file).items() if pin.sha256 == digest]
    if pinned:
        return Verdict(str(path), True, f"sha256 {digest}: {', '.join(pinned)} (pinned)")
    same_name = [e for e in load_catalogue().values() if e.file == path.name and e.digest_claims]
    if not same_name:
        return Verdict(str(path), True, f"sha256 {digest}: no pinned or published digest to "
                       "compare with")
    md5 = _md5_file(path) if any(e.md5_prefix for e in same_name) else None
    problems = {e.id: _mismatch(e, digest, md5) for e in same_name}
    matched = [cid for cid, wrong in problems.items() if wrong is None]
    if matched:
        return Verdict(str(path), True, f"sha256 {digest}: matches the published digest of "
                       f"{', '.join(matched)}")
    cid, wrong = next(iter(problems.items()))
    return Verdict(str(path), False, f"{wrong} (named like catalogue {cid}): it is not the "
                   f"published file; download it again ({fetch_command(cid)})")


# ------------------------------------------------------------------------- list
def status(entry: Entry, pins: dict[str, Pin], cache_dir: str | Path | None = None) -> str:
    """'pinned', 'cached, not pinned', 'partial 12.0 MiB', 'not fetched' or 'no download'."""
    from bench.progress import format_bytes

    if entry.unavailable:
        return "no download"
    path = cached_file(entry, cache_dir)
    if path.is_file():
        return "pinned" if entry.id in pins else "cached, not pinned"
    part = partial_of(path)
    if part.is_file():
        return f"partial {format_bytes(part.stat().st_size)}"
    return "not fetched"
