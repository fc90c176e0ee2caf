"""Every hyperparameter of the paper's three evaluation protocols, with its values as defaults.

One pydantic model per protocol (each protocol's declaration names its class, see
:mod:`bench.protocols.registry`). Per-dataset defaults (schedules, evaluation intervals,
crops) come from the dataset catalogue, per-adapter and per-size ones (UNIP's layer
decay, LL-FPN, no relative position bias; ViT-L's blocks and drop path) from the adapter's
declaration; :func:`resolve_settings` applies them before the user's overrides, so no
number is hidden in the trainers.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import to_jsonable_python

from bench.choices import yaml_bools_to_choices
from bench.protocols.optim import WeightDecayRule, check_betas
from bench.registry import did_you_mean

# Settings that say what to keep on disk, not what is computed: changing them must not
# change a run's identity (run id, resume fingerprint), so the hashes leave them out.
# `compile` is a runtime choice like the device: eager and compiled steps agree to float
# tolerance, so switching it neither reruns a finished run nor refuses a resume.
IDENTITY_EXEMPT_SETTINGS = frozenset({"keep_training_state", "save_final_weights", "compile"})

# Marks an option added to a protocol after its version was fixed: while it keeps its
# default it stays out of the run identity, so adding an option never reruns (or orphans)
# a finished result; set to anything else it is part of the identity like any setting.
ADDED_OPTION = {"identity": "unless_default"}


def identity_settings(settings: dict[str, Any], cls: type[BaseModel]) -> dict[str, Any]:
    """The settings (a JSON dump of ``cls``) that decide a run's numbers: without those
    that only say what to keep on disk, and without added options left at their default."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in IDENTITY_EXEMPT_SETTINGS:
            continue
        f = cls.model_fields.get(key)
        if f is not None and f.json_schema_extra == ADDED_OPTION and value == to_jsonable_python(
            f.get_default(call_default_factory=True)
        ):
            continue
        out[key] = value
    return out

# Largest learning rate accepted: AdamW moves each weight by about lr per step, so an lr
# beyond this is a typo (1e45), not a choice: refused up front, not left to diverge.
MAX_LR = 10.0

MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
Compile = Literal["auto", "on", "off"]
LossNorm = Literal["all_pixels", "labelled_pixels"]


