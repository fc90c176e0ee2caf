"""Training states on disk: never run code on resume, exact RNG round trip, full disks."""

from __future__ import annotations

import errno
import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from bench import diskio
from bench.checkpoints.reader import CheckpointError
from bench.diskio import DiskFullError, atomic_write
from bench.protocols.checkpointing import (
    CHECKPOINT_NAME,
    STATE_FORMAT,
    Checkpointer,
    finish_workdir,
    run_fingerprint,
)
from bench.protocols.state import (
    atomic_save,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
)


class Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), np.random.randn(), torch.rand(3).tolist()


def _write(path: Path, obj: object, writer: str) -> None:
    if writer == "torch.save":
        torch.save(obj, path)
    else:  # a plain pickle.dump file, as someone could drop in place of a checkpoint
        path.write_bytes(pickle.dumps(obj))


@pytest.fixture
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


# ---------------------------------------------------------------------------- safe reading
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_unsafe_checkpoint_is_refused_on_resume_and_never_runs(
    tmp_path: Path, accelerator: Accelerator, writer: str
) -> None:
    marker = tmp_path / "pwned"
    # Shaped like a real state (format, fingerprint), so only the payload gives it away.
    evil = {"format": STATE_FORMAT, "fingerprint": "fp", "iteration": 4, "x": Payload(marker)}
    _write(tmp_path / CHECKPOINT_NAME, evil, writer)
    with pytest.raises(CheckpointError) as info:
        Checkpointer(tmp_path, accelerator, "fp").load()
    assert f"training state {tmp_path / CHECKPOINT_NAME} refused as unsafe" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_unsafe_distillation_checkpoint_is_refused_and_never_runs(
    tmp_path: Path, writer: str
) -> None:
    from unip.distill import CHECKPOINT_FORMAT, distill
    from unip.distill import CHECKPOINT_NAME as DISTILL_CKPT
    from unip.distill_config import DistillConfig

    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "pwned"
    _write(out / DISTILL_CKPT, {"format": CHECKPOINT_FORMAT, "x": Payload(marker)}, writer)
    cfg = DistillConfig.model_validate({
        "teacher": {"adapter": "mae", "size": "T", "depth": 1, "layer": 1},
        "student": {"size": "T", "depth": 1},
        "data": {"path": str(tmp_path / "images"), "img_size": 32, "num_workers": 0},
        "optim": {"batch_size": 2, "epochs": 1},
        "output_dir": str(out),
        "progress": False,
    })
    with pytest.raises(CheckpointError, match=r"checkpoint\.pth refused as unsafe"):
        distill(cfg)
    assert not marker.exists()


def test_a_saved_state_loads_with_plain_weights_only(tmp_path: Path) -> None:
    """What a state holds (RNG states included) needs no allow-list at all."""
    path = tmp_path / "s.pt"
    atomic_save({"format": STATE_FORMAT, "rng": [capture_rng_state()], "best": [None],
                 "log_accum": (0.5, 3), "history": [{"iteration": 2, "mIoU": [1.0]}]}, path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["log_accum"] == (0.5, 3)


def test_rng_states_round_trip_through_a_safe_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    torch.manual_seed(3)
    atomic_save({"rng": capture_rng_state()}, tmp_path / "s.pt")
    want = _draws()
    _draws()  # move every generator on
    restore_rng_state(load_training_state(tmp_path / "s.pt")["rng"])
    assert _draws() == want


def test_a_state_written_before_rng_tensors_still_resumes(tmp_path: Path) -> None:
    """Earlier states keep numpy's key as an ndarray: read through the allow-list."""
    np.random.seed(5)
    old = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}
    torch.save({"rng": old}, tmp_path / "old.pt")
    want = _draws()
    restore_rng_state(load_training_state(tmp_path / "old.pt")["rng"])
    assert _draws() == want


# ---------------------------------------------------------------------------- full disk
TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


