"""A suite's schema and the loaded suite: what :mod:`bench.suites.load` reads and checks build on.

The models here validate one suite's keys and values; :class:`Suite` keeps where each key
came from, so that every :class:`SuiteProblem`, from the schema or from the checks in
:mod:`bench.suites.checks`, names a file and a line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bench.choices import yaml_bools_to_choices
from bench.suites.yaml_source import YamlSource, format_path


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
            from bench.checkpoints.reader import check_sha256

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


def device_list(text: str) -> list[str]:
    """``"0,1,2"`` -> ``["0", "1", "2"]`` (as ``CUDA_VISIBLE_DEVICES`` lists GPUs); ``""``
    -> ``[]``, no GPU."""
    return [d.strip() for d in text.split(",") if d.strip()]


class ExecutorSpec(_Spec):
    """Where runs execute. Command-line flags override these."""

    kind: Literal["inline", "local", "slurm"] = "inline"
    workers: int = Field(2, gt=0, description="local: worker processes at a time.")
    devices: list[str] | None = Field(
        None, description="local: the GPUs workers take in turn, as CUDA_VISIBLE_DEVICES "
        "names them (default: every GPU this process sees; [] = CPU only).",
    )
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
