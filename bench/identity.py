"""What makes a result that result: the data's content, and how two identities differ.

A run's identity (a suite run's id, a workdir's ``result.json`` fingerprint) covers
everything that can change its numbers. This module holds the two pieces both use: the
data's fingerprint per split, and a readable account of what differs between a stored
identity and the current one, so that a reused result says what it matched on and a
refused or replaced one says what changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Bump when the makeup of identities changes, so that ids of either scheme never collide.
IDENTITY_SCHEME = 2
SHORT = 12  # hex digits of a digest shown in messages


def data_content(
    name: str, root: str | Path, splits: list[str], layout: str | None = None
) -> dict[str, str]:
    """split -> :func:`bench.data.dataset_fingerprint`; ``{"state": "missing"}`` when the
    folder does not exist and ``{"state": "unreadable"}`` when its layout cannot be read.

    The two fallbacks let a suite be expanded (listed, validated) before its data is in
    place: such a run fails when it starts, saying why, and gets a new id once the data
    is there. They name no path, as an id never does.
    """
    from bench.data import DatasetError, dataset_fingerprint

    path = Path(root).expanduser()
    if not path.is_dir():
        return {"state": "missing"}
    try:
        return {s: dataset_fingerprint(name, path, s, layout) for s in dict.fromkeys(splits)}
    except (DatasetError, OSError):
        return {"state": "unreadable"}


def run_splits(settings: dict[str, Any], dataset: str) -> list[str]:
    """The splits a run reads: its training split, then its evaluation split."""
    from bench.data import get_dataset_info

    info = get_dataset_info(dataset)
    return list(dict.fromkeys([settings.get("train_split") or info.train_split,
                               settings.get("eval_split") or info.default_eval_split]))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: value}


def short(value: Any) -> str:
    """A digest cut to SHORT hex digits; other values as they are."""
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:SHORT]
    return text


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> list[str]:
    """``key: old -> new`` for each leaf that differs (dotted keys), at most ``limit``."""
    a, b = _flat(old), _flat(new)
    lines = [
        f"{k}: {short(a.get(k, '(absent)'))} -> {short(b.get(k, '(absent)'))}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "(absent)") != b.get(k, "(absent)")
    ]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def matched_on(identity: dict[str, Any]) -> str:
    """A one-line summary of an identity: weights, data per split, protocol version, seed."""
    model = identity.get("model", {})
    weights = model.get("weights")
    data = identity.get("dataset", {}).get("content", {})
    parts = [
        f"weights {short(weights)}" if weights else "random init",
        "data " + ", ".join(f"{k} {short(v)}" for k, v in data.items()),
        f"protocol {identity.get('protocol_version')}",
        f"seed {identity.get('seed')}",
        "settings",
    ]
    return ", ".join(parts)
