"""Training curves where people look at them: accelerate's experiment trackers.

Which trackers run comes from ``UNIPBENCH_TRACKERS`` (or the commands' ``--trackers``):
``auto`` (the default) is TensorBoard when it is installed and nothing otherwise; ``none``
turns logging off; a comma list (``tensorboard,wandb``) asks for those and fails clearly
when one is not installed. Weights & Biases only runs when named. Event files go to
``<workdir>/logs``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

KNOWN = {"tensorboard": "tensorboard", "wandb": "wandb"}
ENV = "UNIPBENCH_TRACKERS"


def tracker_names(choice: str | None = None) -> list[str]:
    """The trackers to use for ``choice`` (default: the environment, else 'auto')."""
    raw = (choice if choice is not None else os.environ.get(ENV, "auto")).strip().lower()
    if raw in ("", "none", "off", "no"):
        return []
    if raw == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    names = [n.strip() for n in raw.split(",") if n.strip()]
    for n in names:
        if n not in KNOWN:
            raise ValueError(
                f"unknown tracker {n!r} in {ENV}={raw!r}; use auto, none, or a comma list "
                f"of {', '.join(KNOWN)}"
            )
        if importlib.util.find_spec(KNOWN[n]) is None:
            raise ValueError(f"tracker {n!r} was asked for ({ENV}={raw!r}) but {n} is not "
                             f"installed: pip install {n}")
    return names


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as the flat scalar dict trackers accept (lists become strings)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_config(value, name + "."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def start_trackers(accelerator: Any, run_name: str, config: Mapping[str, Any]) -> None:
    """Initialise the accelerator's trackers (a no-op when it has none)."""
    if accelerator.log_with:
        accelerator.init_trackers(run_name, config=flat_config(config))


def finish_trackers(accelerator: Any) -> None:
    """Flush and close the trackers. Not ``accelerator.end_training()``: that also tears
    down the process group, which outlives a run (suites run several in one process)."""
    if accelerator.is_main_process:
        for tracker in accelerator.trackers:
            tracker.finish()
    accelerator.trackers = []
