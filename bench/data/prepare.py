"""``unipbench data prepare``: from a public release as downloaded to a checked dataset root.

The source is an extracted folder or one or more archives (zip/tar; several for a
download split into parts). Archives are extracted into ``ROOT/_release/``; the release is
found by its top-level folders and files (bench.data.releases), then linked into ROOT when
the loader reads it as it is, or converted into ROOT. ``data check`` runs on the result.
Every step skips work a previous run finished, so a rerun after an interruption resumes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.data.archive import extract, is_archive, members
from bench.data.check import CheckReport, check_dataset
from bench.data.layout import quote_some
from bench.data.lookup import get_dataset_info
from bench.data.releases import NOT_CONVERTED, RELEASES, Release
from bench.data.spec import DatasetError, DatasetInfo, Layout

STAGING = "_release"  # inside ROOT: where archives are extracted
MAX_DEPTH = 3  # how deep below the source a release's top folder is looked for


@dataclass
class PrepareResult:
    """What ``prepare_dataset`` did, and the check of the prepared root."""

    dataset: str
    root: Path
    release: str
    folder: Path  # the release's top folder that was read
    layout: str
    extracted: int = 0
    written: int = 0
    linked: list[str] = field(default_factory=list)
    report: CheckReport | None = None

    def summary(self) -> str:
        did = []
        if self.extracted:
            did.append(f"extracted {self.extracted} file(s)")
        if self.written:
            did.append(f"wrote {self.written} file(s)")
        if self.linked:
            did.append(f"linked {', '.join(self.linked)}")
        what = "; ".join(did) or "nothing left to do (prepared by an earlier run)"
        return (
            f"{self.dataset}: {self.release} at {self.folder} -> {self.root} "
            f"(layout {self.layout!r}): {what}"
        )


def _has(rel: Release, dirs: set[str], files: set[str], prefix: str) -> bool:
    p = f"{prefix}/" if prefix else ""
    return all(p + d in dirs for d in rel.dirs) and all(p + f in files for f in rel.files)


def _match(info: DatasetInfo, dirs: set[str], files: set[str]) -> tuple[Release, str] | None:
    """The first release (in table order) found at the shallowest folder of the tree."""
    prefixes = sorted(
        {""} | {d for d in dirs if d.count("/") < MAX_DEPTH}, key=lambda d: (d.count("/"), d)
    )
    for prefix in prefixes:
        if prefix and prefix.split("/")[0] == STAGING:
            continue
        for rel in RELEASES[info.name]:
            if _has(rel, dirs, files, prefix):
                return rel, prefix
    return None


def _tree_of_names(names: Sequence[str], dir_names: Sequence[str]) -> tuple[set[str], set[str]]:
    dirs = set(dir_names)
    for n in names:
        parts = n.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return dirs, set(names)


def _tree_of_folder(folder: Path) -> tuple[set[str], set[str]]:
    """Relative folders and files down to what a release's markers need (no deep walk)."""
    markers = [p for rs in RELEASES.values() for r in rs for p in (*r.dirs, *r.files)]
    need = max(p.count("/") + 1 for p in markers)  # levels below a release's top folder
    dirs: set[str] = set()
    files: set[str] = set()
    stack = [(folder, "", 0)]
    while stack:
        here, rel, depth = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue
        for e in entries:
            name = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir():
                dirs.add(name)
                if depth + 1 < MAX_DEPTH + need and e.name != STAGING:
                    stack.append((Path(e.path), name, depth + 1))
            elif depth < MAX_DEPTH + need:
                files.add(name)
    return dirs, files


def _not_release(info: DatasetInfo, sources: Sequence[Path], top: list[str]) -> DatasetError:
    expected = "; or ".join(f"{r.description}: {r.expected()}" for r in RELEASES[info.name])
    hint = f" ({NOT_CONVERTED[info.name]})" if info.name in NOT_CONVERTED else ""
    what = ", ".join(str(s) for s in sources)
    return DatasetError(
        f"{what} is not a {info.title} release: expected {expected}{hint}. "
        f"Found: {quote_some(sorted(top), 8) or 'nothing'}. Downloads: docs/datasets.md"
    )


