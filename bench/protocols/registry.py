"""The protocol registry: what a protocol declares, and how core code finds it.

A protocol is a plug-in like an adapter: an object registered in the entry-point group
``unipbench.protocols`` (built-ins included, see ``pyproject.toml``). It declares its
settings class, the function that runs it, the model it evaluates (for FLOPs), its
metrics and its own version, so the runner, FLOP counts, tables, plots, ``train`` and
the suite checks read the declaration and never a protocol's name.

Declarations stay light: ``run`` and ``evaluated_model`` may be ``"module:function"``
strings, imported only when called, so reading a table does not import training code.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.registry import PROTOCOLS, RegistryError, unknown_name_message


@dataclass(frozen=True)
class Metric:
    """One number a protocol reports in its result's ``metrics``."""

    key: str  # key in result["metrics"], e.g. "mIoU"
    label: str  # how tables and plots name it, e.g. "mIoU (%)"
    higher_is_better: bool = True
    digits: int = 2  # decimals shown in tables

    def better(self, new: float, old: float | None) -> bool:
        """Whether ``new`` improves on ``old`` (None: nothing yet)."""
        if old is None:
            return True
        return new > old if self.higher_is_better else new < old


# One decimal, as the paper's tables and figures give mIoU.
MIOU = Metric("mIoU", "mIoU (%)", digits=1)


def _resolve(target: Callable | str, what: str) -> Callable:
    if callable(target):
        return target
    module, _, attr = str(target).partition(":")
    if not module or not attr:
        raise RegistryError(f"{what} {target!r} is not 'module:function'")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol, as core code sees it.

    ``run(ctx)`` trains/evaluates and returns the protocol's part of the result: at least
    ``metrics`` (a dict holding every declared metric's key). ``evaluated_model(settings,
    backbone, num_classes)`` returns the module whose forward the run evaluates (training-
    only parts removed), given a freshly loaded backbone, for FLOP counts.
    ``version`` enters the run id of this protocol's runs only: bumping it reruns them and
    no other protocol's.
    """

    name: str
    version: str
    settings: type  # a bench.protocols.config.ProtocolSettings subclass
    run: Callable[..., dict[str, Any]] | str  # run(ctx: RunContext) -> result part
    evaluated_model: Callable[..., Any] | str | None = None  # (settings, backbone, classes)
    short: str = ""  # column prefix in tables ("FT"); defaults to the name
    title: str = ""  # plot titles ("Fine-tuning"); defaults to the name
    description: str = ""
    aliases: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = (MIOU,)
    # The result carries ``per_layer`` ({block: metrics}); tables show the best block.
    per_layer: bool = False
    # Key of this protocol's table in the published reference numbers, if the paper has one.
    reference_key: str | None = None
    # ``geometry_defaults(size_spec) -> settings``: what this protocol's settings follow
    # from the backbone's declared geometry (which blocks to read for a depth), applied
    # over the dataset's defaults and under the adapter's and the user's.
    geometry_defaults: Callable[..., dict[str, Any]] | str | None = None
    # What a training step costs, for GPU-hour estimates (bench.gpu.estimate). True: the
    # step runs backward through the whole evaluated model, backbone included
    # (fine-tuning). False: the backbone runs forward only, frozen, and only the rest of
    # the evaluated model (its heads) is trained, forward and weight gradients (probes).
    trains_backbone: bool = True
    # Nothing is trained: the run reads the training split once through the evaluated
    # model, in the evaluation's views, to build what it predicts from (a k-NN memory
    # bank), then evaluates once. No iterations; ``trains_backbone`` does not apply.
    training_free: bool = False
    # Extra result fields this protocol adds (documentation for the store and docs).
    result_fields: tuple[str, ...] = field(default=())
    # Where its columns and figures come among the protocols (lower first, then by name).
    order: int = 100
    # The settings field naming the backbone blocks a run reads (a list of zero-based
    # blocks, one block, or "all"): suite checks refuse blocks a model lacks before any
    # run starts. None: the protocol reads no block a suite can set.
    blocks_setting: str | None = "layers"

    @property
    def primary(self) -> Metric:
        """The metric tables rank and plots draw."""
        return self.metrics[0]

    @property
    def label(self) -> str:
        return self.short or self.name

    def run_fn(self) -> Callable[..., dict[str, Any]]:
        return _resolve(self.run, f"protocol {self.name!r} run")

    def geometry_fn(self) -> Callable[..., dict[str, Any]] | None:
        if self.geometry_defaults is None:
            return None
        return _resolve(self.geometry_defaults, f"protocol {self.name!r} geometry_defaults")

    def model_fn(self) -> Callable[..., Any] | None:
        if self.evaluated_model is None:
            return None
        return _resolve(self.evaluated_model, f"protocol {self.name!r} evaluated_model")


class UnknownProtocol(RegistryError, ValueError):
    """A protocol name that is not registered (a ValueError too: it is bad input)."""


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).strip().lower())


def register_protocol(protocol: Protocol, overwrite: bool = False) -> Protocol:
    """Register ``protocol`` (tests, notebooks; packages use the entry-point group)."""
    PROTOCOLS.register(protocol.name, protocol, overwrite=overwrite)
    return protocol


def protocol_names() -> list[str]:
    """Canonical names of every registered protocol, sorted."""
    return PROTOCOLS.names()


def _aliases() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in PROTOCOLS.names():
        out.setdefault(_key(name), name)
        for alias in PROTOCOLS.get(name).aliases:
            out.setdefault(_key(alias), name)
    return out


def _checked(name: str) -> Protocol:
    obj = PROTOCOLS.get(name)
    if not isinstance(obj, Protocol):
        raise RegistryError(f"protocol {name!r} is registered as {obj!r}, not a Protocol")
    return obj


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name`` or one of its aliases ('ft', 'linear-probe', ...)."""
    if name in PROTOCOLS:
        return _checked(name)
    aliases = _aliases()
    key = _key(name)
    if key in aliases:
        return _checked(aliases[key])
    raise UnknownProtocol(
        unknown_name_message("protocol", str(name), protocol_names(),
                             suggest=protocol_names() + sorted(aliases))
    )


def canonical_protocol(name: str) -> str:
    """The registered name of ``name`` (an alias or the name itself)."""
    return get_protocol(name).name


def find_protocol(name: str) -> Protocol | None:
    """The protocol registered as exactly ``name``, or None (e.g. a stored record of a
    protocol whose plug-in is not installed here)."""
    return _checked(name) if name in PROTOCOLS else None


def primary_score(protocol: str, metrics: dict[str, Any] | None) -> tuple[Metric, float | None]:
    """The primary metric of ``protocol`` (registered name; mIoU for an unregistered one)
    and its value in ``metrics`` (None when absent)."""
    declared = find_protocol(protocol)
    metric = declared.primary if declared is not None else MIOU
    value = (metrics or {}).get(metric.key)
    return metric, None if value is None else float(value)


def ordered_protocols() -> list[Protocol]:
    """Every registered protocol in declaration order (``order``, then name)."""
    return sorted((_checked(n) for n in PROTOCOLS.names()), key=lambda p: (p.order, p.name))


def sort_protocol_names(names: Iterable[str]) -> list[str]:
    """``names`` (distinct) in declaration order; unregistered names last, by name."""
    rank = {p.name: i for i, p in enumerate(ordered_protocols())}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))
