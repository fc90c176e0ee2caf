"""The adapter contract: how a pre-training method's checkpoints become a Backbone.

An adapter declares its checkpoint formats explicitly (key path, prefixes, dropped keys,
renames, an optional converter). Loading picks a format by the checkpoint's *structure*
(a directory is an HF export; otherwise the first declared format whose key path
resolves), converts, then checks the exact sets of missing and unexpected keys, so a
checkpoint from another method fails loudly instead of loading half its weights.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.backbones.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneMeta
from bench.registry import ADAPTERS, RegistryError, did_you_mean, unknown_name_message


class AdapterError(ValueError):
    """A checkpoint that does not fit the adapter it was handed to."""


# Options every adapter accepts: a shallower ViT (tests, demos) and another patch size.
COMMON_OPTIONS = ("depth", "patch_size")


def check_options(adapter: Adapter, options: dict[str, Any]) -> None:
    """Refuse option names the adapter does not know and depths that cannot build a ViT."""
    known = (*COMMON_OPTIONS, *adapter.extra_options)
    for key in options:
        if key not in known:
            raise AdapterError(
                unknown_name_message("option", key, known, owner=f"adapter {adapter.name!r}")
            )
    for key in ("depth", "patch_size"):
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdapterError(
                f"adapter option {key}={value!r} must be a positive whole number"
            )


@dataclass(frozen=True)
class SizeSpec:
    """One model size an adapter declares: its geometry, its names and its defaults.

    ``name`` is the canonical name results are stored under; ``letter`` is what tables
    print ("T", "S", "B", "L", "g"); ``aliases`` are further names a suite may use (the
    name and letter always resolve, case-insensitively). ``vit_kwargs`` are further
    keyword arguments of the timm model (SwiGLU MLPs, LayerScale ...);
    ``protocol_defaults`` are settings per protocol name that this size brings beyond what
    the protocols derive from its depth, below the adapter's own and the user's.
    """

    name: str
    letter: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    aliases: tuple[str, ...] = ()
    vit_kwargs: Mapping[str, Any] = field(default_factory=dict)
    protocol_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def names(self) -> tuple[str, ...]:
        """Every lower-case name this size answers to."""
        return tuple(dict.fromkeys(n.lower() for n in (self.name, self.letter, *self.aliases)))

    def geometry(self) -> dict[str, int]:
        return {
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "patch_size": self.patch_size,
        }


def _vit(name: str, letter: str, dim: int, depth: int, heads: int, **kw: Any) -> SizeSpec:
    aliases = (f"vit-{letter.lower()}", f"vit_{letter.lower()}")
    return SizeSpec(name, letter, dim, depth, heads, aliases=aliases, **kw)


# The standard ViT sizes (patch 16) every ordinary ViT adapter shares. What the protocols
# read of a deeper ViT (ViT-L's blocks 8/12/16/24) follows from its depth: each protocol
# declares that (Protocol.geometry_defaults), so sizes name no protocol.
VIT_TINY = _vit("tiny", "T", 192, 12, 3)
VIT_SMALL = _vit("small", "S", 384, 12, 6)
VIT_BASE = _vit("base", "B", 768, 12, 12)
VIT_LARGE = _vit("large", "L", 1024, 24, 16)
STANDARD_VIT_SIZES: tuple[SizeSpec, ...] = (VIT_TINY, VIT_SMALL, VIT_BASE, VIT_LARGE)


def find_size(sizes: Sequence[SizeSpec], size: str, owner: str = "") -> SizeSpec:
    """The spec among ``sizes`` that ``size`` names, or an AdapterError listing them."""
    key = str(size).strip().lower()
    for spec in sizes:
        if key in spec.names():
            return spec
    known = [n for spec in sizes for n in spec.names()]
    listed = ", ".join(f"{s.letter} ({s.name})" for s in sizes) or "none"
    raise AdapterError(
        f"unknown ViT size {size!r}{f' for adapter {owner!r}' if owner else ''}; "
        f"use one of {listed}." + did_you_mean(key, known)
    )


def canonical_size(size: str, adapter: str | None = None) -> str:
    """'S', 'small', 'vit_s' -> 'small': among ``adapter``'s sizes when it is named, else
    among the standard ViT sizes; anything else is an error with a suggestion."""
    if adapter is not None:
        return get_adapter(adapter).canonical_size(size)
    return find_size(STANDARD_VIT_SIZES, size).name


def size_letter(size: str, adapter: str | None = None) -> str:
    """What tables print for a stored size: the adapter's letter for it ('g' for DINOv2's
    giant), the standard ViT letter when the adapter is not known here, else ``size``."""
    if adapter is not None:
        try:
            return get_adapter(adapter).letter(size)
        except AdapterError:
            pass
    try:
        return find_size(STANDARD_VIT_SIZES, size).letter
    except AdapterError:
        return str(size)


StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CheckpointFormat:
    """One published layout of a method's checkpoint.

    ``key_path``: nested keys leading to the state dict (``()`` = the file is the dict).
    ``strip_prefixes``: removed from the start of every key, in order, where present.
    ``keep_prefix``: if set, only keys starting with it (after ``strip_prefixes``) are kept,
    and it is stripped.
    ``drop``: regexes of keys that are discarded (decoders, heads, mask tokens ...).
    ``rename``: (regex, replacement) pairs applied in order after dropping.
    ``convert``: a final function ``(state, context) -> state`` for what renames cannot
    express (fusing q/k/v). When the layout implies an architecture detail (a distilled
    DeiT's extra token), it records timm keyword arguments in ``context["vit_kwargs"]``.
    ``directory``: the format is a Hugging Face export folder (config.json + weights).
    """

    name: str
    description: str
    key_path: tuple[str, ...] = ()
    strip_prefixes: tuple[str, ...] = ()
    keep_prefix: str | None = None
    drop: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    convert: Callable[[StateDict, dict], StateDict] | None = None
    directory: bool = False

    def extract(self, obj: Any) -> Any:
        """Follow ``key_path``; None when the checkpoint does not have that structure."""
        for k in self.key_path:
            if not isinstance(obj, Mapping) or k not in obj:
                return None
            obj = obj[k]
        return obj if isinstance(obj, Mapping) else None

    def apply(self, state: Mapping[str, Any], context: dict) -> StateDict:
        out: StateDict = {}
        drop_res = [re.compile(p) for p in self.drop]
        for key, value in state.items():
            k = str(key)
            # Wrappers (DDP's ``module.``) go first, so keep_prefix names the real part.
            for p in self.strip_prefixes:
                if k.startswith(p):
                    k = k[len(p) :]
            if self.keep_prefix is not None:
                if not k.startswith(self.keep_prefix):
                    continue
                k = k[len(self.keep_prefix) :]
            if any(r.search(k) for r in drop_res):
                continue
            for pattern, repl in self.rename:
                k = re.sub(pattern, repl, k)
            out[k] = value
        if self.convert is not None:
            out = self.convert(out, context)
        return out


class ProtocolDefaults(Mapping[str, Mapping[str, Any]]):
    """An adapter's settings per protocol name, which also merges in a size's.

    Read as a mapping (``adapter.protocol_defaults["fine_tune"]``) it is what the adapter
    declares; called (``adapter.protocol_defaults("fine_tune", "large")``) it is the
    size's defaults for that protocol overridden by the adapter-wide ones, the order in
    which the protocols layer them (dataset, then size, then adapter, then the user).
    """

    def __init__(self, table: Mapping[str, Mapping[str, Any]], adapter: Adapter) -> None:
        if not isinstance(table, Mapping):
            raise AdapterError(
                f"adapter {adapter.name!r}: protocol_defaults must map protocol names to "
                f"settings, got a {type(table).__name__}"
            )
        for key, value in table.items():
            if not isinstance(value, Mapping):
                raise AdapterError(
                    f"adapter {adapter.name!r}: protocol_defaults[{key!r}] must be a mapping "
                    f"of settings, got a {type(value).__name__}"
                )
        self._table = {str(k): dict(v) for k, v in table.items()}
        self._adapter = adapter

    def __getitem__(self, protocol: str) -> Mapping[str, Any]:
        return self._table[protocol]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return repr(self._table)

    def __call__(self, protocol: str, size: str) -> dict[str, Any]:
        spec = self._adapter.size(size)
        merged = dict(spec.protocol_defaults.get(protocol, {}))
        merged.update(self._table.get(protocol, {}))
        return copy.deepcopy(merged)  # the caller's to change (lists of blocks ...)


@dataclass
class Adapter:
    """A pre-training method: its name, sizes, normalisation and checkpoint formats."""

    name: str
    description: str
    formats: tuple[CheckpointFormat, ...]
    # Every size this method's models come in (geometry, names, per-size defaults) ...
    sizes: tuple[SizeSpec, ...] = STANDARD_VIT_SIZES
    # ... and the canonical names of those with released weights.
    published_sizes: tuple[str, ...] = ("tiny", "small", "base", "large")
    # Keyword options load_backbone accepts for this method beyond the common ones
    # (COMMON_OPTIONS); anything else is a typo and refused rather than ignored.
    extra_options: tuple[str, ...] = ()
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    layer_scale: bool = False  # DeiT III: LayerScale in every block
    vit_kwargs: dict[str, Any] = field(default_factory=dict)
    # Options the evaluation protocols (fine-tuning, probing, their FLOPs) load this
    # method's backbone with, under the user's own: how the method's released downstream
    # code builds it when that differs from the pre-training model (UNIP's head split).
    downstream_options: dict[str, Any] = field(default_factory=dict)
    # Protocol settings this method brings, keyed by protocol name (see ProtocolDefaults).
    protocol_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.protocol_defaults = ProtocolDefaults(self.protocol_defaults, self)

    # -- sizes -----------------------------------------------------------------------
    def size(self, size: str) -> SizeSpec:
        """The declared size ``size`` names ('S', 'small', 'vit_s' ...)."""
        return find_size(self.sizes, size, self.name)

    def canonical_size(self, size: str) -> str:
        return self.size(size).name

    def letter(self, size: str) -> str:
        """What tables print for ``size`` ('T', 'S', 'B', 'L', 'g')."""
        return self.size(size).letter

    def size_for_width(self, embed_dim: int) -> SizeSpec | None:
        """The declared size of this embed dim, if exactly one has it (for error hints)."""
        fits = [s for s in self.sizes if s.embed_dim == int(embed_dim)]
        return fits[0] if len(fits) == 1 else None

    # -- architecture ------------------------------------------------------------------
    def build_vit(
        self,
        size: str,
        img_size: int | tuple[int, int] = 224,
        drop_path_rate: float = 0.0,
        depth: int | None = None,
        **overrides: Any,
    ) -> nn.Module:
        """A randomly initialised timm ViT of this method's architecture (no drop path
        unless asked: a fine-tuning protocol sets its own)."""
        from timm.models.vision_transformer import VisionTransformer

        spec = self.size(size)
        geo = spec.geometry()
        if depth is not None:
            geo["depth"] = int(depth)
        kwargs: dict[str, Any] = dict(
            img_size=img_size,
            mlp_ratio=4.0,
            qkv_bias=True,
            num_classes=0,
            global_pool="token",
            drop_path_rate=drop_path_rate,
            dynamic_img_size=True,
        )
        if self.layer_scale:
            kwargs["init_values"] = 1e-4
        kwargs.update(geo)
        kwargs.update(spec.vit_kwargs)
        kwargs.update(self.vit_kwargs)
        kwargs.update(overrides)
        return VisionTransformer(**kwargs)

    def normalisation(self, size: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std of the images ``size``'s weights were trained on."""
        return self.mean, self.std

    def customise(self, vit: nn.Module, context: dict) -> nn.Module:
        """Hook for method-specific architecture changes (UNIP's last block)."""
        return vit

    def format(self, name: str) -> CheckpointFormat:
        for f in self.formats:
            if f.name == name:
                return f
        names = [f.name for f in self.formats]
        raise AdapterError(
            unknown_name_message("checkpoint format", name, names, owner=f"adapter {self.name!r}")
        )

    def choose_format(self, raw: Any, is_directory: bool) -> CheckpointFormat:
        """First declared format whose structure the checkpoint has (never key sniffing)."""
        candidates = [f for f in self.formats if f.directory == is_directory]
        if not candidates:
            kind = "a Hugging Face export directory" if is_directory else "a checkpoint file"
            raise AdapterError(f"adapter {self.name!r} declares no format that reads {kind}")
        for f in candidates:
            if f.extract(raw) is not None:
                return f
        return candidates[-1]  # the most general one; its key check will say what is wrong

    def describe_formats(self) -> list[str]:
        return [f"{f.name}: {f.description}" for f in self.formats]


