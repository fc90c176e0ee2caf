"""Checkpoints are untrusted input: code never runs, bad files are named, digests recorded."""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

import bench.checkpoints.reader as ckpt_mod
from bench.backbones.adapter import load_backbone
from bench.checkpoints.reader import CheckpointError, cached_sha256
from bench.checkpoints.resolve import read_checkpoint, resolve_checkpoint


def tiny_state() -> dict[str, torch.Tensor]:
    return VisionTransformer(embed_dim=192, depth=2, num_heads=3, num_classes=0).state_dict()


class Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path: Path, obj: object, writer: str) -> None:
    """``obj`` as torch.save writes it, or as a plain pickle (protocol 2, or the default
    one, whose FRAME opcodes torch's safe reader does not parse at all)."""
    if writer == "torch.save":
        torch.save(obj, path)
    elif writer == "pickle-2":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        path.write_bytes(pickle.dumps(obj))


WRITERS = ["torch.save", "pickle-2", "pickle-default"]


@pytest.mark.parametrize("writer", WRITERS)
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    write_payload(path, {"model": tiny_state(), "extra": Payload(marker)}, writer)

    with pytest.raises(
        CheckpointError, match=r"checkpoint .*evil\.pth refused as unsafe.*Nothing was run"
    ):
        load_backbone("mae", "tiny", path, depth=2, cache_dir=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("writer", WRITERS)
def test_bare_malicious_pickle_is_called_unsafe_not_corrupt(tmp_path, writer) -> None:
    """The payload alone, no weights around it: still refused as unsafe, naming the
    global it imports, and never 'corrupt'."""
    marker = tmp_path / "pwned"
    path = tmp_path / "bare.pkl"
    write_payload(path, Payload(marker), writer)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert f"{path} refused as unsafe" in msg and "open" in msg
    assert "corrupt" not in msg and "weights_only" not in msg
    assert not marker.exists()


def test_plain_pickle_of_harmless_data_is_unreadable_not_unsafe(tmp_path) -> None:
    """A pickle that imports nothing is not called malicious (torch cannot read it)."""
    path = tmp_path / "numbers.pkl"
    path.write_bytes(pickle.dumps({"epoch": 3, "lr": [0.1, 0.2]}))
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*numbers\.pkl"):
        read_checkpoint(path)


def test_training_checkpoint_with_namespace_loads(tmp_path) -> None:
    args = argparse.Namespace(model="mae_vit_tiny", lr=1.5e-4, epochs=800)
    torch.save({"model": tiny_state(), "args": args, "epoch": 3}, tmp_path / "train.pth")
    raw, meta = read_checkpoint(tmp_path / "train.pth")
    assert raw["args"] == args and meta == {}
    bb = load_backbone("mae", "tiny", tmp_path / "train.pth", depth=2, cache_dir=tmp_path)
    assert bb.meta.checkpoint_format == "pretrain"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_named(tmp_path, suffix) -> None:
    path = tmp_path / f"cut{suffix}"
    if suffix == ".safetensors":
        save_file(tiny_state(), str(path))
    else:
        torch.save({"model": tiny_state()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_backbone("mae", "tiny", path, depth=2, cache_dir=tmp_path)


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere\.pth does not exist"):
        load_backbone("mae", "tiny", tmp_path / "nowhere.pth", depth=2, cache_dir=tmp_path)


def test_sha256_recorded_and_checked(tmp_path) -> None:
    path = tmp_path / "m.pth"
    torch.save({"model": tiny_state()}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    bb = load_backbone("mae", "tiny", path, depth=2, sha256=digest.upper(), cache_dir=tmp_path)
    assert bb.meta.checkpoint_sha256 == digest
    with pytest.raises(CheckpointError, match=f"has sha256 {digest}, expected 00"):
        load_backbone("mae", "tiny", path, depth=2, sha256="00" * 32, cache_dir=tmp_path)


@pytest.fixture
def hash_calls(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = ckpt_mod.sha256_file

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "sha256_file", counting)
    return calls


def test_digest_is_hashed_once_per_file_state(tmp_path, hash_calls) -> None:
    path = tmp_path / "m.pth"
    torch.save({"model": tiny_state()}, path)
    cache = tmp_path / "cache"

    first = resolve_checkpoint(path, cache_dir=cache)[1]
    second = resolve_checkpoint(path, cache_dir=cache)[1]
    assert first == second == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(hash_calls) == 1
    assert len(list((cache / "digests").glob("*.json"))) == 1

    # Rewriting the file (new content, new mtime) must not reuse the old digest.
    torch.save({"model": tiny_state(), "epoch": 1}, path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    third = resolve_checkpoint(path, cache_dir=cache)[1]
    assert third == hashlib.sha256(path.read_bytes()).hexdigest() != first
    assert len(hash_calls) == 2


def test_corrupt_digest_record_is_ignored(tmp_path, hash_calls) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"weights")
    cached_sha256(path, tmp_path / "cache")
    for record in (tmp_path / "cache" / "digests").glob("*.json"):
        record.write_text("{not json")
    assert cached_sha256(path, tmp_path / "cache") == hashlib.sha256(b"weights").hexdigest()
    assert len(hash_calls) == 2


def test_unwritable_digest_cache_still_hashes(tmp_path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"weights")
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    assert cached_sha256(path, blocked) == hashlib.sha256(b"weights").hexdigest()


def test_default_cache_root_follows_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UNIPBENCH_CACHE", str(tmp_path))
    assert ckpt_mod.cache_root() == tmp_path / "checkpoints"
    monkeypatch.delenv("UNIPBENCH_CACHE")
    assert ckpt_mod.cache_root() == Path.home() / ".cache" / "unipbench" / "checkpoints"


def test_malicious_pickle_message_names_the_refused_global(tmp_path) -> None:
    """The reason quoted is the blocked global, never torch's advice to drop weights_only."""
    torch.save({"model": tiny_state(), "extra": Payload(tmp_path / "pwned")}, tmp_path / "e.pth")
    with pytest.raises(CheckpointError) as info:
        load_backbone("mae", "tiny", tmp_path / "e.pth", depth=2, cache_dir=tmp_path)
    msg = str(info.value)
    assert "open" in msg.split("(", 1)[1] and "weights_only" not in msg
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "content",
    [b"hello, not a checkpoint", b"x" + bytes(range(256)) * 8, b""],
    ids=["text", "bytes", "empty"],
)
def test_file_that_is_no_checkpoint_is_named_not_called_malicious(tmp_path, content) -> None:
    """Any garbage is a CheckpointError naming the file (a text file once gave KeyError: 101)."""
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(
        CheckpointError, match=r"cannot read checkpoint .*notes\.pth: it is not a torch"
    ):
        load_backbone("mae", "tiny", path, depth=2, cache_dir=tmp_path)


def test_malformed_sha256_is_refused(tmp_path) -> None:
    torch.save({"model": tiny_state()}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"'abc' is not a sha256 digest"):
        load_backbone("mae", "tiny", tmp_path / "m.pth", depth=2, sha256="abc", cache_dir=tmp_path)
