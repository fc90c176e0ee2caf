"""YAML 1.1 booleans where a setting is a string choice.

PyYAML reads ``no``, ``off``, ``false`` (and ``yes``, ``on``, ``true``) as booleans, so
``mixed_precision: no`` arrives as ``False``. Where a field's choices include one of those
words, the boolean is mapped back to it; anywhere else it is left for validation to refuse.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel

_SPELLINGS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _string_choices(annotation: Any) -> set[str]:
    """The string values of a Literal annotation, also inside ``X | None``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {a for a in typing.get_args(annotation) if isinstance(a, str)}
    if origin in (Union, types.UnionType):
        out: set[str] = set()
        for arg in typing.get_args(annotation):
            out |= _string_choices(arg)
        return out
    return set()


def bool_as_choice(value: Any, choices: set[str]) -> Any:
    """``False`` -> ``'no'`` (or 'off'/'false') when that word is a choice; else unchanged."""
    if isinstance(value, bool):
        for word in _SPELLINGS[value]:
            if word in choices:
                return word
    return value


def yaml_bools_to_choices(model: type[BaseModel], data: Any) -> Any:
    """For a ``mode='before'`` model validator: map booleans on string-choice fields."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in model.model_fields.items():
        if name in out:
            choices = _string_choices(field.annotation)
            if choices:
                out[name] = bool_as_choice(out[name], choices)
    return out
