"""YAML with line numbers: the data of a file plus a map from key paths to source lines.

Suite errors must name the file and line of the offending key; PyYAML's composed node
tree keeps those marks, which ``safe_load`` throws away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


class YamlSourceError(ValueError):
    """A file that is not valid YAML (or has duplicate keys); names file and line."""


@dataclass
class YamlSource:
    """Parsed content of one YAML file and the 1-based line of every key / list item."""

    path: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, key_path: Sequence[str | int]) -> int | None:
        """Line of ``key_path`` or of its nearest ancestor present in this file."""
        p = tuple(key_path)
        while True:
            if p in self.lines:
                return self.lines[p]
            if not p:
                return None
            p = p[:-1]

    def has(self, key_path: Sequence[str | int]) -> bool:
        return tuple(key_path) in self.lines


def format_path(key_path: Sequence[str | int]) -> str:
    """('models', 0, 'adapter') -> 'models[0].adapter'."""
    out = ""
    for k in key_path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out or "(top level)"


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], src: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key == "<<":  # merge key: its keys belong here unless given explicitly
                merged += value_node.value if isinstance(value_node, yaml.SequenceNode) else [
                    value_node]
                continue
            if key in seen:
                raise YamlSourceError(
                    f"{src}:{line}: {format_path(path + (key,))}: duplicate key "
                    f"(first given on line {seen[key]})"
                )
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, src)
        for m in merged:  # lines of merged keys: where the anchored mapping defines them
            sub: dict[KeyPath, int] = {}
            _walk(m, path, sub, src)
            for k, line in sub.items():
                if k[len(path)] not in seen:
                    lines.setdefault(k, line)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, src)


def load_yaml(path: str | Path) -> YamlSource:
    """Read ``path``; YAML errors become :class:`YamlSourceError` naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlSourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    loader = yaml.SafeLoader(text)
    lines: dict[KeyPath, int] = {}
    try:
        node = loader.get_single_node()
        if node is not None:
            # Walk before constructing: construction flattens merge keys (<<) in place.
            lines[()] = node.start_mark.line + 1
            _walk(node, (), lines, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise YamlSourceError(f"{path}{line}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return YamlSource(path=path, data=data, lines=lines)