def register_adapter(adapter: Adapter, overwrite: bool = False) -> Adapter:
    """Register an adapter object directly (plug-ins normally use entry points)."""
    ADAPTERS.register(adapter.name, adapter, overwrite=overwrite)
    return adapter


def get_adapter(name: str) -> Adapter:
    try:
        obj = ADAPTERS.get(name)
    except RegistryError as exc:
        raise AdapterError(str(exc)) from None
    if not isinstance(obj, Adapter):
        raise AdapterError(f"entry point for adapter {name!r} is not an Adapter: {obj!r}")
    return obj


def list_adapters() -> list[str]:
    return ADAPTERS.names()


def adapter_protocol_defaults(adapter_name: str, protocol: str, size: str) -> dict[str, Any]:
    """Settings ``protocol`` gets for ``adapter_name``'s ViT of ``size``: the size's
    declared defaults, overridden by the adapter's declared ``protocol_defaults``."""
    return dict(get_adapter(adapter_name).protocol_defaults(protocol, size))


def downstream_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Options an evaluation protocol loads ``name``'s backbone with: the adapter's
    ``downstream_options``, overridden by the user's ``options``."""
    return {**get_adapter(name).downstream_options, **dict(options or {})}


_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def _geometry_hint(adapter: Adapter, expected: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """What size / depth the checkpoint is when it is not the model's ("" when it is)."""
    hints = []
    key = "patch_embed.proj.weight"
    got, want = state.get(key), expected.get(key)
    if (
        isinstance(got, torch.Tensor)
        and isinstance(want, torch.Tensor)
        and got.ndim == 4
        and got.shape[0] != want.shape[0]
    ):
        width = int(got.shape[0])
        fits = adapter.size_for_width(width)
        what = (
            f"a ViT-{fits.letter} (pass size {fits.letter!r})"
            if fits
            else f"no size adapter {adapter.name!r} declares"
        )
        hints.append(f"its embed dim is {width}, the model's {want.shape[0]}: it is {what}")

    def depth(keys: Any) -> int:
        return 1 + max((int(m.group(1)) for k in keys if (m := _BLOCK_KEY.match(k))), default=-1)

    ckpt_depth, model_depth = depth(state), depth(expected)
    if ckpt_depth and ckpt_depth != model_depth:
        hints.append(f"it has {ckpt_depth} blocks, the model {model_depth}")
    return "; ".join(hints)


def _shape_fits(key: str, got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal shapes; the position table only needs its layout and width (it is resampled)."""
    if key == "pos_embed":
        return got.ndim == 3 and got.shape[0] == 1 and got.shape[-1] == want.shape[-1]
    return tuple(got.shape) == tuple(want.shape)


def check_keys(
    adapter: Adapter,
    fmt: str,
    source: str,
    model: nn.Module,
    state: Mapping[str, Any],
    hint: str = "",
) -> None:
    """Raise AdapterError naming every missing / unexpected / mis-shaped key.

    ``hint`` (why the checkpoint may not fit, e.g. its structure matched no format) and
    what the checkpoint's size or depth is, when not the model's, lead the message.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shape_bad = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if isinstance(state[k], torch.Tensor) and not _shape_fits(k, state[k], expected[k])
    ]
    common = set(expected) & set(state)
    not_tensor = sorted(k for k in common if not isinstance(state[k], torch.Tensor))
    if not (missing or unexpected or shape_bad or not_tensor):
        return

    def _few(keys: Sequence[str], n: int = 12) -> str:
        more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
        return ", ".join(keys[:n]) + more

    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_few(unexpected)}")
    if shape_bad:
        parts.append(f"shape mismatches ({len(shape_bad)}): {_few(shape_bad, 6)}")
    if not_tensor:
        parts.append(f"non-tensor values: {_few(not_tensor)}")
    why = "; ".join(h for h in (hint, _geometry_hint(adapter, expected, state)) if h)
    raise AdapterError(
        f"checkpoint {source} does not fit adapter {adapter.name!r} (format {fmt!r})"
        + (f" ({why})" if why else "")
        + ": "
        + "; ".join(parts)
    )


