"""NMI-HAD distillation config: a typed YAML schema whose defaults are the paper's recipe.

Unknown keys are errors; every error names the file (or ``--set``) and the key. Relative
paths are taken from the working directory, like any command-line path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bench.assignments import parse_assignments
from bench.choices import yaml_bools_to_choices
from bench.protocols.optim import check_betas
from unip.nmi import NMI_TARGET

# Keys that may differ between a run and its resumption: they change how, not what.
RESUMABLE_KEYS = frozenset(
    {"data.num_workers", "save_every", "log_every", "resume", "progress", "compile"}
)
# Largest learning rate accepted (absolute, or base_lr x batch_size / 256): AdamW moves
# each weight by about lr per step, so beyond this nothing trains.
MAX_LR = 10.0


class _Strict(BaseModel):
    # No inf/nan anywhere: `--set optim.lr=.inf` would otherwise only fail inside AdamW.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _yaml_bools(cls, data: Any) -> Any:
        # YAML 1.1 reads `mixed_precision: no` as False: give the choice its name back.
        return yaml_bools_to_choices(cls, data)


class TeacherConfig(_Strict):
    """A frozen RGB-pretrained ViT; its layer is given (1-based) or chosen by NMI."""

    adapter: str
    size: str
    checkpoint: str | None = Field(None, description="None: random init (tests only)")
    layer: int | None = Field(None, ge=1, description="1-based block; None: closest to nmi_target")
    nmi_target: float = Field(NMI_TARGET, gt=0, lt=1)
    nmi_images: int = Field(64, ge=1, description="training images the NMI is measured on")
    depth: int | None = Field(None, ge=1, description="fewer blocks: shallow test teachers")
    options: dict[str, Any] = Field(default_factory=dict, description="extra adapter options")


class StudentConfig(_Strict):
    size: Literal["tiny", "small", "base", "T", "S", "B", "t", "s", "b"] = "small"
    depth: int | None = Field(None, ge=1, description="fewer blocks: tests only")
    drop_path: float = Field(0.1, ge=0, lt=1, description="the same in every block")


class DataConfig(_Strict):
    path: str = Field(description="InfMix manifest (.jsonl) or a folder of images")
    img_size: int = Field(224, ge=16)
    scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area range, bicubic
    hflip: bool = True
    num_workers: int = Field(8, ge=0)

    # Field-level checks, so that an error names the key (data.img_size), not the section.
    @field_validator("img_size")
    @classmethod
    def _patch_multiple(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"img_size {v} is not a multiple of the patch size 16")
        return v

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {v}")
        return v


class OptimConfig(_Strict):
    epochs: int = Field(100, ge=1)
    warmup_epochs: float = Field(5, ge=0)
    batch_size: int = Field(4096, ge=1, description="total: processes x accumulation x micro")
    accum_steps: int = Field(1, ge=1)
    base_lr: float = Field(1.5e-4, gt=0, description="lr = base_lr * batch_size / 256")
    lr: float | None = Field(None, gt=0, le=MAX_LR, description="absolute lr; overrides base_lr")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas, each in [0, 1)")
    weight_decay: float = Field(0.05, ge=0, le=10)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        return check_betas(v)

    @field_validator("base_lr")
    @classmethod
    def _scaled_lr_in_range(cls, v: float, info: ValidationInfo) -> float:
        batch = info.data.get("batch_size")  # declared before base_lr: already validated
        if batch is not None and v * batch / 256 > MAX_LR:
            raise ValueError(
                f"base_lr {v:g} x batch_size {batch} / 256 = {v * batch / 256:g} exceeds "
                f"the largest lr, {MAX_LR:g}"
            )
        return v

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256


class DistillConfig(_Strict):
    teacher: TeacherConfig
    student: StudentConfig = StudentConfig()
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    output_dir: str
    seed: int = 0
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    # torch.compile of the training step's models; 'auto': on CUDA only (YAML booleans read
    # as on/off). A runtime choice: a run may resume with another value.
    compile: Literal["auto", "on", "off"] = "off"
    save_every: int = Field(1000, ge=1, description="optimiser steps between checkpoints")
    log_every: int = Field(20, ge=1)
    resume: bool = True
    progress: bool = True

    # Where the settings came from, for error messages: the YAML file, and the --set keys.
    _source: str = PrivateAttr("config")
    _overridden: frozenset[str] = PrivateAttr(frozenset())

    def where(self, key: str) -> str:
        """``--set`` when ``key`` (dotted) was overridden, else the config file's path."""
        return "--set" if key in self._overridden else self._source


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict, overrides: list[str]) -> set[str]:
    """Apply ``key.sub=value`` strings (values parsed as YAML); returns the keys set."""
    values = parse_assignments(overrides, "--set", example="optim.epochs=2")
    for key, value in values.items():
        _set_dotted(raw, key, value)
    return set(values)


def _describe_errors(exc: ValidationError, source: str, overridden: set[str]) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(x) for x in err["loc"]) or "(top level)"
        where = "--set" if key in overridden else source
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {key}: {msg}")
    return "; ".join(parts)


def load_config(path: str | Path, overrides: list[str] | None = None) -> DistillConfig:
    """Read a distillation YAML, apply ``--set`` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"distillation config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level")
    overridden = apply_overrides(raw, list(overrides or []))
    try:
        cfg = DistillConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_describe_errors(exc, str(path), overridden)) from None
    cfg._source, cfg._overridden = str(path), frozenset(overridden)
    _check_teacher(cfg)
    return cfg


def _check_teacher(cfg: DistillConfig) -> None:
    """What the schema cannot see: a known adapter and size, a layer within ``depth``."""
    from bench.backbones.adapter import AdapterError, get_adapter

    t = cfg.teacher
    # The size is one of the teacher adapter's own (DINOv2's g, a timm model's name).
    for key, check in (
        ("adapter", get_adapter),
        ("size", lambda size: get_adapter(t.adapter).canonical_size(size)),
    ):
        try:
            check(getattr(t, key))
        except AdapterError as exc:
            raise ValueError(f"{cfg.where('teacher.' + key)}: teacher.{key}: {exc}") from None
    if t.layer is not None and t.depth is not None and t.layer > t.depth:
        key = "teacher.layer" if "teacher.layer" in cfg._overridden else "teacher.depth"
        raise ValueError(
            f"{cfg.where(key)}: teacher.layer {t.layer} is beyond the teacher's "
            f"{t.depth} blocks (teacher.depth)"
        )


def recipe_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dumps, resumable keys aside."""
    out = []
    for key in sorted(set(a) | set(b)):
        dotted = f"{prefix}{key}"
        if dotted in RESUMABLE_KEYS:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += recipe_differences(va, vb, dotted + ".")
        elif va != vb:
            out.append(f"{dotted}: {va!r} -> {vb!r}")
    return out
