"""Where a checkpoint comes from, and its content: the one place that turns a path, an
export folder, an ``https://`` URL, an ``hf://`` location or a catalogue id into a local
file, its sha256 and its tensors.

It sits above :mod:`bench.checkpoints.reader` (safe reading, digests) and the modules that fetch
(:mod:`bench.checkpoints.download`, :mod:`bench.checkpoints.hub`,
:mod:`bench.checkpoints.cache`), which all import
:mod:`bench.checkpoints.reader` and never this module: no import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.checkpoints.reader import (
    CheckpointError,
    cached_sha256,
    check_sha256,
    load_pickle_checkpoint,
    load_safetensors,
)


def read_checkpoint(path: Path) -> tuple[Any, dict]:
    """The checkpoint's content and metadata (e.g. an HF export's parsed config).

    Files: ``.safetensors`` or a torch pickle. Directories: Hugging Face exports.
    """
    path = Path(path)
    if path.is_dir():
        from bench.checkpoints.hf_export import (
            read_hf_export,  # imports bench.checkpoints.reader only
        )

        return read_hf_export(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_safetensors(path), {}
    return load_pickle_checkpoint(path), {}


def resolve_checkpoint(
    checkpoint: str | Path, sha256: str | None = None, cache_dir: str | Path | None = None
) -> tuple[Path, str | None]:
    """A local path for ``checkpoint`` (downloading URLs once) and its sha256.

    For a Hugging Face export folder the digest is its weights file's (the sha256 the Hub
    lists for it). A catalogue id (a ``str`` such as ``mae/vit-base``) is its fetched file
    in the cache, checked against ``checkpoints.lock``. ``sha256``, when given, must match
    or loading stops here.
    """
    spec = str(checkpoint)
    if sha256:
        sha256 = check_sha256(sha256)
    if isinstance(checkpoint, str):
        from bench.checkpoints.cache import resolve_spec

        found = resolve_spec(spec, sha256=sha256, cache_dir=cache_dir)
        if found is not None:
            return found
    if spec.startswith(("http://", "https://")):
        from bench.checkpoints.download import download_cached

        path = download_cached(spec, sha256=sha256, cache_dir=cache_dir)
        return path, sha256.lower() if sha256 else cached_sha256(path, cache_dir)
    if spec.startswith("hf://"):  # the Hub's own cache; .hub says why a fetch fails
        from bench.checkpoints.hub import hub_download

        path = hub_download(spec, cache_dir=cache_dir)
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        from bench.checkpoints.hf_export import hf_weights_file

        hashed = hf_weights_file(path)
    else:
        hashed = path
    digest = cached_sha256(hashed, cache_dir)
    if sha256 and digest != sha256.lower():
        raise CheckpointError(f"checkpoint {hashed} has sha256 {digest}, expected {sha256}")
    return path, digest
