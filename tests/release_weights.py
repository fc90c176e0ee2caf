"""Release-layout checkpoints rebuilt from golden manifests, with reproducible weights.

A manifest (``tests/golden/release/*.json``) records what a method's own training or
release script writes: the wrapper keys around the weights, and every tensor's name and
shape as the method's model definition produces them. Tests rebuild such a file with
:func:`release_tensors`, whose values depend only on the manifest's names, shapes and a
seed, so reference features computed once with the method's own model class (stored in
the manifest under ``reference``) can be compared with what our adapters load.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import torch

MANIFEST_DIR = Path(__file__).parent / "golden" / "release"


def load_manifest(name: str) -> dict[str, Any]:
    """``name`` is the file stem, e.g. ``mae_pretrain_vit_base``."""
    return json.loads((MANIFEST_DIR / f"{name}.json").read_text())


def manifest_names() -> list[str]:
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.json"))


def _values(name: str, shape: list[int], seed: int) -> torch.Tensor:
    """Normal(0, 0.02) per tensor from a generator keyed on (seed, name); norm weights ~ 1.

    Keying each tensor on its own name makes a value independent of the manifest's order.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    t = torch.randn(shape, generator=g) * 0.02
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "weight" and len(shape) == 1 and "norm" in name:
        t += 1.0
    return t


def release_tensors(manifest: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor the manifest lists, in its order, with reproducible values.

    Integer tensors (index buffers) are listed with ``{"shape": [...], "dtype": "int64"}``
    and are filled with zeros: manifests of encoders seldom have any.
    """
    out: dict[str, torch.Tensor] = {}
    for name, spec in manifest["tensors"].items():
        if isinstance(spec, dict):
            shape, dtype = spec["shape"], spec.get("dtype", "float32")
        else:
            shape, dtype = spec, "float32"
        if dtype.startswith("int"):
            out[name] = torch.zeros(shape, dtype=getattr(torch, dtype))
        else:
            out[name] = _values(name, list(shape), seed)
    return out


def reference_input(shape: tuple[int, ...] = (1, 3, 224, 224), seed: int = 1234) -> torch.Tensor:
    """The image batch reference features were computed on (seeded, standard normal)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
