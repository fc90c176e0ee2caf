"""InfMix: the mixed pre-training set of UNIP as a JSONL manifest, and its dataset.

A manifest line is ``{"path", "source", "sha256"}``. Sources are infrared folders (every
image), an ImageNet-style tree (the first K images of each class folder, sorted) and a
COCO-style folder (every image). Files with the same content (sha256 of the bytes) are
kept once, the first met; files that are not images or do not decode are listed in the
report and never counted.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from bench.backbones.backbone import INFRARED_MEAN, INFRARED_STD
from bench.diskio import atomic_write_text
from unip.images import ImageListDataset, is_image_name

READ_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)
# The paper's ImageNet share: the first 200 images of each of the 1,000 classes.
IMAGENET_PER_CLASS = 200


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    source: str
    sha256: str


@dataclass
class InfMixReport:
    """What a build kept, merged and skipped."""

    counts: dict[str, int] = field(default_factory=dict)
    duplicates: list[dict[str, str]] = field(default_factory=list)  # path, duplicate_of
    skipped: list[dict[str, str]] = field(default_factory=list)  # path, reason
    per_class: int | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _inspect(path: Path) -> tuple[str | None, str | None]:
    """(sha256, None) for a decodable image, (None, reason) otherwise."""
    if not is_image_name(path):
        return None, f"not an image file (suffix {path.suffix or 'none'!r})"
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a header that parses is not enough: truncated files fail here
    except UnidentifiedImageError:
        # PIL's message names the in-memory buffer (an address): say it plainly instead.
        return None, "unreadable image: not in a format PIL recognises"
    except READ_ERRORS as exc:
        return None, f"unreadable image: {type(exc).__name__}: {exc}"
    return hashlib.sha256(data).hexdigest(), None


class _Builder:
    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self.entries: list[ManifestEntry] = []
        self.first_of: dict[str, str] = {}
        self.report = InfMixReport()

    def add(self, paths: Sequence[Path], source: str) -> int:
        """Inspect ``paths`` (in parallel, results in order); returns how many were kept."""
        kept = 0
        self.report.counts.setdefault(source, 0)
        for path, (digest, reason) in zip(paths, self.pool.map(_inspect, paths), strict=True):
            p = str(path.resolve())
            if digest is None:
                self.report.skipped.append({"path": p, "reason": str(reason)})
            elif digest in self.first_of:
                self.report.duplicates.append({"path": p, "duplicate_of": self.first_of[digest]})
            else:
                self.first_of[digest] = p
                self.entries.append(ManifestEntry(p, source, digest))
                self.report.counts[source] += 1
                kept += 1
        return kept


def _files_under(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"InfMix source folder {root} does not exist or is not a folder")
    return sorted(p for p in root.rglob("*") if p.is_file())


def _infrared_sources(dirs: Sequence[Path]) -> list[tuple[Path, str]]:
    """Each infrared folder's source name: ``infrared/<folder name>``, made unique."""
    named: list[tuple[Path, str]] = []
    used: set[str] = set()
    for d in dirs:
        base = f"infrared/{Path(d).resolve().name}"
        name, k = base, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        named.append((Path(d), name))
    return named


def _add_imagenet(builder: _Builder, root: Path, per_class: int) -> None:
    """The first ``per_class`` unique, readable images of each class folder (sorted)."""
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet folder {root} does not exist or is not a folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"ImageNet folder {root} has no class sub-folders")
    for cls in classes:
        files = _files_under(cls)
        taken, i = 0, 0
        # Inspect only as many files as still needed: a class holds ~1,300 images, we keep 200.
        while taken < per_class and i < len(files):
            chunk = files[i : i + per_class - taken]
            i += len(chunk)
            taken += builder.add(chunk, "imagenet")


def build_infmix(
    infrared: Iterable[str | Path] = (),
    imagenet: str | Path | None = None,
    coco: str | Path | None = None,
    per_class: int = IMAGENET_PER_CLASS,
    workers: int = 8,
) -> tuple[list[ManifestEntry], InfMixReport]:
    """Collect InfMix: infrared folders first (in order), then ImageNet, then COCO."""
    infrared = [Path(d) for d in infrared]
    if not infrared and imagenet is None and coco is None:
        raise ValueError("InfMix needs at least one source (--infrared, --imagenet or --coco)")
    if per_class <= 0:
        raise ValueError(f"--per-class must be positive, got {per_class}")
    builder = _Builder(workers)
    try:
        for folder, source in _infrared_sources(infrared):
            builder.add(_files_under(folder), source)
        if imagenet is not None:
            builder.report.per_class = per_class
            _add_imagenet(builder, Path(imagenet), per_class)
        if coco is not None:
            builder.add(_files_under(Path(coco)), "coco")
    finally:
        builder.pool.shutdown()
    return builder.entries, builder.report


def summary_path(manifest: str | Path) -> Path:
    """Where a manifest's report is stored: ``<name>.summary.json`` beside it."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + ".summary.json")


def write_manifest(entries: Sequence[ManifestEntry], report: InfMixReport, out: str | Path) -> Path:
    """Write the manifest (JSONL) and its report (``.summary.json``); returns the manifest."""
    out = Path(out)
    lines = "".join(json.dumps(asdict(e)) + "\n" for e in entries)
    atomic_write_text(out, lines)
    atomic_write_text(summary_path(out), json.dumps(report.to_dict(), indent=2) + "\n")
    return out


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Entries of a manifest; a malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"InfMix manifest {path} does not exist")
    entries = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                entries.append(
                    ManifestEntry(str(obj["path"]), str(obj["source"]), str(obj["sha256"]))
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{n}: not a manifest line {{path, source, sha256}} "
                    f"({type(exc).__name__}: {exc})"
                ) from None
    if not entries:
        raise ValueError(f"InfMix manifest {path} lists no images")
    return entries


class InfMixDataset(ImageListDataset):
    """The manifest's images, uniformly indexed over all sources, grey to 3 channels and
    normalised with the infrared statistics; ``transform`` (PIL to PIL) runs before that."""

    def __init__(
        self,
        manifest: str | Path,
        transform: Callable | None = None,
        mean: Sequence[float] = INFRARED_MEAN,
        std: Sequence[float] = INFRARED_STD,
    ) -> None:
        self.entries = read_manifest(manifest)
        super().__init__([e.path for e in self.entries], transform, mean, std)

    @property
    def sources(self) -> list[str]:
        return [e.source for e in self.entries]
