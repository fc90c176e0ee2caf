"""Suite YAML: a typed schema, one level of ``include:``, and errors that name file and line.

A suite lists models, datasets, protocols (with their settings) and seeds; the runner
expands them into runs. Everything here is checked without touching the file system
beyond the YAML files themselves; :mod:`bench.suite_check` does the rest.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.choices import yaml_bools_to_choices
from bench.registry import did_you_mean
from bench.yaml_source import YamlSource, YamlSourceError, format_path, load_yaml


@dataclass(frozen=True)
class SuiteProblem:
    """One thing wrong with a suite, located at a file and line."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}"


class SuiteError(ValueError):
    """A suite that cannot be run; carries every problem found, each with file and line."""

    def __init__(self, problems: Sequence[SuiteProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# ---------------------------------------------------------------------------- schema
class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _yaml_bools(cls, data: Any) -> Any:
        # YAML 1.1 reads `no`/`off` as False: a string choice gets its name back.
        return yaml_bools_to_choices(cls, data)


ProtocolOverrides = dict[str, dict[str, Any]]


class ModelSpec(_Spec):
    """A backbone: adapter, size, weights. ``name`` labels its rows in the tables."""

    adapter: str = Field(description="Adapter name (see `unipbench adapters`).")
    size: str = Field(description="T, S, B or L (or tiny/small/base/large).")
    name: str | None = Field(
        None, description="Method label in tables and the published-results key; "
        "default: the adapter name (e.g. 'unip_mae_l' for a UNIP student of MAE-L)."
    )
    checkpoint: str | None = Field(
        None, description="File, Hugging Face export folder, https URL or "
        "hf://owner/repo/FILE[@revision]; none = random init (marked in the tables). "
        "Relative paths are taken from the working directory."
    )
    sha256: str | None = Field(None, description="Expected sha256 of the checkpoint file.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Adapter options: last_heads (UNIP), depth ..."
    )
    overrides: ProtocolOverrides = Field(
        default_factory=dict, description="Per-protocol settings for this model only."
    )

    @field_validator("sha256")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        # A typo here must read as a typo, not as "the checkpoint does not match".
        if v is not None:
            from bench.checkpoint import check_sha256

            check_sha256(v)
        return v

    @property
    def label(self) -> str:
        return self.name or self.adapter


class SyntheticSpec(_Spec):
    """Generate a synthetic dataset like ``name`` at ``root`` if it is missing."""

    train: int = Field(16, gt=0)
    test: int = Field(8, gt=0)
    size: int = Field(128, gt=0, description="Image side in pixels.")
    seed: int = 0


class DatasetSpec(_Spec):
    name: str = Field(description="Dataset registry name (see `unipbench data list`).")
    root: str = Field(description="Dataset folder; relative paths from the working directory.")
    layout: str | None = None
    synthetic: SyntheticSpec | None = None
    overrides: ProtocolOverrides = Field(default_factory=dict)


class ExecutorSpec(_Spec):
    """Where runs execute. Command-line flags override these."""

    kind: Literal["inline", "local", "slurm"] = "inline"
    workers: int = Field(2, gt=0, description="local: worker processes at a time.")
    timeout_min: int = Field(24 * 60, gt=0, description="Wall-clock limit per run (minutes).")
    # slurm
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(1, ge=0)
    cpus_per_task: int | None = Field(None, gt=0)
    mem_gb: float | None = Field(None, gt=0)
    array: bool = Field(True, description="Submit the runs as one job array.")
    array_parallelism: int | None = Field(None, gt=0, description="Array tasks at a time.")
    setup: list[str] = Field(default_factory=list, description="Shell lines run before a job.")
    folder: str | None = Field(None, description="submitit logs; default WORKDIR/_submitit.")
    additional_parameters: dict[str, Any] = Field(
        default_factory=dict, description="Extra #SBATCH options, passed to submitit."
    )


class SuiteSpec(_Spec):
    suite: str = Field(description="Suite name, stored with every result.")
    protocol_version: str | None = Field(
        None, description="Version of every protocol the suite uses, as it was written for "
        "(protocol_versions names one protocol's)."
    )
    protocol_versions: dict[str, str] = Field(
        default_factory=dict,
        description="Per-protocol versions the suite was written for, over protocol_version.",
    )
    description: str | None = None
    models: list[ModelSpec] = Field(min_length=1)
    datasets: list[DatasetSpec] = Field(min_length=1)
    protocols: dict[str, dict[str, Any] | None] = Field(
        min_length=1, description="protocol name -> settings (empty = the paper's)."
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    store: str | None = Field(None, description="Results store; default results/store/…")
    workdir: str | None = Field(None, description="Per-run folders; default results/runs.")


# ---------------------------------------------------------------------------- loading
@dataclass
class Suite:
    """A validated suite and where each of its keys came from."""

    spec: SuiteSpec
    path: Path
    sources: list[YamlSource] = field(default_factory=list)  # main file first

    @property
    def name(self) -> str:
        return self.spec.suite

    def locate(self, key_path: Sequence[str | int]) -> tuple[str, int | None]:
        return locate(self.sources, key_path)

    def problem(self, key_path: Sequence[str | int], message: str) -> SuiteProblem:
        file, line = self.locate(key_path)
        return SuiteProblem(file, line, format_path(key_path), message)

    def protocol_settings(self, protocol: str) -> dict[str, Any]:
        return dict(self.spec.protocols.get(protocol) or {})


def locate(sources: Sequence[YamlSource], key_path: Sequence[str | int]) -> tuple[str, int | None]:
    """File and line that define ``key_path``: the main file wins over its includes."""
    p = tuple(key_path)
    while True:
        for src in sources:
            if src.has(p):
                return str(src.path), src.lines[p]
        if not p:
            return str(sources[0].path), None
        p = p[:-1]


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


def literal_hint(err: Any) -> str:
    """' Did you mean ...?' for a pydantic literal error on a misspelt string, else ''."""
    if err.get("type") != "literal_error" or not isinstance(err.get("input"), str):
        return ""
    choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
    hint = did_you_mean(err["input"], choices) if choices else ""
    return f".{hint}" if hint else ""


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
    from bench.suite_checks import check_semantics

    problems = check_semantics(suite)
    if problems:
        raise SuiteError(problems)
    return suite
