"""Adapters: one module per pre-training method, turning its checkpoints into a Backbone.

Adapters are registered through the ``unipbench.adapters`` entry-point group (see
``pyproject.toml``), exactly as a third-party method would be.
"""

from bench.backbones.adapter import (
    Adapter,
    AdapterError,
    CheckpointFormat,
    list_adapters,
    load_backbone,
)

__all__ = ["Adapter", "AdapterError", "CheckpointFormat", "list_adapters", "load_backbone"]