@pytest.mark.parametrize("failure", ["torch", "oserror"])
def test_disk_full_names_the_path_and_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    path = tmp_path / CHECKPOINT_NAME
    atomic_save({"iteration": 4}, path)
    before = path.read_bytes()

    def full_disk(obj, f) -> None:
        f.write(b"partial")
        if failure == "torch":
            raise RuntimeError(TORCH_SHORT_WRITE)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError) as info:
        atomic_save({"iteration": 8}, path)
    msg = str(info.value)
    assert msg.startswith(f"no space left on device while writing {path}")
    assert "previous checkpoint.pt is kept intact" in msg and "\n" not in msg
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]  # no temp file


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_checkpoint_on_a_full_device(
    tmp_path: Path, accelerator: Accelerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's own ENOSPC (writes go to /dev/full), through torch's zip writer."""
    ckpt = Checkpointer(tmp_path, accelerator, "fp")
    ckpt.save(4, {"model": {"w": torch.zeros(1000)}})
    real_mkstemp = tempfile.mkstemp

    def mkstemp_on_full_device(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(diskio.tempfile, "mkstemp", mkstemp_on_full_device)
    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*"
                       r"checkpoint\.pt: the previous checkpoint\.pt is kept intact"):
        ckpt.save(8, {"model": {"w": torch.ones(1000)}})
    monkeypatch.undo()
    assert ckpt.load()["iteration"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_disk_full_before_any_checkpoint_says_nothing_was_left(
    tmp_path: Path,
) -> None:
    def full(f) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(DiskFullError, match="nothing partial was left behind"):
        atomic_write(tmp_path / "x.json", full)
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_pass_through(tmp_path: Path) -> None:
    def broken(f) -> None:
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        atomic_write(tmp_path / "x.json", broken)


# ---------------------------------------------------------------------------- finished runs
def test_keep_settings_are_not_part_of_the_fingerprint() -> None:
    from bench.protocols.config import resolve_settings

    def fp(**overrides) -> str:
        s = resolve_settings("fine_tune", "soda", "mae", "T", overrides)
        return run_fingerprint({"protocol": "fine_tune", "settings": s.model_dump(mode="json")})

    base = fp()
    assert fp(keep_training_state=True, save_final_weights=True) == base
    assert fp(lr=2e-4) != base


def test_finish_removes_the_training_state_only(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text("{}")
    (tmp_path / "final_weights.safetensors").write_bytes(b"w")
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"state")
    (tmp_path / f".{CHECKPOINT_NAME}.abc.tmp").write_bytes(b"torn")
    (tmp_path / "feature_cache").mkdir()
    (tmp_path / "feature_cache" / "rank0of1.features.npy").write_bytes(b"f")

    assert finish_workdir(tmp_path, keep_training_state=True) == []
    assert len(list(tmp_path.iterdir())) == 5
    removed = finish_workdir(tmp_path, keep_training_state=False)
    assert {p.name for p in removed} == {CHECKPOINT_NAME, f".{CHECKPOINT_NAME}.abc.tmp",
                                         "feature_cache"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "final_weights.safetensors", "result.json"
    ]


# ---------------------------------------------------------------------------- grad scaler
class _LinearLoss(torch.nn.Module):
    """loss = mean(w·x + b): finite for any finite input, so a huge batch overflows only
    once the scaler multiplies it (scale x 1e34 > float32's 3.4e38)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def forward(self, img: torch.Tensor, label: torch.Tensor) -> dict:
        return {"loss": self.lin(img).mean()}


OVERFLOW_AT = 1  # the micro-batch (= iteration) whose scaled gradients are infinite


def _batches(start: int):
    i = start
    while True:
        value = 1e34 if i == OVERFLOW_AT else 1.0
        yield {"img": torch.full((2, 2), value), "label": torch.zeros(2, dtype=torch.long)}
        i += 1


def _train_with_scaler(workdir: Path, iters: int) -> Accelerator:
    """``iters`` steps through the Trainer with an fp16-style loss scaler (scale 2^16,
    x2 after every 2 finite steps, x0.5 on overflow), checkpointing every 3 steps.

    Accelerate makes a scaler for fp16 on CUDA only; the CPU one torch provides
    (``torch.amp.GradScaler("cpu")``) is put where accelerate keeps it, before prepare,
    so backward scales the loss and the optimizer step unscales, skips and updates."""
    from bench.protocols.config import resolve_settings
    from bench.protocols.engine import Trainer, build_scheduler

    acc = Accelerator(cpu=True)
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=2)
    torch.manual_seed(0)
    model = _LinearLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    s = resolve_settings("linear_probe", "soda", "mae", "tiny", {
        "iters": iters, "warmup_iters": 0, "checkpoint_interval": 3, "eval_interval": 0,
        "log_interval": 1})
    prepared, opt = acc.prepare(model, opt)
    Trainer(acc, prepared, opt, build_scheduler(opt, s), model, _batches,
            lambda: [{"mIoU": 0.0}], s, Checkpointer(workdir, acc, "fp"),
            progress=False).run()
    return acc


def test_grad_scaler_state_survives_the_checkpoint_and_resume(tmp_path: Path) -> None:
    # Steps 0 and 2 finite, step 1 overflows: 2^16 -> 2^15 at step 1, growth tracker 0,
    # then 1 after step 2 (growth needs 2 finite steps in a row).
    acc = _train_with_scaler(tmp_path, iters=3)
    assert acc.scaler.get_scale() == 2.0**15
    state = Checkpointer(tmp_path, acc, "fp").load()  # weights_only: plain values only
    assert state["iteration"] == 3
    assert state["scaler"]["scale"] == 2.0**15 and state["scaler"]["_growth_tracker"] == 1
    assert state["scaler"]["growth_interval"] == 2

    # Resumed to 5 steps by a fresh scaler (2^16, tracker 0): restored, step 3 is the
    # second finite step in a row (-> 2^16, tracker 0) and step 4 leaves tracker 1. A
    # scaler left fresh would instead end at 2^17.
    resumed = _train_with_scaler(tmp_path, iters=5)
    got = resumed.scaler.state_dict()
    assert (got["scale"], got["_growth_tracker"]) == (2.0**16, 1)
    straight = _train_with_scaler(tmp_path / "uninterrupted", iters=5).scaler.state_dict()
    assert got == straight
