"""``KEY=VALUE`` items from the command line (``--set``, ``--option``), typed as YAML.

A value reads as the same key would in a suite or config file: ``2000`` is an int,
``[0.9, 0.95]`` a list, ``null`` (or nothing after ``=``) None, ``no`` False (settings
that take the word ``no`` get it back, see :mod:`bench.choices`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


def parse_assignments(
    items: Iterable[str] | None, what: str = "--set", example: str | None = None
) -> dict[str, Any]:
    """``["iters=2000", "betas=[0.9, 0.95]"]`` -> ``{"iters": 2000, "betas": [0.9, 0.95]}``.

    Keys are stripped and kept as given (dotted keys too); a later item wins over an
    earlier one with the same key. An item without ``=`` or without a key, or whose value
    YAML cannot read, is a ValueError of one line naming ``what`` (the flag) and the item;
    ``example`` (e.g. ``optim.epochs=2``) is shown with the first kind.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            hint = f" (e.g. {example})" if example else ""
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE{hint}")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(
                f"{what} {item!r}: the value is not valid YAML ({problem}); put it in "
                "quotes to pass it as text"
            ) from None
    return out
