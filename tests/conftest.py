"""Test-wide settings: offline, deterministic, and light on this machine's few cores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No experiment trackers unless a test asks for them (bench.trackers).
os.environ.setdefault("UNIPBENCH_TRACKERS", "none")
# Checkpoint downloads and digest records go to a throw-away cache, never the user's.
if "UNIPBENCH_CACHE" not in os.environ:
    import tempfile

    os.environ["UNIPBENCH_CACHE"] = tempfile.mkdtemp(prefix="unipbench-test-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _register_tree_adapters() -> None:
    """Register the adapters this tree's pyproject.toml declares, whatever the installed
    package metadata lists (an editable install made from an older tree names the modules
    of its time): tests exercise the adapters of the code under test."""
    import importlib
    from pathlib import Path

    import tomllib

    from bench.registry import ADAPTERS

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["entry-points"]
    for name, target in declared["unipbench.adapters"].items():
        module, _, attr = target.partition(":")
        ADAPTERS.register(name, getattr(importlib.import_module(module), attr), overwrite=True)


_register_tree_adapters()
