"""Typed, lazily filled registries: built-ins and third-party plug-ins load the same way.

Each registry reads one entry-point group (``unipbench.<kind>``) the first time it is
consulted, and also accepts direct ``register`` calls (tests, notebooks).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or conflicting name in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean ...?' suffix for the closest match(es), or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def literal_hint(err: Mapping[str, Any]) -> str:
    """'. Did you mean ...?' for a pydantic literal error on a misspelt string, else ''."""
    if err.get("type") != "literal_error" or not isinstance(err.get("input"), str):
        return ""
    choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
    hint = did_you_mean(err["input"], choices) if choices else ""
    return f".{hint}" if hint else ""


def unknown_name_message(
    kind: str,
    name: str,
    choices: Sequence[str],
    *,
    owner: str | None = None,
    suggest: Sequence[str] | None = None,
) -> str:
    """The one line for a name that is not among ``choices``, with the closest ones.

    ``unknown dataset 'sodaa'; known: mfnet_thermal, soda. Did you mean 'soda'?``; with
    ``owner`` (e.g. ``"adapter 'dino'"``): ``adapter 'dino' has no option 'x'; known: ...``.
    ``suggest``: the names to suggest from, when more are accepted than are listed
    (aliases); default ``choices``.
    """
    head = f"{owner} has no {kind} {name!r}" if owner else f"unknown {kind} {name!r}"
    hints = list(choices if suggest is None else suggest)
    return f"{head}; known: {', '.join(choices) or 'none'}." + did_you_mean(str(name), hints)


class Registry(Generic[T]):
    """Name -> object map filled from the entry-point group ``unipbench.<kind>``."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group or f"unipbench.{kind}"
        self._items: dict[str, T] = {}
        self._pending: dict[str, object] = {}  # entry points not loaded yet
        self._scanned = False

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o: T) -> T:
            self._scan()
            if not overwrite and (name in self._items or name in self._pending):
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._pending.pop(name, None)
            self._items[name] = o
            return o

        if obj is None:
            return _add
        return _add(obj)

    def unregister(self, name: str) -> None:
        self._scan()
        self._items.pop(name, None)
        self._pending.pop(name, None)

    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=self.group):
            self._pending.setdefault(ep.name, ep)

    def names(self) -> list[str]:
        self._scan()
        return sorted(set(self._items) | set(self._pending))

    def get(self, name: str) -> T:
        self._scan()
        if name in self._items:
            return self._items[name]
        if name in self._pending:
            ep = self._pending.pop(name)
            try:
                obj = ep.load()  # type: ignore[attr-defined]
            except Exception as exc:  # a broken plug-in must say which one it is
                raise RegistryError(
                    f"{self.kind} {name!r} could not be loaded from entry point "
                    f"{ep.value!r} (group {self.group}): {exc}"  # type: ignore[attr-defined]
                ) from exc
            self._items[name] = obj
            return obj
        raise RegistryError(unknown_name_message(self.kind, name, self.names()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> Iterator[tuple[str, T]]:
        for n in self.names():
            yield n, self.get(n)


ADAPTERS: Registry = Registry("adapters")
NECKS: Registry[Callable] = Registry("necks")
HEADS: Registry[Callable] = Registry("heads")
DATASETS: Registry = Registry("datasets")
COMMANDS: Registry[Callable] = Registry("commands")
PROTOCOLS: Registry = Registry("protocols")
GPU_CHECKS: Registry[Callable] = Registry("gpu_checks")
