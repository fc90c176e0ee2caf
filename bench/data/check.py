"""Checking a dataset copy before spending GPU hours on it: pairs, files, sizes, label values.

:func:`check_dataset` is the full audit behind ``unipbench data check``; :func:`quick_check`
is the seconds-long part training runs up front (it raises :class:`DatasetError`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.data.dataset import allowed_values, invalid_label_values
from bench.data.imageio import read_image, read_label
from bench.data.layout import (
    MAX_LISTED,
    ResolvedLayout,
    SplitListing,
    list_split,
    quote_some,
    resolve_layout,
    unpaired_message,
)
from bench.data.lookup import get_dataset_info
from bench.data.spec import DatasetError, DatasetInfo
from bench.registry import did_you_mean

QUICK_SAMPLE = 4  # pairs decoded by quick_check


@dataclass
class CheckReport:
    """What a check found; ``ok`` is False as soon as there is one error."""

    dataset: str
    root: str
    layout: str | None = None
    layout_note: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        """A readable multi-line report."""
        lines = [f"dataset {self.dataset} at {self.root}"]
        if self.layout_note:
            lines.append(f"  {self.layout_note}")
        if self.counts:
            lines.append(f"  {'split':<10}{'samples':>9}{'published':>11}")
            for split, n in self.counts.items():
                pub = self.published.get(split)
                lines.append(f"  {split:<10}{n:>9}{pub if pub is not None else '-':>11}")
        if self.files_read:
            lines.append(f"  decoded {self.files_read} image/label pair(s)")
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend("    - " + item.replace("\n", "\n      ") for item in items)
        verdict = "OK" if self.ok else "FAILED"
        lines.append(
            f"  result: {verdict} ({len(self.errors)} error(s), {len(self.warnings)} warning(s))"
        )
        return "\n".join(lines)


def _listed(header: str, items: list[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f"\n... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return header + "".join(f"\n{s}" for s in shown) + more


def _inspect(info: DatasetInfo, res: ResolvedLayout, img: Path, ann: Path) -> tuple[str, str]:
    """('', '') for a good pair, else (kind, message) with kind unreadable/size/values."""
    try:
        arr = read_image(img, res.layout.image_mode)
        raw = read_label(ann)
    except DatasetError as exc:
        return "unreadable", str(exc)
    if arr.shape[:2] != raw.shape:
        return "size", (
            f"{img.relative_to(res.root)} is {arr.shape[0]}x{arr.shape[1]}, its label "
            f"{ann.relative_to(res.root)} is {raw.shape[0]}x{raw.shape[1]}"
        )
    bad = invalid_label_values(raw, info)
    if bad:
        return "values", f"{ann.relative_to(res.root)}: {quote_some(bad)}"
    return "", ""


def _read_pairs(
    info: DatasetInfo, res: ResolvedLayout, pairs: list[tuple[Path, Path]], report: CheckReport
) -> None:
    workers = max(1, min(4, os.cpu_count() or 1))
    # PIL decodes outside the GIL, so threads overlap file reads and decoding.
    with ThreadPoolExecutor(workers) as pool:
        found = list(pool.map(lambda p: _inspect(info, res, *p), pairs))
    report.files_read += len(pairs)
    groups: dict[str, list[str]] = {"unreadable": [], "size": [], "values": []}
    for kind, msg in found:
        if kind:
            groups[kind].append(msg)
    if groups["unreadable"]:
        n = len(groups["unreadable"])
        report.errors.append(_listed(f"{n} file pair(s) cannot be read:", groups["unreadable"]))
    if groups["size"]:
        n = len(groups["size"])
        report.errors.append(
            _listed(f"{n} image/label pair(s) differ in size (height x width):", groups["size"])
        )
    if groups["values"]:
        n = len(groups["values"])
        report.errors.append(
            _listed(
                f"{n} label file(s) hold values outside {allowed_values(info)}:",
                groups["values"],
            )
        )


def _stray_files(info: DatasetInfo, res: ResolvedLayout, listed: set[str]) -> list[str]:
    """Warnings for images or labels that no split file mentions."""
    lay = res.layout
    if lay.by_dir:
        return []
    out = []
    for what, folder, suffix in (
        ("image", lay.img_dir, lay.img_suffix),
        ("label", lay.ann_dir, lay.ann_suffix),
    ):
        d = res.root / folder
        stray = (
            sorted(
                p.name
                for p in d.iterdir()
                if p.name.endswith(suffix) and p.name[: -len(suffix)] not in listed
            )
            if d.is_dir()
            else []
        )
        if stray:
            out.append(
                f"{len(stray)} {what}(s) in {folder}/ are in no split file: {quote_some(stray)}"
            )
    return out


def _begin(name: str, root: str | Path, layout: str | None, splits: Sequence[str]) -> tuple:
    info = get_dataset_info(name)
    # A misspelt layout or split is a usage error, raised, not a finding about the folder.
    if layout:
        info.layout(layout)
    for split in splits:
        if split not in info.splits:
            raise DatasetError(
                f"{info.name} has no split {split!r}; its splits are {', '.join(info.splits)}."
                + did_you_mean(split, list(info.splits))
            )
    report = CheckReport(info.name, str(root), published=dict(info.published_counts))
    try:
        res = resolve_layout(info, root, layout)
    except DatasetError as exc:
        report.errors.append(str(exc))
        return info, report, None
    report.layout = res.layout.name
    report.layout_note = res.describe()
    return info, report, res


def _list(
    info: DatasetInfo, res: ResolvedLayout, split: str, required: bool, report: CheckReport
) -> SplitListing | None:
    try:
        listing = list_split(info, res, split)
    except DatasetError as exc:
        (report.errors if required else report.warnings).append(str(exc))
        return None
    report.counts[split] = len(listing.names)
    report.errors.extend(unpaired_message(info, res, listing))
    if listing.duplicates:
        report.warnings.append(
            f"{split}: split file lists {quote_some(listing.duplicates)} more than once"
        )
    if not listing.names and not (listing.missing_images or listing.missing_labels):
        report.errors.append(f"{info.name} {split}: no samples in {listing.source}")
    return listing


def check_dataset(
    name: str,
    root: str | Path,
    splits: Sequence[str] | None = None,
    full: bool = True,
    layout: str | None = None,
) -> CheckReport:
    """Audit ``splits`` (default: all) of a dataset copy; ``full`` decodes every pair."""
    info, report, res = _begin(name, root, layout, splits or ())
    if res is None:
        return report
    wanted = list(splits) if splits else [s for s in info.splits if s in res.layout.splits]
    listings = []
    for split in wanted:
        required = bool(splits) or split in info.required_splits
        listing = _list(info, res, split, required, report)
        if listing is not None:
            listings.append(listing)
    if not splits:
        # A name a split file lists is not stray even when its partner file is missing
        # (that is reported as unpaired).
        listed = {n for ls in listings for n in (*ls.names, *ls.missing_images, *ls.missing_labels)}
        report.warnings.extend(_stray_files(info, res, listed))
    pairs = [p for ls in listings for p in zip(ls.images, ls.labels, strict=True)]
    pairs = list(dict.fromkeys(pairs))  # val_test repeats val and test
    if not full:
        pairs = _spread(pairs, QUICK_SAMPLE)
    _read_pairs(info, res, pairs, report)
    return report


def _spread(items: list, n: int) -> list:
    """``n`` items evenly spread over ``items`` (first and last included)."""
    if len(items) <= n:
        return items
    step = (len(items) - 1) / (n - 1)
    return [items[round(i * step)] for i in range(n)]


def quick_check(name: str, root: str | Path, split: str, layout: str | None = None) -> CheckReport:
    """Folders, pairing, a non-empty split and a few decoded samples; raises DatasetError."""
    report = check_dataset(name, root, splits=[split], full=False, layout=layout)
    if not report.ok:
        raise DatasetError(
            f"dataset {name} at {root} is not usable:\n"
            + "\n".join("  - " + e.replace("\n", "\n    ") for e in report.errors)
        )
    return report