def resample_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """Bicubic resampling of a ``1 x (prefix + h*w) x D`` table to ``grid``, prefix kept."""
    prefix, table = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = table.shape[1]
    side = int(round(n**0.5))
    if side * side != n:
        raise AdapterError(
            f"pos_embed holds {n} patch entries after {num_prefix_tokens} prefix token(s), "
            "which is not a square grid"
        )
    if (side, side) == tuple(grid):
        return pos_embed
    d = table.shape[-1]
    t = table.reshape(1, side, side, d).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=grid, mode="bicubic", align_corners=False)
    t = t.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d).to(pos_embed.dtype)
    return torch.cat([prefix, t], dim=1)


def as_pair(img_size: int | Sequence[int]) -> tuple[int, int]:
    """``512`` or ``(512, 640)`` -> (height, width); anything else is an AdapterError."""
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        pair: tuple = (img_size, img_size)
    elif isinstance(img_size, Sequence) and not isinstance(img_size, str) and len(img_size) == 2:
        pair = tuple(img_size)
    else:
        pair = ()
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise AdapterError(
            f"img_size {img_size!r} is not a positive int or a (height, width) pair of ints"
        )
    return (int(pair[0]), int(pair[1]))


def _structure_hint(adapter: Adapter, fmt: CheckpointFormat, raw: Any) -> str:
    """When no declared format's structure is in the file: what is, and whose it may be."""
    if fmt.directory:
        return ""
    if not isinstance(raw, Mapping):
        return f"the file holds a {type(raw).__name__}, not a dict of weights"
    nested = [f for f in adapter.formats if f.key_path and not f.directory]
    if not nested or any(f.extract(raw) is not None for f in nested):
        return ""
    top = [str(k) for k in raw if not isinstance(raw[k], torch.Tensor)]
    if not top:
        return ""
    shown = ", ".join(repr(k) for k in top[:6]) + (" ..." if len(top) > 6 else "")
    others = [
        name
        for name in list_adapters()
        if name != adapter.name
        and any(
            f.key_path and not f.directory and f.extract(raw) is not None
            for f in get_adapter(name).formats
        )
    ]
    whose = f"; its layout is that of adapter(s) {', '.join(others)}" if others else ""
    wanted = " or ".join(repr(".".join(f.key_path)) for f in nested)
    return f"adapter {adapter.name!r} expects weights under {wanted}, the file has {shown}{whose}"


