"""Evaluation protocols: fine-tuning, linear probing, layer-wise probing.

``run_protocol`` is imported lazily so that reading settings (``bench.protocols.config``)
does not pull in torch-heavy training code.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_protocol"]


def run_protocol(*args: Any, **kwargs: Any) -> dict:
    """See :func:`bench.protocols.runner.run_protocol`."""
    from bench.protocols.runner import run_protocol as _run

    return _run(*args, **kwargs)
