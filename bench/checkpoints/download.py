"""Downloading checkpoints once into a local cache, verified by sha256 before use.

A download goes to a temporary file beside its final name and is renamed into place only
after its digest matches, so an interrupted or tampered download never looks cached.
:func:`download_resumable` (catalogue checkpoints) keeps that file, ``NAME.part``, when
the connection breaks and continues it with an HTTP Range request the next time.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from bench.checkpoints.reader import CheckpointError, cache_root, cached_sha256, check_sha256
from bench.diskio import atomic_write

CHUNK = 1 << 20
TIMEOUT_S = 60


class DownloadError(CheckpointError):
    """A checkpoint URL that could not be fetched or did not match its sha256."""


def cache_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """``<cache>/<16 hex of sha256(url)>-<basename>``: readable, and distinct per URL."""
    name = Path(unquote(urlparse(url).path)).name or "checkpoint"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_root(cache_dir) / f"{key}-{name}"


def _fetch(url: str, target: Path, expected: str | None) -> None:
    """Stream ``url`` into a temp file in ``target``'s folder; rename once verified."""

    def stream(out: BinaryIO) -> None:
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "unip-bench"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                while block := r.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        got = digest.hexdigest()
        if expected and got != expected:  # raised inside: the temp file is discarded
            raise DownloadError(
                f"download of {url} has sha256 {got}, expected {expected}; the file was "
                "discarded (wrong URL or hash, or the server sent something else)"
            )

    try:
        atomic_write(target, stream)
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from None


def download_cached(
    url: str, sha256: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Local path of ``url``'s content, downloading it only when not cached yet.

    With ``sha256`` a cached copy is verified too (cheaply: digests are remembered per
    file state); a cached copy that does not match is fetched again.
    """
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"only http(s) URLs can be downloaded, not {url!r}")
    expected = check_sha256(sha256) if sha256 else None
    target = cache_path(url, cache_dir)
    if target.is_file() and (expected is None or cached_sha256(target, cache_dir) == expected):
        return target
    _fetch(url, target, expected)
    return target


# --------------------------------------------------------------- resumable downloads
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class Downloaded:
    """A complete download in ``path`` (the ``.part`` file) and its digests."""

    path: Path
    size: int
    sha256: str
    md5: str
    resumed_from: int


def _hashers_over(path: Path, size: int) -> tuple[Any, Any]:
    """sha256 and md5 primed with the first ``size`` bytes already in ``path``."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        left = size
        while left and (block := f.read(min(CHUNK, left))):
            sha.update(block)
            md5.update(block)
            left -= len(block)
    return sha, md5


def _open(url: str, start: int) -> http.client.HTTPResponse:
    headers = {"User-Agent": "unip-bench"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _failed(url: str, exc: Exception) -> DownloadError:
    if isinstance(exc, urllib.error.HTTPError):
        why = f"HTTP {exc.code} {exc.reason}"
        hint = ("the file is not there (any more): check the URL, or whether the publisher "
                "moved it" if exc.code in (403, 404, 410) else "try again later")
    else:
        why = str(getattr(exc, "reason", None) or exc)
        hint = "check the network connection (and proxy settings), then run the command again"
    return DownloadError(f"cannot download {url}: {why}; {hint}")


def download_resumable(
    url: str,
    part: Path,
    desc: str,
    stream: IO[str] | None = None,
    terminal: bool | None = None,
) -> Downloaded:
    """Download ``url`` into ``part``, continuing what ``part`` already holds.

    A server that answers the Range request with 206 gets the rest appended; one that
    ignores it (200) sends the whole file, which replaces ``part``. A broken connection
    leaves ``part`` as far as it got and raises a DownloadError saying that a rerun resumes
    it. The caller checks the digests and renames ``part``: it is never a checkpoint itself.
    """
    from bench.progress import ByteProgress, format_bytes

    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, have)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:
            raise _failed(url, exc) from None
        # 416: nothing lies beyond what we have; the digests decide whether it is all.
        sha, md5 = _hashers_over(part, have)
        return Downloaded(part, have, sha.hexdigest(), md5.hexdigest(), have)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _failed(url, exc) from None
    with resp:
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
            if m is None or int(m.group(1)) != have:
                raise DownloadError(
                    f"cannot resume {url}: the server sent a different range "
                    f"({resp.headers.get('Content-Range')!r}) than asked (from byte {have}); "
                    f"delete {part} and run the command again"
                )
            total = int(m.group(3)) if m.group(3) != "*" else None
            sha, md5 = _hashers_over(part, have)
            mode = "ab"
        else:  # a fresh download, or a server that ignores Range: start over
            have, total, mode = 0, length, "wb"
            sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        progress = ByteProgress(total, initial=have, desc=desc, stream=stream, terminal=terminal)
        if have:
            of = f" of {format_bytes(total)}" if total else ""
            progress.say(f"{desc}: resuming at {format_bytes(have)}{of}")
        size = have
        try:
            with open(part, mode) as out:
                while block := resp.read(CHUNK):
                    out.write(block)
                    sha.update(block)
                    md5.update(block)
                    size += len(block)
                    progress.update(len(block))
        except (OSError, http.client.HTTPException) as exc:
            raise _broken(url, part, size, total, exc) from None
        finally:
            progress.close()
    if total is not None and size != total:
        raise _broken(url, part, size, total, None)
    return Downloaded(part, size, sha.hexdigest(), md5.hexdigest(), have)


def _broken(url: str, part: Path, size: int, total: int | None, exc: Exception | None
            ) -> DownloadError:
    from bench.progress import format_bytes

    of = f" of {format_bytes(total)}" if total else ""
    why = f" ({type(exc).__name__}: {exc})" if exc is not None else " (connection closed)"
    return DownloadError(
        f"download of {url} broke off at {format_bytes(size)}{of}{why}; the partial file "
        f"{part} is kept and running the same command again resumes it"
    )