def _build_for_checkpoint(build: Callable[..., nn.Module]) -> nn.Module:
    """``build()``'s model with no memory behind its weights, when that is safe.

    Every persistent tensor is about to be replaced by the checkpoint's (the key check
    guarantees it), so allocating and randomly initialising a ViT-B's 86M weights first
    would only cost time: more than reading the checkpoint. A module with non-persistent
    buffers (which no checkpoint provides) is built normally instead.
    """
    with torch.device("meta"):
        vit = build(weight_init="skip")
    persistent = set(vit.state_dict())
    if any(name not in persistent for name, _ in vit.named_buffers()):
        return build()
    return vit


def _assign_state(vit: nn.Module, state: StateDict) -> None:
    """Load ``state`` by handing its tensors to the model (no copy), in the model's dtypes."""
    expected = vit.state_dict()
    state = {
        k: v.to(dtype=expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()
    }
    vit.load_state_dict(state, strict=True, assign=True)


def load_backbone(
    name: str,
    size: str = "small",
    checkpoint: str | Path | None = None,
    img_size: int | Sequence[int] = 224,
    *,
    format: str | None = None,
    sha256: str | None = None,
    drop_path_rate: float = 0.0,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> Backbone:
    """Build ``name``'s ViT of ``size`` and load ``checkpoint`` into it, in eval mode.

    The model comes back in eval mode with no drop path, so ``features`` is deterministic;
    training code (the fine-tuning protocol) asks for its ``drop_path_rate`` and calls
    ``train()`` itself.

    ``img_size`` sides are rounded up to a multiple of the patch size, as the
    segmentors pad their inputs. ``checkpoint`` is a local file (.pth/.pt/.bin/
    .safetensors), a Hugging Face export directory, an ``https://`` URL (cached,
    sha256-verified when ``sha256`` is given) or None for random initialisation
    (recorded in ``backbone.meta.random_init``).
    Extra ``options`` go to the adapter (e.g. ``last_heads`` for UNIP, ``depth`` for
    shallow test models).
    """
    from bench.checkpoints.resolve import read_checkpoint, resolve_checkpoint

    adapter = get_adapter(name)
    check_options(adapter, options)
    size = adapter.canonical_size(size)
    # The model is built for the grid its inputs will have: the segmentors pad images to
    # the patch, so a 512 crop is a 37x37 grid at patch 14 (not 36x36, which would make
    # every forward resample the position table once more).
    patch = int(options.get("patch_size") or adapter.size(size).patch_size)
    img = tuple(-(-side // patch) * patch for side in as_pair(img_size))
    context: dict[str, Any] = {"adapter": adapter.name, "size": size, "img_size": img, **options}
    mean, std = adapter.normalisation(size)
    meta = BackboneMeta(adapter=adapter.name, size=size)
    build_kwargs: dict[str, Any] = {k: v for k, v in options.items() if k in ("patch_size",)}
    build_kwargs["depth"] = options.get("depth")

    def build(**extra: Any) -> nn.Module:
        vit = adapter.build_vit(size, img, drop_path_rate=drop_path_rate, **build_kwargs, **extra)
        return adapter.customise(vit, context)

    if checkpoint is None:
        vit = build()
        meta.extra.update(context.get("meta_extra", {}))
        return Backbone(vit, meta, mean=mean, std=std).eval()

    path, digest = resolve_checkpoint(checkpoint, sha256=sha256, cache_dir=cache_dir)
    raw, file_meta = read_checkpoint(path)
    fmt = adapter.format(format) if format else adapter.choose_format(raw, path.is_dir())
    if fmt.directory != path.is_dir():
        wants = "a Hugging Face export folder" if fmt.directory else "a checkpoint file"
        raise AdapterError(
            f"format {fmt.name!r} of adapter {adapter.name!r} reads {wants}, but {checkpoint} "
            f"is {'a folder' if path.is_dir() else 'a file'}"
        )
    context["file_metadata"] = file_meta
    context["source"] = str(checkpoint)
    context["raw"] = raw
    meta.checkpoint = str(checkpoint)
    meta.checkpoint_sha256 = digest
    meta.checkpoint_format = fmt.name
    meta.random_init = False

    src = raw if fmt.directory else fmt.extract(raw)
    if src is None:
        src = raw if isinstance(raw, Mapping) else {}
    state = fmt.apply(src, context)
    # The checkpoint's own geometry (an HF config's depth, a distillation token) wins.
    build_kwargs.update(file_meta.get("vit_kwargs", {}))
    build_kwargs.update(context.get("vit_kwargs", {}))
    vit = _build_for_checkpoint(build)
    hint = "" if format else _structure_hint(adapter, fmt, raw)
    check_keys(adapter, fmt.name, str(checkpoint), vit, state, hint=hint)
    if "pos_embed" in state:
        ckpt_pos = state["pos_embed"]
        # DeiT III-style tables (no_embed_class) hold no entries for prefix tokens.
        n_prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        side = int(round((ckpt_pos.shape[1] - n_prefix) ** 0.5))
        # (A format that resamples the table itself records the file's size first.)
        meta.pretrain_img_size = int(
            context.get("pretrain_img_size", side * vit.patch_embed.patch_size[0])
        )
        try:
            grid = tuple(vit.patch_embed.grid_size)
            state["pos_embed"] = resample_pos_embed(ckpt_pos, grid, n_prefix)
        except AdapterError as exc:
            raise AdapterError(
                f"checkpoint {checkpoint} does not fit adapter {adapter.name!r} "
                f"(format {fmt.name!r}): {exc}"
            ) from None
    _assign_state(vit, state)
    meta.extra.update(context.get("meta_extra", {}))
    return Backbone(vit, meta, mean=mean, std=std).eval()
