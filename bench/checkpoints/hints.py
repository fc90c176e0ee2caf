"""What ``unipbench validate`` says about a suite model's catalogue checkpoint: whether it
fits the model, and where a missing file can be had."""

from __future__ import annotations

from pathlib import Path

from bench.backbones.adapter import AdapterError, get_adapter
from bench.checkpoints.cache import fetch_command, resolve_id
from bench.checkpoints.catalogue import get_entry, load_catalogue
from bench.checkpoints.reader import CheckpointError


def suite_problem(
    cid: str, sha256: str | None, adapter: str, size: str, cache_dir: str | Path | None = None
) -> str | None:
    """What ``unipbench validate`` says about a suite model naming catalogue id ``cid``."""
    entry = get_entry(cid)
    if entry.adapter != adapter:
        return (f"checkpoint {cid} is a {entry.adapter!r} checkpoint (catalogue), but the "
                f"model's adapter is {adapter!r}")
    try:
        letter = get_adapter(adapter).letter(size)
    except AdapterError:
        letter = None  # the schema check reports the size itself
    if letter is not None and letter != entry.size:
        return f"checkpoint {cid} is a ViT-{entry.size} (catalogue), but the model's size is {size}"
    try:
        resolve_id(cid, sha256=sha256, cache_dir=cache_dir)
    except CheckpointError as exc:
        return str(exc)
    return None


def missing_path_hint(adapter: str, size: str, label: str) -> str:
    """For a suite's missing checkpoint file: where the catalogue says such a model comes
    from ('' when it has nothing for that adapter, size and label)."""
    try:
        letter = get_adapter(adapter).letter(size)
    except AdapterError:
        return ""
    fits = [e for e in load_catalogue().values()
            if e.adapter == adapter and e.size == letter and e.label == label]
    if not fits:
        return ""
    e = min(fits, key=lambda e: (not e.paper, e.unavailable is not None, e.id))
    if e.unavailable:
        return f" (catalogue {e.id}: {e.unavailable})"
    return f" (the catalogue has it: `checkpoint: {e.id}`, fetched with {fetch_command(e.id)})"
