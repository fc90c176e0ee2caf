"""Training state on disk: atomic checkpoints and the RNG states that make resume exact.

A training state holds only what ``torch.load(weights_only=True)`` reads (tensors,
numbers, strings, lists, tuples, dicts): RNG states are stored as tensors, not numpy
objects, so a resume never has to unpickle arbitrary objects. A file that would run code
on loading is refused before anything runs.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.diskio import atomic_write


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact, never a half-written one; a full
    disk raises :class:`bench.diskio.DiskFullError` saying so.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states, for bit-identical resume.

    Plain types and tensors only, so that the state loads with ``weights_only=True``.
    """
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, gauss or None)
        # The MT19937 key is uint32; int64 holds it exactly.
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, *rest = state["numpy"]
    if isinstance(key, torch.Tensor):
        key = key.numpy().astype(np.uint32)
    np.random.set_state((kind, key, *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``; a file that would run code on
    loading is refused (:class:`bench.checkpoints.reader.CheckpointError`, naming it)."""
    from bench.checkpoints.reader import load_pickle_checkpoint

    return load_pickle_checkpoint(Path(path), what="training state")
