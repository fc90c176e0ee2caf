"""The training engine's `compile` option: the curve of eager mode, plain checkpoints, resume.

A 2-block ViT-T at 32 px with drop path (the RNG must line up too) trains through the
engine with the protocols' checkpointer, eagerly and compiled. The fast variant compiles
with ``aot_eager`` (dynamo's graph capture and AOTAutograd's forward/backward tracing,
without C++ code generation); the slow one with inductor, as runs on a GPU use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from bench.protocols import runtime
from bench.protocols.checkpointing import Checkpointer, run_fingerprint
from bench.protocols.config import IDENTITY_EXEMPT_SETTINGS, resolve_settings
from bench.protocols.engine import LoopSettings, StepEnd, TrainingDiverged, TrainingEngine
from bench.protocols.runtime import compile_supported, resolve_compile

needs_compile = pytest.mark.skipif(not compile_supported(), reason="torch.compile unsupported")
ITERS, ACCUM, BATCH, IMG = 4, 2, 2, 32


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyViT(nn.Module):
    """``forward(img, label)`` -> {'loss'}: a ViT classifier with drop path 0.2."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = timm.create_model(
            "vit_tiny_patch16_224", img_size=IMG, depth=2, num_classes=5, drop_path_rate=0.2
        )

    def forward(self, img: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(self.vit(img), label)}


def _batches(start: int) -> Iterator[dict]:
    for i in range(start, ITERS * ACCUM):
        g = torch.Generator().manual_seed(i)
        yield {"img": torch.randn(BATCH, 3, IMG, IMG, generator=g),
               "label": torch.randint(0, 5, (BATCH,), generator=g)}  # fmt: skip


def _step(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["img"], batch["label"])["loss"]


class StopAt(Exception):
    pass


def _train(workdir: Path, compiled: bool, stop_at: int | None = None) -> tuple[list, nn.Module]:
    """Train (or resume) in ``workdir``; the per-step losses and the plain model."""
    torch.manual_seed(0)
    model = TinyViT()
    acc = Accelerator(cpu=True)
    # Plain SGD: weights then differ between eager and compiled runs by what the gradients
    # differ by (Adam's normalisation would blow up rounding in near-zero gradients).
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
    prepared, opt = acc.prepare(model, opt)
    losses: list[float] = []

    def record(end: StepEnd) -> None:
        losses.append(end.loss)
        if end.iteration == stop_at:
            raise StopAt

    loop = LoopSettings(iters=ITERS, accum_steps=ACCUM, log_interval=2,
                        checkpoint_interval=2, compile=compiled)  # fmt: skip
    engine = TrainingEngine(acc, prepared, opt, sched, model, _batches, _step, loop,
                            Checkpointer(workdir, acc, "tiny"), progress=False,
                            on_step=[record])  # fmt: skip
    with contextlib.suppress(StopAt):  # the checkpoint on disk is what a kill leaves
        engine.run()
    return losses, model


@needs_compile
@pytest.mark.parametrize(
    "backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]
)
def test_compiled_training_follows_eager_saves_plain_state_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setattr(runtime, "COMPILE_BACKEND", backend)
    eager_losses, eager = _train(tmp_path / "eager", compiled=False)
    torch._dynamo.reset()  # what this test compiles, it compiles itself
    compiled_losses, compiled = _train(tmp_path / "compiled", compiled=True)
    assert len(compiled_losses) == ITERS
    # Same drop-path masks, same batches: only the kernels' rounding may differ.
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-6)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values(),
                            strict=True):  # fmt: skip
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=name)

    # The checkpoint holds the plain module's keys, never the compiled wrapper's.
    saved = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == ITERS
    assert list(saved["model"]) == list(TinyViT().state_dict())
    assert not any("_orig_mod" in k for k in saved["model"])

    # Stop after step 3 (checkpoint of step 2 on disk), resume compiled: the same run.
    first, _ = _train(tmp_path / "resumed", compiled=True, stop_at=3)
    assert first == compiled_losses[:3]
    rest, resumed = _train(tmp_path / "resumed", compiled=True)
    assert rest == compiled_losses[2:]  # steps 3 and 4 redone from the step-2 state
    for (name, a), b in zip(compiled.state_dict().items(), resumed.state_dict().values(),
                            strict=True):  # fmt: skip
        assert torch.equal(a, b), name


