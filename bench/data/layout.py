"""Finding a dataset's layout under a root folder and listing the samples of a split."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.data.spec import DatasetError, DatasetInfo, Layout

log = logging.getLogger(__name__)

MAX_LISTED = 5  # offending entries quoted in a message before "... and N more"


@dataclass(frozen=True)
class ResolvedLayout:
    """A layout bound to the folder that holds it."""

    layout: Layout
    root: Path  # the folder the layout's relative paths start from
    given_root: Path
    detected: bool

    def describe(self) -> str:
        how = "detected from the folder structure" if self.detected else "given"
        where = "" if self.root == self.given_root else f" in sub-folder {self.root.name}/"
        return f"layout {self.layout.name!r} ({how}){where}"


@dataclass
class SplitListing:
    """The samples of one split: names with both files, and what is missing."""

    split: str
    names: list[str]
    images: list[Path]
    labels: list[Path]
    source: Path  # split file or image sub-folder
    missing_images: list[str] = field(default_factory=list)
    missing_labels: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def quote_some(items: list, n: int = MAX_LISTED) -> str:
    """'a, b, c ... and 7 more' for messages."""
    head = ", ".join(str(i) for i in items[:n])
    return head + (f" ... and {len(items) - n} more" if len(items) > n else "")


def _matches(lay: Layout, folder: Path) -> bool:
    return all((folder / m).is_dir() for m in lay.markers())


def resolve_layout(
    info: DatasetInfo, root: str | Path, layout: str | None = None
) -> ResolvedLayout:
    """Bind ``layout`` (or the one the folder's structure shows) to ``root``.

    Raises ``DatasetError`` naming the folder and what was expected when nothing or more
    than one layout matches.
    """
    given = Path(root).expanduser()
    if not given.is_dir():
        what = "is a file, not a folder" if given.exists() else "does not exist"
        raise DatasetError(f"{info.name}: dataset folder {given} {what}")
    candidates = [info.layout(layout)] if layout else list(info.layouts)
    found: list[tuple[Layout, Path]] = []
    for lay in candidates:
        for folder in (given, *(given / n for n in lay.nested)):
            if _matches(lay, folder):
                found.append((lay, folder))
                break
    if len(found) > 1:
        names = ", ".join(f"{lay.name!r} ({lay.expected()})" for lay, _ in found)
        raise DatasetError(
            f"{info.name}: folder {given} matches several layouts: {names}; "
            f"pick one with --layout / layout="
        )
    if not found:
        present = sorted(p.name + ("/" if p.is_dir() else "") for p in given.iterdir())
        expected = "; ".join(f"{lay.name!r}: {lay.expected()}" for lay in candidates)
        raise DatasetError(
            f"{info.name}: folder {given} does not hold a known layout. Expected "
            f"{expected}. Found: {quote_some(present, 12) or 'an empty folder'}"
        )
    lay, folder = found[0]
    resolved = ResolvedLayout(lay, folder, given, detected=layout is None)
    log.info("%s at %s: %s", info.name, given, resolved.describe())
    return resolved


def _names_in(folder: Path, suffix: str) -> dict[str, Path]:
    """Stem -> path for the files of ``folder`` ending in ``suffix`` (one listing, no stats)."""
    if not folder.is_dir():
        return {}
    return {
        p.name[: -len(suffix)]: p
        for p in folder.iterdir()
        if p.name.endswith(suffix) and not p.name.startswith(".")
    }


def _split_file_names(lay: Layout, path: Path) -> list[str]:
    names = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if lay.split_line == "first_path_stem":
            line = Path(line.split()[0]).name
        # Some copies list file names rather than stems.
        names.append(line[: -len(lay.img_suffix)] if line.endswith(lay.img_suffix) else line)
    return names


def split_source(res: ResolvedLayout, split: str) -> Path:
    """The split file (or image sub-folder) that defines ``split``."""
    lay = res.layout
    if split not in lay.splits:
        raise DatasetError(f"layout {lay.name!r} has no split {split!r}; it has {list(lay.splits)}")
    if lay.by_dir:
        return res.root / lay.img_dir / lay.splits[split]
    return res.root / lay.splits[split]


def list_split(info: DatasetInfo, res: ResolvedLayout, split: str) -> SplitListing:
    """The samples of ``split``; pairs with a missing file are reported, not listed."""
    if split not in info.splits:
        raise DatasetError(
            f"{info.name} has no split {split!r}; its splits are {', '.join(info.splits)}"
        )
    lay = res.layout
    src = split_source(res, split)
    if lay.by_dir:
        img_dir = res.root / lay.img_dir / lay.splits[split]
        ann_dir = res.root / lay.ann_dir / lay.splits[split]
        if not img_dir.is_dir():
            raise DatasetError(f"{info.name} {split}: image folder {img_dir} does not exist")
        imgs = _names_in(img_dir, lay.img_suffix)
        anns = _names_in(ann_dir, lay.ann_suffix)
        wanted = sorted(set(imgs) | set(anns))
        dups: list[str] = []
    else:
        if not src.is_file():
            raise DatasetError(
                f"{info.name} {split}: split file {src} does not exist "
                f"(layout {lay.name!r} expects {lay.expected()})"
            )
        imgs = _names_in(res.root / lay.img_dir, lay.img_suffix)
        anns = _names_in(res.root / lay.ann_dir, lay.ann_suffix)
        listed = _split_file_names(lay, src)
        wanted = list(dict.fromkeys(listed))
        dups = sorted(n for n, k in Counter(listed).items() if k > 1)
    out = SplitListing(split, [], [], [], src, duplicates=dups)
    for n in wanted:
        img, ann = imgs.get(n), anns.get(n)
        if img is None:
            out.missing_images.append(n)
        if ann is None:
            out.missing_labels.append(n)
        if img is not None and ann is not None:
            out.names.append(n)
            out.images.append(img)
            out.labels.append(ann)
    return out


def unpaired_message(info: DatasetInfo, res: ResolvedLayout, listing: SplitListing) -> list[str]:
    """One message per kind of missing file in ``listing`` (empty when all pairs exist)."""
    lay = res.layout
    sub = f"/{lay.splits[listing.split]}" if lay.by_dir else ""
    msgs = []
    if listing.missing_images:
        msgs.append(
            f"{info.name} {listing.split}: {len(listing.missing_images)} sample(s) have no "
            f"image {lay.img_dir}{sub}/<name>{lay.img_suffix} under {res.root}: "
            f"{quote_some(listing.missing_images)}"
        )
    if listing.missing_labels:
        msgs.append(
            f"{info.name} {listing.split}: {len(listing.missing_labels)} sample(s) have no "
            f"label {lay.ann_dir}{sub}/<name>{lay.ann_suffix} under {res.root}: "
            f"{quote_some(listing.missing_labels)}"
        )
    return msgs
