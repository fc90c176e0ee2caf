"""Strict JSON for what the project writes: undefined numbers (NaN, inf) become null.

Per-class IoU is NaN for a class absent from both prediction and ground truth; Python's
``json`` would write a bare ``NaN``, which is not JSON and breaks other readers (jq,
JavaScript, pandas' strict mode).
"""

from __future__ import annotations

import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` with every non-finite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