class ProtocolSettings(BaseModel):
    """What all three protocols share: data pipeline, inference, optimiser, schedule, runtime.

    ``iters`` and ``warmup_iters`` have no global default: they come from the dataset
    catalogue (``DatasetInfo.protocol_defaults``) or from an override.
    """

    # No inf/nan anywhere: `--set lr=inf` would otherwise only fail inside the optimiser.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # ---- data pipeline (mmseg-style, the paper's 512 x 512 setting)
    crop_size: int = Field(512, gt=0, description="Random crop side for training (pixels).")
    scale: tuple[int, int] = Field(
        (2048, 512),
        description="Resize target (long, short) before ratio jitter; also the test resize.",
    )
    ratio_range: tuple[float, float] = Field(
        (0.5, 2.0), description="Random rescale range applied to `scale` while training."
    )
    cat_max_ratio: float = Field(
        0.75, gt=0, le=1, description="Random crop retries until no class covers more than this."
    )
    batch_size: int = Field(8, gt=0, description="Total batch over all processes per step.")
    num_workers: int = Field(2, ge=0, description="DataLoader workers per process.")
    train_split: str | None = Field(
        None, description="Split trained on; None = the dataset's training split."
    )
    eval_split: str | None = Field(
        None, description="Split evaluated; None = the dataset's default evaluation split."
    )

    # ---- inference
    inference: Literal["slide", "whole"] = Field(
        "slide", description="Sliding-window (paper) or whole-image evaluation."
    )
    slide_crop: int = Field(512, gt=0, description="Sliding-window crop side (pixels).")
    slide_stride: int = Field(341, gt=0, description="Sliding-window stride (pixels).")

    # ---- optimiser: AdamW
    lr: float = Field(1e-4, gt=0, le=MAX_LR, description="Base learning rate (0 < lr <= 10).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1).")
    weight_decay: float = Field(
        0.05,
        ge=0,
        le=10,
        description="AdamW weight decay, on the parameters `weight_decay_rule` picks.",
    )
    weight_decay_rule: WeightDecayRule = Field(
        "all",
        description="Which parameters decay: 'all' (mmcv's default constructor, the released "
        "probing configs), 'no_bias_norm' (the released fine-tuning constructor: 1-D tensors "
        "and biases exempt, pos_embed/cls_token decayed), 'no_bias_norm_tokens' (tokens and "
        "position tables exempt too: what that constructor meant to do).",
    )

    # ---- loss
    loss_norm: LossNorm = Field(
        "all_pixels",
        description="Cross-entropy reduction: 'all_pixels' (mmseg 0.x: mean over every pixel "
        "of the batch, ignored ones counting 0; the paper's) or 'labelled_pixels' (mean over "
        "the pixels that carry a label). Several processes: each takes its own mean and DDP "
        "averages them, as in the release.",
    )

    # ---- schedule: linear warm-up, then poly to 0, per iteration
    iters: int | None = Field(
        None, gt=0, description="Optimiser steps (from the dataset catalogue)."
    )
    warmup_iters: int | None = Field(
        None, ge=0, description="Linear warm-up steps (from the dataset catalogue)."
    )
    warmup_ratio: float = Field(
        1e-6, ge=0, le=1, description="lr multiplier at step 0 (mmseg), in [0, 1]."
    )
    poly_power: float = Field(1.0, gt=0, le=10, description="Poly decay power after warm-up.")
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="Floor of the poly decay (x lr), in [0, 1]."
    )

    # ---- backbone features
    layers: list[int] = Field(
        [3, 5, 7, 11], description="Zero-based blocks read (ViT-L: [7, 11, 15, 23])."
    )

    # ---- runtime (not from the paper; choices that do not move the numbers)
    eval_interval: int = Field(
        1600,
        ge=0,
        description="Evaluate every N steps (0 = only at the end; always at the end). The "
        "paper's datasets set their released interval (their catalogue entries).",
    )
    checkpoint_interval: int = Field(
        800, ge=0, description="Save resumable state every N steps (0 = never)."
    )
    grad_accum_steps: int = Field(
        1, gt=0, description="Micro-batches per optimiser step; batch_size is the total."
    )
    mixed_precision: MixedPrecision = Field(
        "auto",
        description="'auto': fp16 + GradScaler on CUDA, full precision on CPU; "
        "'bf16' autocasts on CPU too; 'no' never autocasts.",
    )
    compile: Compile = Field(
        "off",
        description="torch.compile the model of the training step: 'auto' on CUDA only, "
        "'on', 'off' (YAML booleans accepted). Checkpoints hold the plain module's weights. "
        "Not part of the run's identity.",
    )
    log_interval: int = Field(20, gt=0, description="Progress-bar loss refresh, in steps.")
    keep_training_state: bool = Field(
        False,
        description="Keep the resumable training state (checkpoint.pt: weights, optimiser "
        "moments, RNG states; the cached mode's feature cache) once result.json is written. "
        "Off: a finished run keeps result.json, and final_weights.safetensors when "
        "`save_final_weights` is on. Not part of the run's identity.",
    )
    save_final_weights: bool = Field(
        False,
        description="Write the trained weights of the last iteration to "
        "final_weights.safetensors in the run's folder (fine-tuning: the whole segmentor; "
        "probing: the heads). Not part of the run's identity, so turning it on does not "
        "rerun finished runs.",
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_bools(cls, data: Any) -> Any:
        # YAML 1.1 reads `mixed_precision: no` as False: give the choice its name back.
        return yaml_bools_to_choices(cls, data)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        return check_betas(v)

    @field_validator("ratio_range")
    @classmethod
    def _ordered_ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"ratio_range must be 0 < low <= high, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ProtocolSettings:
        if self.slide_stride > self.slide_crop:
            raise ValueError(
                f"slide_stride {self.slide_stride} > slide_crop {self.slide_crop} leaves "
                "pixels unpredicted"
            )
        if self.iters is not None and self.warmup_iters is not None and (
            self.warmup_iters > self.iters
        ):
            raise ValueError(f"warmup_iters {self.warmup_iters} exceeds iters {self.iters}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by grad_accum_steps "
                f"{self.grad_accum_steps}"
            )
        return self


class FineTuneSettings(ProtocolSettings):
    """Full fine-tuning: backbone + neck + UPerNet + auxiliary FCN, layer-wise lr decay.

    The backbone is the released pipeline's fine-tuning ViT: LayerScale and (baselines)
    a relative position bias added to the loaded ViT (bench.models.vit_extras)."""

    layer_decay: float = Field(
        0.65,
        gt=0,
        le=1,
        description="Layer-wise lr decay: multiplier decay^(L+1-layer_id). 0.65 for the "
        "baselines; UNIP's per-adapter default is 0.85 (its adapter's protocol_defaults).",
    )
    weight_decay_rule: WeightDecayRule = Field(
        "no_bias_norm",
        description="As in ProtocolSettings; the released fine-tuning constructor exempts 1-D "
        "tensors and biases only (pos_embed and cls_token decay, as in the paper's runs).",
    )
    drop_path: float = Field(0.1, ge=0, lt=1, description="Stochastic depth (ViT-L: 0.2).")
    layer_scale_init: float | None = Field(
        1.0,
        ge=0,
        description="Initial value of the trainable per-block LayerScale (gamma_1/gamma_2) "
        "given to blocks without one, as the released configs' init_values=1.; None or 0 = "
        "none added. Checkpoints with their own LayerScale (DeiT III) keep their values.",
    )
    rel_pos_bias: bool = Field(
        True,
        description="Per-block relative position bias (BEiT-style, zero-initialised table "
        "over the training crop's patch grid, plus 3 prefix-token entries), as the released "
        "configs' use_rel_pos_bias=True; UNIP's per-adapter default is off.",
    )
    neck: str = Field(
        "multilevel",
        description="NECKS registry name: 'multilevel' (blocks `layers`) or 'llfpn' "
        "(last block only; UNIP's per-adapter default).",
    )
    head: str = Field("uperhead", description="HEADS registry name of the decode head.")
    head_channels: int | None = Field(
        None, gt=0, description="UPerNet channels; None = the backbone's embed dim."
    )
    pool_scales: tuple[int, ...] = Field((1, 2, 3, 6), description="UPerNet PPM pool scales.")
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the classifier.")
    aux_head: str | None = Field("fcn", description="Auxiliary head (None = no auxiliary).")
    aux_channels: int = Field(256, gt=0, description="Auxiliary FCN channels.")
    aux_num_convs: int = Field(1, ge=0, description="Auxiliary FCN 3x3 convs.")
    aux_in_index: int = Field(
        2, ge=0, le=3, description="Pyramid level fed to the auxiliary head (2 = 1/16)."
    )
    aux_loss_weight: float = Field(0.4, ge=0, description="Auxiliary loss weight.")
    aux_dropout: float = Field(0.1, ge=0, lt=1, description="Auxiliary head dropout.")


class LinearProbeSettings(ProtocolSettings):
    """Frozen backbone; blocks `layers` concatenated (4·D) into one 1x1 conv head.

    An lr sweep trains one head per lr of `sweep_lrs` on the same batches, one frozen
    backbone forward per step: always in cached mode, with `sweep` in on_the_fly mode.
    `select` says which head the result reports; every head is kept in `lr_sweep`.
    """

    head: Literal["linear", "bn_linear"] = Field(
        "linear", description="'linear' (official configs: 1x1 conv) or 'bn_linear' (BN first)."
    )
    mode: Literal["on_the_fly", "cached"] = Field(
        "on_the_fly",
        description="'on_the_fly': the fine-tuning pipeline with augmentation; 'cached': "
        "features of test-transformed, centre-cropped images computed once and reused "
        "by every lr of `sweep_lrs` (not the paper's protocol, recorded with the result).",
    )
    sweep: bool = Field(
        False,
        json_schema_extra=ADDED_OPTION,
        description="on_the_fly mode: train one head per lr of `sweep_lrs` together, on the "
        "same augmented batches with one frozen-backbone forward per step (as DINOv2's "
        "linear evaluation). Each head is initialised, fed, optimised and evaluated as the "
        "single-lr run with the same seed would be, so it equals that run. Off (default): "
        "the paper's single lr `lr`. Cached mode always sweeps.",
    )
    sweep_lrs: list[float] = Field(
        [1e-4, 3e-4, 1e-3, 3e-3],
        min_length=1,
        description="Learning rates of an lr sweep (`sweep`, or cached mode; ours, not the "
        "paper's). Which one is reported is `select`'s choice; every lr's numbers are kept "
        "in the result's `lr_sweep`.",
    )
    sweep_heads: list[Literal["linear", "bn_linear"]] | None = Field(
        None,
        json_schema_extra=ADDED_OPTION,
        description="Head types of an lr sweep: one head per (type, lr of `sweep_lrs`), "
        "types outermost, all trained together. None: `head` only.",
    )
    select: Literal["paper_lr", "best_on_eval"] | None = Field(
        None,
        json_schema_extra=ADDED_OPTION,
        description="Which head of an lr sweep the result reports: 'paper_lr' (the `head` "
        "trained at `lr`, which must then be one of `sweep_lrs`, and `head` one of "
        "`sweep_heads`: the paper's number, the sweep only adds the others beside it) or "
        "'best_on_eval' (the best final mIoU on the evaluation split, i.e. the lr is "
        "selected on the split it is scored on, as usual for probe sweeps). None: "
        "'paper_lr' for the on_the_fly sweep, 'best_on_eval' for cached mode (which has no "
        "paper lr). The result names the rule.",
    )
    cache_dtype: Literal["float16", "float32"] = Field(
        "float16", description="Storage type of cached features (halves memory at paper scale)."
    )

    @field_validator("sweep_lrs")
    @classmethod
    def _positive_lrs(cls, v: list[float]) -> list[float]:
        if any(not 0 < lr <= MAX_LR for lr in v):
            raise ValueError(f"every sweep lr must be in (0, {MAX_LR:g}], got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"sweep_lrs repeats an lr: {v}")
        return v

    @property
    def sweeps(self) -> bool:
        """Whether this run trains one head per lr of `sweep_lrs` (and `sweep_heads` type)."""
        return self.mode == "cached" or self.sweep

    @property
    def sweep_grid(self) -> list[tuple[str, float]]:
        """(head type, lr) of every head of the sweep, in training and result order."""
        return [(h, lr) for h in (self.sweep_heads or [self.head]) for lr in self.sweep_lrs]

    @property
    def selection(self) -> str:
        """The rule that picks the reported head of a sweep (`select`, or the mode's own)."""
        if self.select is not None:
            return self.select
        return "best_on_eval" if self.mode == "cached" else "paper_lr"

    @model_validator(mode="after")
    def _sweep_consistent(self) -> LinearProbeSettings:
        if self.sweep and self.mode == "cached":
            raise ValueError(
                "sweep: true applies to mode on_the_fly; cached mode always trains every lr "
                "of sweep_lrs"
            )
        if self.sweep_heads is not None and not self.sweeps:
            raise ValueError("sweep_heads needs an lr sweep (sweep: true, or mode: cached)")
        if self.sweep_heads is not None and (
            not self.sweep_heads or len(set(self.sweep_heads)) != len(self.sweep_heads)
        ):
            raise ValueError(f"sweep_heads must list distinct head types, got {self.sweep_heads}")
        if self.select is not None and not self.sweeps:
            raise ValueError(
                f"select: {self.select} needs an lr sweep (sweep: true, or mode: cached)"
            )
        if self.sweeps and self.selection == "paper_lr" and self.lr not in self.sweep_lrs:
            raise ValueError(
                f"lr {self.lr:g} is not one of sweep_lrs {self.sweep_lrs}; select: paper_lr "
                "reports the head trained at lr (add it, or use select: best_on_eval)"
            )
        if (self.sweeps and self.selection == "paper_lr" and self.sweep_heads is not None
                and self.head not in self.sweep_heads):
            raise ValueError(
                f"head {self.head} is not one of sweep_heads {self.sweep_heads}; select: "
                "paper_lr reports that head type at lr"
            )
        return self


class LayerwiseProbeSettings(ProtocolSettings):
    """Frozen backbone; one D -> classes 1x1 conv per block, all trained in one pass."""

    layers: Literal["all"] | list[int] = Field(  # type: ignore[assignment]
        "all", description="'all' blocks or a list of zero-based block indices."
    )
    head: Literal["linear", "bn_linear"] = Field("linear", description="Per-layer head.")


def canonical_protocol(protocol: str) -> str:
    """The registered name of ``protocol`` or of one of its aliases (a ValueError if none)."""
    from bench.protocols.registry import canonical_protocol as _canonical

    return _canonical(protocol)


def dataset_key(name: str) -> str:
    """'SCUT-Seg', 'scut_seg' -> 'scutseg': how dataset names compare across spellings."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def dataset_protocol_defaults(dataset: str, protocol: str) -> dict[str, Any]:
    """The settings the dataset catalogue gives ``protocol`` on ``dataset`` ({} for a
    dataset nobody registered: its schedule must then be given)."""
    from bench.data import get_dataset_info, list_datasets

    names = list_datasets()
    if dataset not in names:
        # 'SCUT-Seg' is scut_seg, 'MFNet' mfnet_thermal: a catalogue name in another
        # spelling, or the start of exactly one.
        key = dataset_key(dataset)
        same = [n for n in names if dataset_key(n) == key]
        starts = [n for n in names if key and dataset_key(n).startswith(key)]
        found = same or (starts if len(starts) == 1 else [])
        if not found:
            return {}
        dataset = found[0]
    return get_dataset_info(dataset).protocol_defaults_for(protocol)


def resolve_settings(
    protocol: str,
    dataset: str,
    adapter: str,
    size: str,
    overrides: dict[str, Any] | None = None,
) -> ProtocolSettings:
    """Settings class defaults <- dataset catalogue <- the protocol's defaults for the
    backbone's geometry <- adapter (and size) <- ``overrides``.

    The dataset's and the adapter's ``protocol_defaults`` only fill fields the protocol's
    settings class has. An unknown protocol or override key raises ValueError with a
    did-you-mean suggestion; a value of the wrong type raises pydantic's ValidationError
    (also a ValueError).
    """
    from bench.backbones.adapter import adapter_protocol_defaults, get_adapter
    from bench.protocols.registry import get_protocol

    proto = get_protocol(protocol)
    cls = proto.settings
    fields = set(cls.model_fields)
    geometry = proto.geometry_fn()
    values: dict[str, Any] = {}
    for layer in (
        dataset_protocol_defaults(dataset, proto.name),
        geometry(get_adapter(adapter).size(size)) if geometry is not None else {},
        adapter_protocol_defaults(adapter, proto.name, size),
    ):
        values.update({k: v for k, v in layer.items() if k in fields})
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ValueError(
                f"unknown setting {key!r} for protocol {proto.name}."
                + did_you_mean(key, sorted(fields))
            )
        values[key] = value
    settings = cls(**values)
    missing = [k for k in ("iters", "warmup_iters") if getattr(settings, k, 0) is None]
    if missing:
        raise ValueError(
            f"dataset {dataset!r} has no paper schedule; set {' and '.join(missing)} "
            f"(e.g. --set iters=16000 --set warmup_iters=1500)."
        )
    return settings


def settings_from_dict(protocol: str, data: dict[str, Any]) -> ProtocolSettings:
    """Rebuild settings stored in a result (exact field set, validated)."""
    from bench.protocols.registry import get_protocol

    return get_protocol(protocol).settings(**data)
