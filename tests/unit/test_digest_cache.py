"""One digest cache: a file is hashed once per state, by whichever command meets it first."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import bench.checkpoints.reader as ckpt_mod
from bench.checkpoints.reader import DigestCache, cache_root, cached_sha256


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = ckpt_mod.sha256_file

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "sha256_file", counting)
    return calls


def test_digest_is_the_files_sha256(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"weights" * 1000)
    expected = hashlib.sha256(b"weights" * 1000).hexdigest()
    assert DigestCache(tmp_path / "d").sha256(path) == expected
    assert DigestCache(None).sha256(str(path)) == expected


def test_records_are_shared_between_caches_on_one_folder(tmp_path: Path, hashed) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"a")
    first = DigestCache(tmp_path / "d").sha256(path)
    assert DigestCache(tmp_path / "d").sha256(path) == first
    assert len(hashed) == 1
    assert len(list((tmp_path / "d").glob("*.json"))) == 1
    assert [p.name for p in (tmp_path / "d").iterdir() if p.suffix != ".json"] == []


def test_expanding_a_suite_and_loading_share_the_checkpoint_caches_records(
    tmp_path: Path, hashed
) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"weights")
    DigestCache(cache_root(tmp_path / "cache") / "digests").sha256(path)  # the runner's
    assert cached_sha256(path, tmp_path / "cache") == hashlib.sha256(b"weights").hexdigest()
    assert len(hashed) == 1


def test_a_rewritten_file_is_hashed_again(tmp_path: Path, hashed) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"one")
    cache = DigestCache(tmp_path / "d")
    assert cache.sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"two")  # same size; only the mtime tells
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.sha256(path) == hashlib.sha256(b"two").hexdigest()
    assert DigestCache(tmp_path / "d").sha256(path) == hashlib.sha256(b"two").hexdigest()
    assert len(hashed) == 2


def test_without_a_folder_digests_last_as_long_as_the_cache(tmp_path: Path, hashed) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    cache = DigestCache(None)
    cache.sha256(path)
    cache.sha256(path)
    assert len(hashed) == 1
    DigestCache(None).sha256(path)
    assert len(hashed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]


def test_an_unusable_folder_only_costs_a_hash(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert DigestCache(blocked).sha256(path) == hashlib.sha256(b"x").hexdigest()
    assert blocked.read_text() == ""
