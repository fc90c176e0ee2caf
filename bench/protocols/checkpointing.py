"""Resumable training state: one atomic file per workdir, rewritten every N iterations.

The file holds the trainable modules, optimiser, lr scheduler, grad scaler, every rank's
RNG states, the iteration reached and the evaluation history. The data position is the
iteration itself: samplers derive the stream from (seed, iteration) alone. It is read
with ``weights_only=True``: a file that would run code on loading is refused.

Once a run's result is written, :func:`finish_workdir` removes the training state unless
``keep_training_state`` asks to keep it; ``save_final_weights`` keeps the trained weights
as safetensors.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import gather_object

from bench.diskio import atomic_write_bytes
from bench.protocols.config import IDENTITY_EXEMPT_SETTINGS
from bench.protocols.state import (
    atomic_save,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
)

CHECKPOINT_NAME = "checkpoint.pt"
FINAL_WEIGHTS_NAME = "final_weights.safetensors"
STATE_FORMAT = "unipbench-train-state/1"
# The cached linear probe's features (bench.protocols.feature_cache): training state too.
FEATURE_CACHE_DIR = "feature_cache"
WEIGHTS_FORMAT = "unipbench-final-weights/1"


def run_fingerprint(spec: dict[str, Any]) -> str:
    """sha256 of everything that defines a run; a checkpoint only resumes the same run.

    Settings that only say what to keep on disk (``IDENTITY_EXEMPT_SETTINGS``) are left
    out: changing them neither restarts a run nor orphans its result.
    """
    settings = spec.get("settings")
    if isinstance(settings, dict):
        kept = {k: v for k, v in settings.items() if k not in IDENTITY_EXEMPT_SETTINGS}
        spec = {**spec, "settings": kept}
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def training_state_paths(workdir: str | Path) -> list[Path]:
    """What a run keeps only to resume: the checkpoint, its unfinished temp files, and
    the cached mode's feature cache."""
    wd = Path(workdir)
    temps = sorted(wd.glob(f".{CHECKPOINT_NAME}.*.tmp"))
    return [wd / CHECKPOINT_NAME, *temps, wd / FEATURE_CACHE_DIR]


def finish_workdir(workdir: str | Path, keep_training_state: bool) -> list[Path]:
    """After result.json is written: remove the training state unless asked to keep it.

    Returns what was removed. Call on the main process only.
    """
    if keep_training_state:
        return []
    removed = []
    for p in training_state_paths(workdir):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(p)
    return removed


class Checkpointer:
    """Saves and restores a run's state under ``workdir``; collective calls on all ranks."""

    def __init__(self, workdir: str | Path, accelerator: Accelerator, fingerprint: str) -> None:
        self.path = Path(workdir) / CHECKPOINT_NAME
        self.accelerator = accelerator
        self.fingerprint = fingerprint

    def save(self, iteration: int, state: dict[str, Any]) -> None:
        """Write ``state`` (module/optimiser state dicts, history ...) plus every rank's
        RNG states (:func:`gather_rng_states`)."""
        rng = gather_rng_states(self.accelerator)
        if self.accelerator.is_main_process:
            payload = {
                "format": STATE_FORMAT,
                "fingerprint": self.fingerprint,
                "iteration": iteration,
                "world_size": self.accelerator.num_processes,
                "rng": rng,
                **state,
            }
            atomic_save(payload, self.path)
        self.accelerator.wait_for_everyone()

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none; a different run's state is an error."""
        if not self.path.exists():
            return None
        state = load_training_state(self.path)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{self.path} is not a training state written by unipbench")
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.path} belongs to a different run (other settings, model, dataset or "
                "seed); use a fresh workdir or delete the checkpoint to start over"
            )
        return state

    def save_weights(self, module: Any, iteration: int) -> Path:
        """``module``'s state dict as safetensors (main process writes; all ranks call)."""
        from safetensors.torch import save

        path = self.path.with_name(FINAL_WEIGHTS_NAME)
        if self.accelerator.is_main_process:
            # Copies: safetensors refuses tensors that share memory (tied weights).
            tensors = {k: v.detach().cpu().contiguous().clone()
                       for k, v in module.state_dict().items()}
            meta = {"format": WEIGHTS_FORMAT, "fingerprint": self.fingerprint,
                    "iteration": str(iteration)}
            data = save(tensors, metadata=meta)
            atomic_write_bytes(path, data)
        self.accelerator.wait_for_everyone()
        return path

    def restore_rng(self, state: dict[str, Any]) -> None:
        """This rank's RNG states; bit-identical resume needs the same process count."""
        restore_process_rng(state["rng"], self.accelerator)


def gather_rng_states(accelerator: Accelerator) -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (collective: all ranks call it), so that
    dropout and drop path continue on the same streams after a resume."""
    return gather_object([capture_rng_state()])


def restore_process_rng(rng: list[dict[str, Any]], accelerator: Accelerator) -> None:
    """Put this rank's saved RNG states back (a different process count: a warning, and
    rank r takes saved state r mod the saved count)."""
    if len(rng) != accelerator.num_processes:
        warnings.warn(
            f"resuming a {len(rng)}-process run with {accelerator.num_processes} "
            "process(es): data order is unchanged but random streams (dropout, drop path) "
            "differ from an uninterrupted run",
            stacklevel=3,
        )
    restore_rng_state(rng[accelerator.process_index % len(rng)])
