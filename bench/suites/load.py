"""Suite YAML: one level of ``include:``, the schema's errors, then the suite's checks.

A suite lists models, datasets, protocols (with their settings) and seeds; the runner
expands them into runs. Its schema and the loaded :class:`Suite` are in
:mod:`bench.suites.spec` (named here too); the checks of names and settings that every
load runs are in :mod:`bench.suites.checks`. Every problem names its file and line.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bench.registry import did_you_mean, literal_hint
from bench.suites.spec import (
    DatasetSpec,
    ExecutorSpec,
    ModelSpec,
    ProtocolOverrides,
    Suite,
    SuiteError,
    SuiteProblem,
    SuiteSpec,
    SyntheticSpec,
    locate,
)
from bench.suites.yaml_source import YamlSource, YamlSourceError, format_path, load_yaml

__all__ = [
    "DatasetSpec", "ExecutorSpec", "ModelSpec", "ProtocolOverrides", "Suite", "SuiteError",
    "SuiteProblem", "SuiteSpec", "SyntheticSpec", "deep_merge", "load_suite", "locate",
]


def deep_merge(base: Any, top: Any) -> Any:
    """Mappings merge key by key (``top`` wins); anything else is replaced by ``top``."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for k, v in top.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    return top


def _read_with_includes(path: Path) -> tuple[Any, list[YamlSource]]:
    main = load_yaml(path)
    if not isinstance(main.data, dict):
        raise SuiteError([SuiteProblem(str(path), main.line_of(()), "(top level)",
                                       "a suite must be a mapping of keys")])
    inc = main.data.get("include")
    if inc is None:
        return main.data, [main]
    names = [inc] if isinstance(inc, str) else inc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SuiteError([SuiteProblem(str(path), main.line_of(("include",)), "include",
                                       "include must be a relative path or a list of them")])
    merged: Any = {}
    included: list[YamlSource] = []
    for i, name in enumerate(names):
        key = ("include",) if isinstance(inc, str) else ("include", i)
        line = main.line_of(key)
        if Path(name).is_absolute():
            raise SuiteError([SuiteProblem(str(path), line, format_path(key),
                                           f"include {name!r} must be relative to the suite")])
        target = path.parent / name  # shown as given, relative to the suite
        if not target.is_file():
            raise SuiteError([SuiteProblem(str(path), line, format_path(key),
                                           f"included file {target} does not exist")])
        src = load_yaml(target)
        if not isinstance(src.data, dict):
            raise SuiteError([SuiteProblem(str(target), src.line_of(()), "(top level)",
                                           "an included file must be a mapping of keys")])
        if "include" in src.data:
            raise SuiteError([SuiteProblem(
                str(target), src.line_of(("include",)), "include",
                f"included files cannot include others (only one level; {target.name} is "
                f"included by {path.name}); move the shared keys into one file",
            )])
        merged = deep_merge(merged, src.data)
        included.insert(0, src)  # later includes win over earlier ones
    data = deep_merge(merged, {k: v for k, v in main.data.items() if k != "include"})
    return data, [main, *included]


def _unwrap(tp: Any) -> Any:
    """Optional[X] / X | None -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _fields_at(cls: Any, loc: Sequence[str | int]) -> list[str]:
    """Field names of the model reached by following ``loc`` from ``cls`` (for hints)."""
    tp: Any = cls
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            f = tp.model_fields.get(part)
            if f is None:
                return []
            tp = f.annotation
        elif origin in (list, tuple) or origin is dict:
            tp = typing.get_args(tp)[-1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _schema_problems(exc: ValidationError, sources: list[YamlSource]) -> list[SuiteProblem]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            msg = f"unknown key {key!r}." + did_you_mean(key, _fields_at(SuiteSpec, loc[:-1]))
        elif err["type"] == "missing":
            msg = f"missing required key {loc[-1]!r}"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            msg = f"{msg} (got {err.get('input')!r})" + literal_hint(err)
        file, line = locate(sources, loc)
        problems.append(SuiteProblem(file, line, format_path(loc), msg))
    return problems


def load_suite(path: str | Path) -> Suite:
    """Read, merge includes, validate schema and names; raise SuiteError listing problems."""
    path = Path(path)
    try:
        data, sources = _read_with_includes(path)
    except YamlSourceError as exc:
        raise SuiteError([SuiteProblem(str(path), None, "(file)", str(exc))]) from None
    if "include" in data:
        data = {k: v for k, v in data.items() if k != "include"}
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(_schema_problems(exc, sources)) from None
    suite = Suite(spec=spec, path=path, sources=sources)
    from bench.suites.checks import check_semantics

    problems = check_semantics(suite)
    if problems:
        raise SuiteError(problems)
    return suite