def _locate(
    info: DatasetInfo, sources: list[Path], root: Path
) -> tuple[Release, Path, int]:
    """(release, its top folder, files extracted) for a folder or archives."""
    for s in sources:
        if not s.exists():
            raise DatasetError(f"{info.name}: source {s} does not exist")
    if any(s.is_dir() for s in sources):
        if len(sources) > 1:
            raise DatasetError(
                f"{info.name}: give one extracted folder, or archives only (got "
                f"{', '.join(map(str, sources))})"
            )
        dirs, files = _tree_of_folder(sources[0])
        found = _match(info, dirs, files)
        if found is None:
            top = [n + "/" if n in dirs else n for n in dirs | files if "/" not in n]
            raise _not_release(info, sources, top)
        rel, prefix = found
        return rel, sources[0] / prefix, 0
    for s in sources:
        if not is_archive(s):
            hint = f"; {NOT_CONVERTED[info.name]}" if info.name in NOT_CONVERTED else ""
            raise DatasetError(
                f"{s} is neither a folder nor a zip/tar archive; `data prepare {info.name}` "
                f"reads the release as downloaded ({RELEASES[info.name][0].description})"
                + hint
            )
    entries = [m for s in sources for m in members(s)]
    dirs, files = _tree_of_names(
        [m.name for m in entries if not m.is_dir], [m.name for m in entries if m.is_dir]
    )
    found = _match(info, dirs, files)
    if found is None:
        top = sorted({m.name.split("/")[0] + ("/" if "/" in m.name or m.is_dir else "")
                      for m in entries})
        raise _not_release(info, sources, top)
    rel, prefix = found
    staging = root / STAGING
    extracted = sum(extract(s, staging) for s in sources)
    return rel, staging / prefix, extracted


def _link(lay: Layout, folder: Path, root: Path) -> list[str]:
    """Link the layout's folders and split files from the release into ``root``."""
    if folder.resolve() == root.resolve():
        return []
    entries = [lay.img_dir, lay.ann_dir]
    if not lay.by_dir:
        entries += list(dict.fromkeys(lay.splits.values()))
    linked = []
    for entry in entries:
        src, dst = folder / entry, root / entry
        if not src.exists():
            continue  # an optional split file (e.g. MFNet's val.txt)
        if dst.is_symlink() or dst.exists():
            if dst.resolve() == src.resolve():
                continue
            raise DatasetError(
                f"{dst} exists and is not {src}; prepare into an empty --root (or remove it)"
            )
        inside = root.resolve() in src.resolve().parents
        # Relative inside ROOT (the extracted archive), so the root can be moved.
        dst.symlink_to(os.path.relpath(src, root) if inside else src.resolve())
        linked.append(entry)
    return linked


def prepare_dataset(
    name: str, sources: Sequence[str | Path], root: str | Path, full_check: bool = True
) -> PrepareResult:
    """Turn the release at ``sources`` into ``root`` in a layout the loader reads, then
    check it. Raises DatasetError (one line) for a source that is not the release."""
    info = get_dataset_info(name)
    srcs = [Path(s).expanduser() for s in sources]
    if not srcs:
        raise DatasetError(f"{info.name}: no source given (--from FOLDER or ARCHIVE)")
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{info.name}: --root {root} is a file, not a folder")
    rel, folder, extracted = _locate(info, srcs, root)
    root.mkdir(parents=True, exist_ok=True)
    result = PrepareResult(info.name, root, rel.description, folder, rel.layout, extracted)
    if rel.convert is None:
        result.linked = _link(info.layout(rel.layout), folder, root)
    else:
        staged = root.resolve() / STAGING
        f = folder.resolve()
        extracted_here = f == staged or staged in f.parents
        if f == root.resolve() or (root.resolve() in f.parents and not extracted_here):
            raise DatasetError(
                f"{info.name}: the release {folder} is inside --root {root}; the converted "
                "copy would sit beside it and both would be found. Keep the release "
                f"elsewhere (or give its archive, which is extracted into {root / STAGING})"
            )
        result.written = rel.convert(folder, root)
    result.report = check_dataset(info.name, root, full=full_check)
    return result
