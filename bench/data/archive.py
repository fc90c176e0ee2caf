"""Reading dataset archives (zip, tar, tar.gz/bz2/xz) safely and resumably.

Members are written to a temporary name and renamed when complete, so after an
interruption a rerun skips every finished file and redoes only the one that was cut off.
Names that would escape the destination (absolute, ``..``) and links are refused: a
dataset archive holds plain files and folders.
"""

from __future__ import annotations

import functools
import json
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from bench.data.spec import DatasetError
from bench.diskio import atomic_replace

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Written last, one per archive: that archive is wholly in place.
DONE_FORMAT = ".extracted-{name}.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """One archive entry: its normalised relative name, size and kind."""

    name: str
    size: int
    is_dir: bool


def is_archive(path: Path) -> bool:
    """A zip or tar file, told by its content (a Drive download may lose its suffix)."""
    if not path.is_file():
        return False
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def _clean(archive: Path, raw: str) -> str:
    """``raw`` as a safe relative POSIX path; DatasetError for one that escapes."""
    name = raw.replace("\\", "/")  # zips made on Windows may use backslashes
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if name.startswith("/") or (parts and parts[0].endswith(":")) or ".." in parts:
        raise DatasetError(
            f"archive {archive} holds the entry {raw!r}, which points outside the folder it "
            "is extracted to; refusing to extract it"
        )
    return "/".join(parts)


def members(archive: Path) -> list[Member]:
    """The entries of ``archive`` (reading a compressed tar decompresses it once)."""
    out: list[Member] = []
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    name = _clean(archive, info.filename)
                    if name:
                        out.append(Member(name, info.file_size, info.is_dir()))
            return out
        with tarfile.open(archive) as tf:
            for m in tf:
                name = _clean(archive, m.name)
                if not name:
                    continue
                if not (m.isfile() or m.isdir()):
                    raise DatasetError(
                        f"archive {archive} holds {m.name!r}, a link or special file; a "
                        "dataset release holds plain files only"
                    )
                out.append(Member(name, m.size, m.isdir()))
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DatasetError(f"cannot read archive {archive}: it is truncated or corrupt ({exc})") \
            from None
    return out


def _stamp(archive: Path) -> dict:
    st = archive.stat()
    return {"archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _streams(archive: Path) -> Iterator[tuple[str, int, object]]:
    """(name, size, readable) for every file entry, in archive order."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as f:
                        yield _clean(archive, info.filename), info.file_size, f
        return
    with tarfile.open(archive) as tf:
        for m in tf:
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None  # a regular file always has content
                yield _clean(archive, m.name), m.size, f


def _copy(stream: object, part: Path) -> None:
    """One member's bytes into ``part`` (the temp name :func:`atomic_replace` gives)."""
    with open(part, "wb") as out:
        shutil.copyfileobj(stream, out, CHUNK)  # type: ignore[arg-type]


def extract(archive: Path, dest: Path) -> int:
    """Extract ``archive`` into ``dest``; returns the number of files written (0 when a
    previous run finished). Complete files from an interrupted run are kept."""
    done = dest / DONE_FORMAT.format(name=archive.name)
    stamp = _stamp(archive)
    try:
        if json.loads(done.read_text()) == stamp:
            return 0
    except (OSError, ValueError):
        pass
    entries = members(archive)  # refuses unsafe names before anything is written
    for m in entries:
        if m.is_dir:
            (dest / m.name).mkdir(parents=True, exist_ok=True)
    total = sum(1 for m in entries if not m.is_dir)
    written = 0
    try:
        with tqdm(total=total, unit="file", desc=f"extracting {archive.name}", disable=None) as bar:
            for name, size, stream in _streams(archive):
                bar.update(1)
                target = dest / name
                if target.is_file() and target.stat().st_size == size:
                    continue  # finished by an earlier run
                atomic_replace(target, functools.partial(_copy, stream))
                written += 1
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DatasetError(
            f"extracting {archive} into {dest} failed ({exc}); files finished so far are "
            "kept, rerun the same command to go on"
        ) from None
    dest.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(stamp))
    return written
