"""Distillation's files in the output folder: the resumable checkpoint and the loss log.

``checkpoint.pth`` holds what the training engine saves (student, optimiser, scheduler,
grad scaler, every process's RNG states, the loss window) under distillation's own keys,
plus the recipe, the teacher layer and the data fingerprint a resume is checked against.
It is read with ``weights_only=True``. Format 2 stores one RNG state per process and the
elapsed time; format-1 files (the main process's RNG state only) still resume.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.protocols.checkpointing import gather_rng_states, restore_process_rng
from bench.protocols.engine import LogRecord
from bench.protocols.state import atomic_save, load_training_state

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "log.jsonl"
CHECKPOINT_FORMAT = "unip-distill/2"
READABLE_FORMATS = ("unip-distill/1", CHECKPOINT_FORMAT)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A distillation checkpoint, refused when unsafe or of another kind or version."""
    state = load_training_state(path)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt not in READABLE_FORMATS:
        if isinstance(fmt, str) and fmt.startswith("unip-distill/"):
            raise ValueError(
                f"{path} is a distillation checkpoint of format {fmt!r}, which this version "
                f"cannot resume (it reads {', '.join(READABLE_FORMATS)}); use a new "
                "output_dir, or resume: false to start over"
            )
        raise ValueError(f"{path} is not a UNIP distillation checkpoint")
    return state


class DistillCheckpoint:
    """The engine's state store for distillation (collective calls on all processes).

    ``saved`` is the checkpoint read (and checked) before the models were built, or None;
    ``meta`` the fields that identify the run (recipe, teacher layer, data fingerprint).
    """

    def __init__(
        self,
        path: Path,
        accelerator: Accelerator,
        saved: dict[str, Any] | None,
        meta: dict[str, Any],
        steps_per_epoch: int,
    ) -> None:
        self.path = path
        self.acc = accelerator
        self.saved = saved
        self.meta = meta
        self.steps_per_epoch = steps_per_epoch

    def load(self) -> dict[str, Any] | None:
        """The saved state in the engine's keys."""
        s = self.saved
        if s is None:
            return None
        rng = s["rng"]
        return {
            "iteration": int(s["step"]),
            "model": s["student"],
            "optimizer": s["optimizer"],
            "scheduler": s["scheduler"],
            "scaler": s.get("scaler"),
            "rng": rng if isinstance(rng, list) else [rng],  # format 1: main process only
            "log_accum": (float(s["loss_log"]["total"]), int(s["loss_log"]["count"])),
            "elapsed_s": float(s.get("elapsed_s", 0.0)),
        }

    def save(self, iteration: int, state: dict[str, Any]) -> None:
        rng = gather_rng_states(self.acc)
        if self.acc.is_main_process:
            total, count = state["log_accum"]
            atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "step": iteration,
                    "epoch": iteration // self.steps_per_epoch,
                    "position": iteration % self.steps_per_epoch,  # steps into the epoch
                    "student": state["model"],
                    "optimizer": state["optimizer"],
                    "scheduler": state["scheduler"],
                    "scaler": state["scaler"],
                    "rng": rng,
                    "loss_log": {"total": total, "count": count},
                    "elapsed_s": state["elapsed_s"],
                    **self.meta,
                },
                self.path,
            )
        self.acc.wait_for_everyone()

    def restore_rng(self, state: dict[str, Any]) -> None:
        restore_process_rng(state["rng"], self.acc)


class LossLogFile:
    """Appends each logged window (mean loss, lr, epoch, seconds per step) to a JSONL file.

    The window's running sum is part of the checkpoint, so a resumed run logs exactly the
    values the uninterrupted run would have (timings aside).
    """

    def __init__(self, path: Path, steps_per_epoch: int, write: bool) -> None:
        self.path = path
        self.steps_per_epoch = steps_per_epoch
        self.write = write
        self.tick = time.perf_counter()

    def trim(self, step: int) -> None:
        """Keep the records up to ``step`` (the checkpoint's): later ones, and a line torn
        by a kill, belong to steps that will be redone."""
        if not self.write or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        self.path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")

    def __call__(self, record: LogRecord) -> None:
        now = time.perf_counter()
        if self.write:
            line = {
                "step": record.iteration,
                "epoch": (record.iteration - 1) // self.steps_per_epoch,
                "loss": record.loss,
                "lr": record.lr,
                "sec_per_step": (now - self.tick) / record.steps,
            }
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        self.tick = now