@needs_compile
def test_compiled_model_keeps_static_shapes_for_a_second_batch_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second batch shape gets a graph of its own with fixed sizes: dynamo's default
    would retrace it with a symbolic batch size, slower on every later step."""
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, example_inputs: list) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm

    monkeypatch.setattr(runtime, "COMPILE_BACKEND", record)
    torch._dynamo.reset()
    model = nn.Linear(4, 3)
    compiled = runtime.compile_model(model)
    for rows in (2, 3, 3):
        x = torch.randn(rows, 4)
        torch.testing.assert_close(compiled(x), model(x))
    assert len(graphs) == 2  # one per shape; the repeated shape reuses its graph

    def symbolic(value: object) -> bool:
        shape = value.shape if isinstance(value, torch.Tensor) else ()
        return isinstance(value, torch.SymInt) or any(isinstance(d, torch.SymInt) for d in shape)

    for gm in graphs:
        inputs = [n.meta["example_value"] for n in gm.graph.nodes if n.op == "placeholder"]
        assert not any(symbolic(v) for v in inputs), gm.graph


def test_compile_choice_auto_means_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_compile("off", cuda=True) is False
    assert resolve_compile("auto", cuda=False) is False
    assert resolve_compile("auto", cuda=True) is compile_supported()
    monkeypatch.setattr(runtime, "compile_supported", lambda: False)
    assert resolve_compile("auto", cuda=True) is False  # unsupported: eager, no error
    with pytest.raises(ValueError, match=r"compile='on' needs torch.compile.*compile='off'"):
        resolve_compile("on", cuda=True)


def test_compile_setting_reads_yaml_booleans_and_leaves_identity_alone() -> None:
    def settings(value: object):  # as a YAML file or --set hands it over
        return resolve_settings("fine_tune", "soda", "mae", "tiny", {"compile": value})

    assert resolve_settings("fine_tune", "soda", "mae", "tiny").compile == "off"  # opt-in
    assert settings(True).compile == "on" and settings(False).compile == "off"
    assert settings("auto").compile == "auto"
    with pytest.raises(ValueError, match="compile"):
        settings("sometimes")
    assert "compile" in IDENTITY_EXEMPT_SETTINGS
    on, off = settings(True).model_dump(), settings(False).model_dump()
    assert run_fingerprint({"settings": on}) == run_fingerprint({"settings": off})


# ---------------------------------------------------------------------------- the loop
class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.fc(x).squeeze(1), y)}


def _linear_engine(
    workdir: Path | None, micro: int, accum: int, step=_step, iters: int = 4
) -> tuple[TrainingEngine, nn.Module]:
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 3, generator=g), torch.randn(8, generator=g)) for _ in range(iters)]
    micro_batches = [{"img": x[i:i + micro], "label": y[i:i + micro]}
                     for x, y in data for i in range(0, 8, micro)]  # fmt: skip
    model = Linear()
    acc = Accelerator(cpu=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    prepared, opt = acc.prepare(model, opt)
    store = Checkpointer(workdir, acc, "linear") if workdir is not None else None
    loop = LoopSettings(iters=iters, accum_steps=accum, log_interval=2,
                        checkpoint_interval=2 if store is not None else 0)  # fmt: skip
    engine = TrainingEngine(acc, prepared, opt, sched, model,
                            lambda start: iter(micro_batches[start:]), step, loop, store,
                            progress=False)  # fmt: skip
    return engine, model


def test_accumulated_micro_batches_step_like_one_batch() -> None:
    """Four micro-batches of 2, gradients accumulated, make the step a batch of 8 makes
    (equal-sized micro-batches: the mean of means is the mean)."""
    whole, a = _linear_engine(None, micro=8, accum=1)
    split, b = _linear_engine(None, micro=2, accum=4)
    out_whole, out_split = whole.run(), split.run()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert [r["iteration"] for r in out_split.train_loss] == [2, 4]
    assert out_split.train_loss[-1]["loss"] == pytest.approx(out_whole.train_loss[-1]["loss"])
    assert out_split.last_loss == out_split.train_loss[-1]["loss"]


def test_a_non_finite_loss_stops_the_run_before_the_optimiser_step(tmp_path: Path) -> None:
    calls = {"n": 0}

    def third_step_diverges(model: nn.Module, batch: dict) -> torch.Tensor:
        calls["n"] += 1
        loss = _step(model, batch)
        return loss * float("inf") if calls["n"] == 6 else loss  # step 3, 2nd micro-batch

    engine, model = _linear_engine(tmp_path, micro=4, accum=2, step=third_step_diverges)
    with pytest.raises(TrainingDiverged, match=r"loss became inf at iteration 3 of 4; the "
                       r"last good checkpoint \(.*checkpoint.pt, iteration 2\) is kept\. Lower lr"):
        engine.run()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 2
    # Steps 1 and 2 moved the weights; step 3's update never happened.
    fresh, _ = _linear_engine(None, micro=4, accum=2, iters=2)
    fresh.run()
    for name, value in fresh.state_module.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_checkpoints_need_a_store() -> None:
    acc = Accelerator(cpu=True)
    model = Linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    with pytest.raises(ValueError, match="checkpoints were asked for"):
        TrainingEngine(acc, model, opt, sched, model, lambda s: iter([]), _step,
                       LoopSettings(iters=2, checkpoint_at_end=True), None)  # fmt: skip
