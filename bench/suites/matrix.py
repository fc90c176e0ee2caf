"""A suite's run matrix (models x datasets x protocols x seeds) and stable run ids.

A run's id hashes what determines its result: adapter, size, options, the checkpoint's
sha256 (not its path), dataset name, layout and content (a fingerprint per split, see
:func:`bench.data.dataset_fingerprint`), protocol, fully resolved settings, seed and
the protocol's own version. Paths, labels and the suite's name are kept with the run but are not
part of the id, so moving a file or renaming a row does not redo work, while any change
of weights, data or hyperparameters does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.backbones.adapter import get_adapter, size_letter
from bench.checkpoints.reader import DigestCache
from bench.suites.load import Suite

RUN_ID_CHARS = 16


@dataclass
class Run:
    """One cell of the matrix, fully resolved; picklable for worker processes."""

    run_id: str
    suite: str
    protocol: str
    protocol_version: str
    model_name: str
    adapter: str
    size: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    options: dict[str, Any]
    dataset: str
    dataset_root: str
    layout: str | None
    synthetic: dict[str, Any] | None
    settings: dict[str, Any]
    seed: int
    identity: dict[str, Any] = field(repr=False)

    @property
    def label(self) -> str:
        model = f"{self.model_name}-{size_letter(self.size, self.adapter)}"
        return f"{model}/{self.dataset}/{self.protocol}/s{self.seed}"

    def config(self) -> dict[str, Any]:
        """The resolved configuration stored with the result (identity + paths + labels);
        ``identity`` is what the run id hashes, kept so a later run can say what changed."""
        out = asdict(self)
        out.pop("run_id")
        return out

    def matches(self, pattern: str) -> bool:
        """``--only``: comma-separated alternatives, each a shell glob over the label
        (``mae-T/soda/*``), an exact model / dataset / protocol name, or a run-id prefix."""
        for p in (s.strip() for s in pattern.split(",")):
            if not p:
                continue
            if fnmatch.fnmatchcase(self.label, p) or p in (
                self.model_name, self.dataset, self.protocol
            ):
                return True
            if len(p) >= 4 and self.run_id.startswith(p):
                return True
        return False


def run_id_of(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:RUN_ID_CHARS]


def directory_digest(d: Path, digests: DigestCache) -> str:
    """One digest for an export folder: its files' relative names and hashes."""
    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(d)}:{digests.sha256(f)}\n".encode())
    return h.hexdigest()


def checkpoint_identity(
    checkpoint: str | None, sha256: str | None, digests: DigestCache
) -> tuple[str | None, str | None]:
    """(path or URL to load, what identifies the weights) for a model's checkpoint."""
    if checkpoint is None:
        return None, None
    from bench.checkpoints.catalogue import is_catalogue_id

    if is_catalogue_id(checkpoint):  # loaded by id; identified by its pinned digest
        from bench.checkpoints.cache import catalogue_identity

        return checkpoint, catalogue_identity(checkpoint, sha256)
    if checkpoint.startswith(("http://", "https://", "hf://")):  # remote: loaded by name
        return checkpoint, sha256.lower() if sha256 else f"url:{checkpoint}"
    path = Path(checkpoint).expanduser().resolve()
    if sha256:
        return str(path), sha256.lower()
    if path.is_file():
        return str(path), digests.sha256(path)
    if path.is_dir():
        return str(path), "dir:" + directory_digest(path, digests)
    # Missing now: the run fails when loading and says so; the id changes once it exists.
    return str(path), f"missing:{path}"


def expand(suite: Suite, digests: DigestCache | None = None, data: bool = True) -> list[Run]:
    """Every run of ``suite``, in a stable order: model, dataset, protocol, seed.

    ``digests`` remembers checkpoint digests across calls (default: for this call only).
    ``data=False`` leaves the data's content out of the identities (and reads no data):
    only for deciding which datasets to generate, never for ids that are stored.
    """
    from bench.identity import IDENTITY_SCHEME, data_content, run_splits
    from bench.protocols.config import identity_settings
    from bench.protocols.registry import get_protocol
    from bench.suites.checks import resolved_settings

    cache = digests or DigestCache(None)
    spec = suite.spec
    contents: dict[tuple[int, tuple[str, ...]], dict[str, str] | None] = {}
    runs: list[Run] = []
    for mi, m in enumerate(spec.models):
        size = get_adapter(m.adapter).canonical_size(m.size)
        ckpt, weights = checkpoint_identity(m.checkpoint, m.sha256, cache)
        for di, d in enumerate(spec.datasets):
            synthetic = d.synthetic.model_dump() if d.synthetic else None
            root = Path(d.root).expanduser().resolve()
            for protocol in spec.protocols:
                # The protocol's own version: bumping it reruns its runs and no others.
                version = get_protocol(protocol).version
                settings = resolved_settings(suite, mi, di, protocol).model_dump(mode="json")
                splits = tuple(run_splits(settings, d.name))
                if (di, splits) not in contents:  # one fingerprint per dataset and splits
                    contents[di, splits] = (
                        data_content(d.name, root, list(splits), d.layout) if data else None
                    )
                for seed in spec.seeds:
                    identity = {
                        "scheme": IDENTITY_SCHEME,
                        "protocol": protocol,
                        "protocol_version": version,
                        "model": {
                            "adapter": m.adapter,
                            "size": size,
                            "weights": weights,
                            "options": m.options,
                        },
                        "dataset": {"name": d.name, "layout": d.layout,
                                    "content": contents[di, splits]},
                        # As the runner's identity: what to keep on disk, and added
                        # options at their default, are not part of what is computed.
                        "settings": identity_settings(settings, get_protocol(protocol).settings),
                        "seed": seed,
                    }
                    runs.append(Run(
                        run_id=run_id_of(identity),
                        suite=spec.suite,
                        protocol=protocol,
                        protocol_version=version,
                        model_name=m.label,
                        adapter=m.adapter,
                        size=size,
                        checkpoint=ckpt,
                        checkpoint_sha256=weights if weights and _is_digest(weights) else None,
                        options=dict(m.options),
                        dataset=d.name,
                        dataset_root=str(root),
                        layout=d.layout,
                        synthetic=synthetic,
                        settings=settings,
                        seed=seed,
                        identity=identity,
                    ))
    return runs


def _is_digest(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)
