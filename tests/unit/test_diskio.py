"""Atomic writes: whole files or the previous version, with the permissions ``open`` gives."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from bench.diskio import (
    DiskFullError,
    atomic_replace,
    atomic_write_bytes,
    atomic_write_text,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_text_and_bytes_land_whole_and_leave_no_temp_file(tmp_path: Path) -> None:
    text = tmp_path / "sub" / "a.json"
    assert atomic_write_text(text, "{\"é\": 1}\n") == text
    assert text.read_bytes() == "{\"é\": 1}\n".encode()
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    atomic_write_text(text, "second")
    assert text.read_text() == "second"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.bin", "sub"]


def test_a_new_file_gets_the_mode_open_gives_it(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        (tmp_path / "plain").write_text("x")  # what a plain write gives, under this umask
        atomic_write_text(tmp_path / "atomic", "x")
        atomic_replace(tmp_path / "made", lambda p: p.write_text("x"))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "plain") == 0o640
    assert _mode(tmp_path / "atomic") == _mode(tmp_path / "made") == 0o640


def test_a_rewritten_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "pins.lock"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o640


def test_replace_by_name_can_hard_link(tmp_path: Path) -> None:
    src = tmp_path / "release.png"
    src.write_bytes(b"png")
    target = tmp_path / "root" / "img.png"
    seen: list[Path] = []

    def link(tmp: Path) -> None:
        seen.append(tmp)
        assert not tmp.exists() and tmp.parent == target.parent
        os.link(src, tmp)

    atomic_replace(target, link)
    assert target.read_bytes() == b"png" and target.stat().st_ino == src.stat().st_ino
    assert not seen[0].exists() and seen[0].name.startswith(".img.png.")


def test_failed_replace_keeps_the_previous_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "split.txt"
    target.write_text("a\n")

    def half(tmp: Path) -> None:
        tmp.write_text("b\n")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_replace(target, half)
    assert target.read_text() == "a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["split.txt"]


def test_full_disk_in_replace_names_the_file(tmp_path: Path) -> None:
    def full(tmp: Path) -> None:
        tmp.write_bytes(b"part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "label.png"
    with pytest.raises(DiskFullError, match=f"while writing {target}: nothing partial"):
        atomic_replace(target, full)
    assert list(tmp_path.iterdir()) == []
