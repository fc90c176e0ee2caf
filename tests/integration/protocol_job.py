"""Helpers for the protocol tests, and a script entry point for subprocess runs.

``python protocol_job.py PROTOCOL WORKDIR ROOT OVERRIDES_JSON`` runs one tiny protocol run
(ViT-T, 4 blocks, 128 px) in its own process: the kill-and-resume and multi-process tests
need real processes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A tiny run: ViT-T cut to 4 blocks, 128-px synthetic SODA-like images (128 x 171),
# batch 4, a 32-channel UPerNet, 2 sliding windows per test image.
TINY: dict[str, Any] = {
    "batch_size": 4,
    "crop_size": 128,
    "scale": [171, 128],
    "slide_crop": 128,
    "slide_stride": 96,
    "num_workers": 0,
    "layers": [0, 1, 2, 3],
    "eval_interval": 0,
    "checkpoint_interval": 0,
    "warmup_iters": 2,
    "lr": 1e-3,
}
TINY_FT = {**TINY, "head_channels": 32}
MODEL = {"adapter": "mae", "size": "tiny", "options": {"depth": 4}}


def make_soda(root: Path, train: int = 16, test: int = 4) -> Path:
    from bench.data.synth import synthesize

    synthesize("soda", root, train=train, test=test, size=128, seed=0)
    return root


def dataset(root: Path) -> dict:
    return {"name": "soda", "root": str(root)}


def give_accelerators_a_grad_scaler(monkeypatch: Any) -> None:
    """fp16's loss scaling on the CPU: every run's accelerator gets torch's GradScaler
    (what fp16 on CUDA gives it), started near fp32's limit so that it grows and
    overflows within a few steps."""
    import torch

    import bench.protocols.runner as runner

    real = runner.make_accelerator

    def with_scaler(mixed_precision: str, log_dir: Any = None) -> Any:
        acc = real(mixed_precision, log_dir)
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**118, growth_interval=1)
        return acc

    monkeypatch.setattr(runner, "make_accelerator", with_scaler)


class Killed(Exception):
    """Stands for a kill right after a checkpoint was written."""


def die_after_next_checkpoint(monkeypatch: Any) -> Callable[[], None]:
    """The next checkpoint is written, then the run stops (raises :class:`Killed`), as a
    kill right after it would; returns what puts plain saving back."""
    from bench.protocols.checkpointing import Checkpointer

    real_save = Checkpointer.save

    def save_then_die(self: Checkpointer, iteration: int, state: dict) -> None:
        real_save(self, iteration, state)
        raise Killed

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    return lambda: monkeypatch.setattr(Checkpointer, "save", real_save)


def main(argv: list[str]) -> int:
    protocol, workdir, root, overrides = argv[0], argv[1], argv[2], json.loads(argv[3])
    # One thread: the bit-identity checks compare runs made in different processes.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from bench.protocols import run_protocol

    run_protocol(protocol, MODEL, dataset(Path(root)), overrides, workdir, progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
