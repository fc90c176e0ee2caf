"""json_safe: non-finite floats become None, everything else is kept as it is."""

from __future__ import annotations

import json

from bench.jsonsafe import json_safe
from bench.metrics import format_per_class_table


def test_nested_non_finite_floats_become_none() -> None:
    obj = {"a": [1.0, float("nan"), {"b": float("-inf")}], "c": (2, "x"), "d": None}
    out = json_safe(obj)
    assert out == {"a": [1.0, None, {"b": None}], "c": [2, "x"], "d": None}
    json.dumps(out, allow_nan=False)  # strict JSON now


def test_per_class_table_reads_null_as_nan() -> None:
    result = {"per_class_iou": [12.5, None], "per_class_acc": [20.0, None],
              "mIoU": 12.5, "mAcc": 20.0, "aAcc": 30.0}
    table = format_per_class_table(result, ["road", "sky"])
    assert "sky" in table and "nan" in table.splitlines()[3]
