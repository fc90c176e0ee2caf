"""Reading checkpoint files safely: untrusted pickles, safetensors; digests and their cache.

Where a checkpoint comes from (a URL, the Hub, a catalogue id, an HF export folder) is
:mod:`bench.checkpoints.resolve`'s job, so this module imports none of those.

Pickled checkpoints are read with ``weights_only=True`` and only the harmless extra types
real checkpoints carry (``argparse.Namespace`` in MAE/DINO/DeiT training files, numpy
scalars); anything that would run code is refused before it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import pickletools
import warnings
from pathlib import Path
from typing import Any

import torch

from bench.diskio import atomic_write_text


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely; the message names the file."""


def _safe_globals() -> list:
    allowed: list = [argparse.Namespace]
    try:
        import numpy as np

        allowed += [np.dtype, np.ndarray]
        core = getattr(np, "_core", None) or np.core
        allowed.append(core.multiarray.scalar)
        allowed.append(core.multiarray._reconstruct)
        # uint32: numpy's MT19937 key, in training states written before it became a tensor.
        dtypes = ("float16", "float32", "float64", "int64", "int32", "uint8", "uint32", "bool")
        allowed += [type(np.dtype(t)) for t in dtypes]
    except Exception:  # numpy is optional for reading checkpoints
        pass
    return allowed


def check_sha256(sha256: str, what: str = "sha256") -> str:
    """``sha256`` lower-cased, or a CheckpointError when it is not 64 hex digits."""
    digest = str(sha256).strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CheckpointError(
            f"{what} {sha256!r} is not a sha256 digest (64 hexadecimal digits, "
            f"as printed by `sha256sum FILE`)"
        )
    return digest


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where downloaded checkpoints live: ``cache_dir``, else ``$UNIPBENCH_CACHE/checkpoints``,
    else ``~/.cache/unipbench/checkpoints``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    base = os.environ.get("UNIPBENCH_CACHE") or "~/.cache/unipbench"
    return Path(base).expanduser() / "checkpoints"


class DigestCache:
    """``sha256_file`` remembered per (resolved path, size, mtime_ns, inode).

    Hashing a ViT-L checkpoint costs seconds; its stat tuple changes whenever the file is
    rewritten, so a matching record is as good as rehashing. Each file's record is a small
    JSON file in ``folder``, replaced atomically, so processes sharing the folder need no
    lock; ``folder=None`` remembers digests for this object's lifetime only. Failing to
    read or write a record only costs a hash.
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)
        self._seen: dict[tuple, str] = {}

    def _record_path(self, resolved: Path) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{hashlib.sha256(str(resolved).encode()).hexdigest()[:32]}.json"

    def sha256(self, path: str | Path) -> str:
        resolved = Path(path).resolve()
        st = resolved.stat()
        key = {"path": str(resolved), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
               "ino": st.st_ino}
        state = tuple(key.values())
        if state in self._seen:
            return self._seen[state]
        record_path = self._record_path(resolved)
        digest = _read_record(record_path, key) if record_path else None
        if digest is None:
            digest = sha256_file(resolved)
            if record_path is not None:
                with contextlib.suppress(OSError):
                    atomic_write_text(record_path, json.dumps({**key, "sha256": digest}))
        self._seen[state] = digest
        return digest


def _read_record(record_path: Path, key: dict) -> str | None:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and all(record.get(k) == v for k, v in key.items()):
        digest = record.get("sha256")
        if isinstance(digest, str) and len(digest) == 64:
            return digest
    return None


def cached_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """``path``'s sha256 through the :class:`DigestCache` of the checkpoint cache
    (``<cache>/digests``): loading a file that was hashed before costs a ``stat``."""
    return DigestCache(cache_root(cache_dir) / "digests").sha256(path)


def load_pickle_checkpoint(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with weights_only=True and an explicit allow-list; clear errors.

    ``what`` names the kind of file in messages (a checkpoint, a training state).
    """
    try:
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            # A plain pickle.dump file makes torch warn about its protocol before refusing.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).split("\n") if line.strip()]
        # The line naming the refused global (its wording varies across torch versions);
        # never torch's own advice to retry with weights_only=False.
        refused = next(
            (ln for ln in lines if "global" in ln.lower() and "weights_only" not in ln), None
        )
        if refused is not None:
            refused = refused.split(". Please use")[0]  # torch's advice to allow-list it
        else:
            # torch's reader stops at the first opcode it does not know (FRAME, from any
            # plain pickle.dump): read the stream, without running it, for what it imports.
            imports = pickle_imports(path)
            if imports:
                refused = "it imports " + ", ".join(imports[:3]) + (
                    f" and {len(imports) - 3} more" if len(imports) > 3 else ""
                )
        if refused is not None:
            raise CheckpointError(
                f"{what} {path} refused as unsafe: it is not a plain weights file and "
                f"loading it would execute code or build untrusted objects ({refused}). "
                "Nothing was run. If you trust the file, convert it to safetensors or a "
                "plain state dict first."
            ) from None
        # Random bytes or an unknown opcode: "Unsupported operand 217".
        detail = next(
            (ln for ln in lines if ln.startswith("Unsupported")), lines[-1] if lines else ""
        )
        raise _unreadable(path, exc, detail, what) from None
    except Exception as exc:  # garbage bytes can fail anywhere in the unpickler
        # (RuntimeError, EOFError, BadZipFile, and KeyError/IndexError from a text file.)
        raise _unreadable(path, exc, what=what) from None


# Opcodes that import a global; every way a pickle runs code starts with one of them.
_IMPORT_OPS = {"GLOBAL", "STACK_GLOBAL", "INST"}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}


def pickle_imports(path: Path) -> list[str]:
    """The globals (``module.name``) the first pickle in ``path`` would import.

    Read with :func:`pickletools.genops`, which parses opcodes and never executes them.
    Empty when the file is no complete pickle stream (garbage is not called malicious).
    """
    names: list[str] = []
    strings: list[str] = []
    complete = False
    try:
        with open(path, "rb") as f:
            for op, arg, _pos in pickletools.genops(f):
                if op.name in _STRING_OPS:
                    strings.append(str(arg))
                elif op.name == "STACK_GLOBAL":
                    # module and name are the two strings pushed last (memo lookups aside).
                    names.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
                elif op.name in _IMPORT_OPS:
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STOP":
                    complete = True
    except Exception:  # not a pickle, or truncated: pickletools says why, we only ask what
        return []
    return list(dict.fromkeys(names)) if complete else []


def _unreadable(
    path: Path, exc: Exception, detail: str | None = None, what: str = "checkpoint"
) -> CheckpointError:
    if detail is None:
        detail = str(exc).splitlines()[0] if str(exc) else ""
    return CheckpointError(
        f"cannot read {what} {path}: it is not a torch checkpoint, or it is truncated "
        f"or corrupt ({type(exc).__name__}: {detail})"
    )


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from None
