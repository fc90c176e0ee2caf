"""URL checkpoints: fetched once from a local HTTP server, verified, cached atomically."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from loopback_http import RangeServer, checkpoint_bytes

from bench.backbones.adapter import load_backbone
from bench.checkpoints.download import DownloadError, cache_path, download_cached
from bench.checkpoints.reader import CheckpointError


@pytest.fixture
def server(monkeypatch) -> Iterator[RangeServer]:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = RangeServer({"/ckpt/mae_tiny.pth": checkpoint_bytes(), "/small.bin": b"hello"})
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def leftovers(cache_dir) -> list[str]:
    return sorted(p.name for p in cache_dir.rglob("*") if p.is_file())


def test_download_with_matching_hash_then_cache_hit(server, tmp_path) -> None:
    url = server.url("/small.bin")
    digest = hashlib.sha256(b"hello").hexdigest()

    path = download_cached(url, sha256=digest, cache_dir=tmp_path)
    assert path.read_bytes() == b"hello"
    assert path == cache_path(url, tmp_path) and path.name.endswith("-small.bin")
    assert len(server.requests) == 1

    again = download_cached(url, sha256=digest, cache_dir=tmp_path)
    assert again == path
    assert len(server.requests) == 1  # served from the cache, no request made
    assert download_cached(url, cache_dir=tmp_path) == path  # without a hash too
    assert len(server.requests) == 1


def test_hash_mismatch_is_an_error_and_leaves_nothing(server, tmp_path) -> None:
    url = server.url("/small.bin")
    with pytest.raises(DownloadError, match=r"small\.bin has sha256 .*expected 0000"):
        download_cached(url, sha256="0" * 64, cache_dir=tmp_path)
    assert leftovers(tmp_path) == []


def test_cached_copy_not_matching_is_fetched_again(server, tmp_path) -> None:
    url = server.url("/small.bin")
    target = cache_path(url, tmp_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"stale or tampered")
    path = download_cached(url, sha256=hashlib.sha256(b"hello").hexdigest(), cache_dir=tmp_path)
    assert path.read_bytes() == b"hello"
    assert len(server.requests) == 1


def test_http_error_is_a_download_error(server, tmp_path) -> None:
    with pytest.raises(DownloadError, match="cannot download .*missing.pth.*404"):
        download_cached(server.url("/missing.pth"), cache_dir=tmp_path)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x.pth"])
def test_only_http_urls(tmp_path, url) -> None:
    with pytest.raises(DownloadError, match="only http"):
        download_cached(url, cache_dir=tmp_path)


def test_load_backbone_from_url(server, tmp_path) -> None:
    url = server.url("/ckpt/mae_tiny.pth")
    digest = hashlib.sha256(server.files["/ckpt/mae_tiny.pth"]).hexdigest()
    bb = load_backbone("mae", "tiny", url, depth=2, sha256=digest, cache_dir=tmp_path)
    assert bb.meta.checkpoint == url
    assert bb.meta.checkpoint_sha256 == digest
    bb2 = load_backbone("mae", "tiny", url, depth=2, cache_dir=tmp_path)
    assert bb2.meta.checkpoint_sha256 == digest  # hashed once, remembered
    assert len(server.requests) == 1


def test_malformed_hash_is_refused_before_any_request(server, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"'sha-of-the-file' is not a sha256 digest"):
        download_cached(server.url("/small.bin"), sha256="sha-of-the-file", cache_dir=tmp_path)
    assert server.requests == [] and leftovers(tmp_path) == []
