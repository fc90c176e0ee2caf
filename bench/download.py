"""Downloading checkpoints once into a local cache, verified by sha256 before use.

A download goes to a temporary file beside its final name and is renamed into place only
after its digest matches, so an interrupted or tampered download never looks cached.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from bench.checkpoint import CheckpointError, cache_root, cached_sha256, check_sha256

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
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "unip-bench"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                while block := r.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        got = digest.hexdigest()
        if expected and got != expected:
            raise DownloadError(
                f"download of {url} has sha256 {got}, expected {expected}; the file was "
                "discarded (wrong URL or hash, or the server sent something else)"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


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
