"""The one training engine: accumulate, step, log, evaluate, checkpoint, resume.

A client hands over a prepared model, optimiser and lr scheduler, a micro-batch stream
factory and a *step function* that computes the loss of one micro-batch; the engine owns
everything around it: gradient accumulation (gradients all-reduced once per step), the
precision policy (autocast around the step function, GradScaler through accelerate), the
optional ``torch.compile`` of the model, the finite-loss check, progress, tracker logging,
periodic checkpoints with every process's RNG states, and a bit-identical resume. An
optional *evaluator* runs every ``eval_interval`` steps and at the end.

Clients: the segmentation protocols (:class:`Trainer` below, with the mIoU evaluation)
and NMI-HAD distillation (:mod:`unip.distill`, no evaluator, its own checkpoint file).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from torch import nn

from bench.progress import Progress
from bench.protocols.checkpointing import Checkpointer
from bench.protocols.config import ProtocolSettings
from bench.protocols.registry import MIOU, Metric
from bench.protocols.runtime import compile_model, resolve_compile
from bench.protocols.schedules import warmup_poly

Batches = Callable[[int], Iterator[Any]]  # micro-batch index to start at -> stream
# (training model, micro-batch) -> loss, or (loss, its independent parts) for a model
# whose loss is a sum of parts that may be dropped (a probe's heads: LossParts).
StepFn = Callable[[nn.Module, Any], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
Evaluate = Callable[[], list[dict]]  # -> one metrics dict per head


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is a good one."""


class Evaluator(Protocol):
    """Evaluation inside the loop; its state is part of the checkpoint."""

    def __call__(self, iteration: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LossParts(Protocol):
    """A loss that is a sum of independent parts (heads trained together), some of which
    may be dropped when they diverge; its state is part of the checkpoint.

    Called after the step's backward, before the finite-loss check and the optimiser step,
    with the parts of every micro-batch (accum x parts) and the step's losses (accum);
    returns the losses to check and log (the parts still trained). Dropping a part means
    its gradients are gone before the optimiser step."""

    def __call__(self, parts: torch.Tensor, losses: torch.Tensor, it: int) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StateStore(Protocol):
    """Where the engine's state goes: ``save`` adds the RNG states, ``load`` returns the
    saved state (or None) in the engine's keys, ``restore_rng`` puts this rank's back."""

    path: Path

    def save(self, iteration: int, state: dict[str, Any]) -> None: ...

    def load(self) -> dict[str, Any] | None: ...

    def restore_rng(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    """The engine's schedule; intervals of 0 mean never (evaluation: only at the end)."""

    iters: int
    accum_steps: int = 1
    log_interval: int = 20
    eval_interval: int = 0
    checkpoint_interval: int = 0
    checkpoint_at_end: bool = False
    compile: bool = False
    divergence_hint: str = "Lower lr (--set lr=...) or use mixed_precision='no'."


@dataclass(frozen=True)
class StepEnd:
    """After each optimiser step: this process's mean micro-batch loss and the lr used."""

    iteration: int  # optimiser steps done
    loss: float
    lr: float


@dataclass(frozen=True)
class LogRecord:
    """Every ``log_interval`` steps and at the end: the window's mean loss over steps and
    processes, the lr of its last step and how many steps it covers."""

    iteration: int
    loss: float
    lr: float
    steps: int


@dataclass
class LoopOutcome:
    train_loss: list[dict]
    iterations: int
    resumed_from: int
    # Seconds in the loop (with its evaluations) over every session of the run, so a
    # resumed run reports its whole cost, not only the part after the restart.
    train_time_s: float
    last_loss: float | None


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The scheduled base lr (a layer-decayed group's lr over its scale)."""
    g = optimizer.param_groups[0]
    return float(g["lr"]) / float(g.get("lr_scale", 1.0))


class TrainingEngine:
    """Runs ``loop.iters`` optimiser steps of ``model`` with everything resumable.

    ``model`` is the accelerate-prepared module (DDP-wrapped on several processes) the
    step function is given, compiled when ``loop.compile``; ``state_module`` is the plain
    module whose state dict the checkpoint holds (never a compiled or DDP wrapper).
    Without a ``store`` nothing is saved or resumed (benchmarks, throw-away loops).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        state_module: nn.Module,
        batches: Batches,
        step: StepFn,
        loop: LoopSettings,
        store: StateStore | None,
        evaluator: Evaluator | None = None,
        progress: bool = True,
        description: str = "train",
        on_step: Sequence[Callable[[StepEnd], None]] = (),
        on_log: Sequence[Callable[[LogRecord], None]] = (),
        loss_parts: LossParts | None = None,
    ) -> None:
        if store is None and (loop.checkpoint_interval or loop.checkpoint_at_end):
            raise ValueError("checkpoints were asked for, but the engine has no state store")
        self.acc = accelerator
        self.model = model
        self.train_model = compile_model(model) if loop.compile else model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.state_module = state_module
        self.batches = batches
        self.step = step
        self.loop = loop
        self.store = store
        self.evaluator = evaluator
        self.progress = progress
        self.description = description
        self.on_step = list(on_step)
        self.on_log = list(on_log)
        self.loss_parts = loss_parts
        self.saved_at: int | None = None  # iteration of the checkpoint on disk

    # ------------------------------------------------------------------ state
    def _state(self, train_loss: list, log_accum: tuple[float, int]) -> dict[str, Any]:
        """Collective (all ranks call it): the state every rank restores from."""
        scaler = self.acc.scaler
        running, seen = log_accum
        if self.acc.num_processes > 1:
            # Every rank restores the saved sum: save the ranks' mean (float64, so the
            # logged window means match an uninterrupted run's to the last digit or so).
            t = torch.tensor([running], dtype=torch.float64, device=self.acc.device)
            running = self.acc.reduce(t, reduction="mean").item()
        return {
            "elapsed_s": self._elapsed(),
            "model": self.state_module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            **(self.evaluator.state_dict() if self.evaluator is not None else {}),
            **({"loss_parts": self.loss_parts.state_dict()} if self.loss_parts is not None else {}),
            "train_loss": train_loss,
            "log_accum": (running, seen),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.state_module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.acc.scaler is not None and state.get("scaler") is not None:
            self.acc.scaler.load_state_dict(state["scaler"])
        if self.evaluator is not None:
            self.evaluator.load_state_dict(state)
        if self.loss_parts is not None and "loss_parts" in state:
            self.loss_parts.load_state_dict(state["loss_parts"])
        assert self.store is not None  # a saved state came from it
        self.store.restore_rng(state)

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._session_start

    # ------------------------------------------------------------------ checks
    def _check_finite(self, losses: torch.Tensor, it: int) -> None:
        """One device sync per step: every micro-batch's loss must be finite on every rank."""
        finite = torch.isfinite(losses)
        bad = (~finite).any().float().reshape(1)
        if self.acc.num_processes > 1:  # every rank must stop together, not deadlock
            bad = self.acc.reduce(bad, reduction="sum")
        if bad.item() > 0:
            local = losses[~finite]
            value = local[0].item() if local.numel() else "non-finite on another process"
            kept = (
                f"the last good checkpoint ({self.store.path}, iteration {self.saved_at}) "
                "is kept"
                if self.store is not None and self.saved_at is not None
                else "no checkpoint had been written yet"
            )
            raise TrainingDiverged(
                f"loss became {value} at iteration {it + 1} of {self.loop.iters}; {kept}. "
                f"{self.loop.divergence_hint}"
            )

    # ------------------------------------------------------------------ loop
    def _micro_steps(self, stream: Iterator[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward of one step's micro-batches; their losses (detached), and
        their loss parts (accum x parts) when the step function gives them."""
        accum = self.loop.accum_steps
        losses, parts = [], []
        for micro in range(accum):
            batch = next(stream)
            # Gradients are all-reduced once, on the last micro-batch.
            sync = nullcontext() if micro == accum - 1 else self.acc.no_sync(self.model)
            with sync:
                with self.acc.autocast():
                    out = self.step(self.train_model, batch)
                loss, part = out if isinstance(out, tuple) else (out, None)
                self.acc.backward(loss / accum)
            losses.append(loss.detach().float())
            if part is not None:
                parts.append(part.detach().float())
        return torch.stack(losses), (torch.stack(parts) if parts else None)

    def run(self) -> LoopOutcome:
        loop = self.loop
        accum = loop.accum_steps
        saved = self.store.load() if self.store is not None else None
        self._session_start = time.perf_counter()
        self._elapsed_before = float(saved.get("elapsed_s", 0.0)) if saved is not None else 0.0
        start = 0
        train_loss: list[dict] = []
        running, seen = 0.0, 0  # loss summed since the last log line, and its step count
        last_loss: float | None = None
        if saved is not None:
            self._restore(saved)
            start = self.saved_at = int(saved["iteration"])
            train_loss = list(saved.get("train_loss", []))
            running, seen = saved["log_accum"]
        # Creating a DataLoader iterator may draw from the global torch RNG; keep that
        # draw off the stream dropout uses, so a resumed run matches an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            stream = self.batches(start * accum)
        bar = Progress(loop.iters, start, self.description,
                       enabled=self.progress and self.acc.is_main_process)
        if self.store is not None and saved is not None:
            bar.resumed(f"checkpoint {self.store.path}")
        for it in range(start, loop.iters):
            self.model.train()
            losses, parts = self._micro_steps(stream)
            if self.loss_parts is not None and parts is not None:
                losses = self.loss_parts(parts, losses, it)
            self._check_finite(losses, it)
            # The step's mean in the losses' own precision, fetched with them in one sync.
            *values, step_loss = torch.cat([losses, losses.sum().reshape(1) / accum]).tolist()
            for v in values:
                running += v / accum
            lr_used = _base_lr(self.optimizer)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            seen += 1
            done = it + 1
            if self.on_step:
                info = StepEnd(done, step_loss, lr_used)
                for hook in self.on_step:
                    hook(info)
            if done % loop.log_interval == 0 or done == loop.iters:
                mean = torch.tensor([running / seen], device=self.acc.device)
                last_loss = mean = self.acc.reduce(mean, reduction="mean").item()
                train_loss.append({"iteration": done, "loss": mean})
                bar.set(loss=mean, lr=lr_used)
                self.acc.log({"train/loss": mean, "train/lr": lr_used}, step=done)
                record = LogRecord(done, mean, lr_used, seen)
                for hook in self.on_log:
                    hook(record)
                running, seen = 0.0, 0
            bar.update(1)
            if self.evaluator is not None and loop.eval_interval and (
                done % loop.eval_interval == 0 and done < loop.iters
            ):
                self.evaluator(done)
            if self.store is not None and (
                (loop.checkpoint_interval and done % loop.checkpoint_interval == 0)
                or (loop.checkpoint_at_end and done == loop.iters)
            ):
                self.store.save(done, self._state(train_loss, (running, seen)))
                self.saved_at = done
        bar.close()
        if self.evaluator is not None:
            self.evaluator(loop.iters)
        return LoopOutcome(
            train_loss=train_loss,
            iterations=loop.iters,
            resumed_from=start,
            train_time_s=self._elapsed(),
            last_loss=last_loss,
        )


# ---------------------------------------------------------------------- the protocols
@dataclass
class TrainOutcome:
    """What a protocol's training hands back: per-head metrics of the last and best
    evaluations."""

    last: list[dict | None]
    best: list[dict | None]
    history: list[dict] = field(default_factory=list)
    train_loss: list[dict] = field(default_factory=list)
    iterations: int = 0
    resumed_from: int = 0
    train_time_s: float = 0.0
    diverged: dict[int, int] = field(default_factory=dict)  # dropped head -> its step

    def drop_heads(self, diverged: dict[int, int]) -> None:
        """Heads dropped as diverged (head -> the step its loss went non-finite) have no
        metrics: none last or best, and none in the history from that step on."""
        self.diverged = dict(diverged)
        for k, step in self.diverged.items():
            self.last[k] = self.best[k] = None
            for entry in self.history:
                if entry["iteration"] >= step:
                    for values in entry.values():
                        if isinstance(values, list):
                            values[k] = None

    def result(self, head: int = 0) -> dict[str, Any]:
        """The result fields for head ``head``: final, best and last metrics, history."""
        return {
            "metrics": self.last[head],
            "best": self.best[head],
            "last": self.last[head],
            "history": self.history,
            "train_loss": self.train_loss,
            "iterations": self.iterations,
            "resumed_from": self.resumed_from,
            "train_time_s": round(self.train_time_s, 3),
        }


def build_scheduler(
    optimizer: torch.optim.Optimizer, s: ProtocolSettings
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration linear warm-up then poly, scaling each group's own (decayed) lr."""
    assert s.iters is not None and s.warmup_iters is not None
    f = warmup_poly(s.iters, s.warmup_iters, s.poly_power, s.warmup_ratio, s.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def _per_head(name: str, values: list[float]) -> dict[str, float]:
    """One tracker series per head: 'eval/mIoU' alone, or 'eval/mIoU/head0', ..."""
    if len(values) == 1:
        return {name: values[0]}
    return {f"{name}/head{k}": v for k, v in enumerate(values)}


class MetricEvaluation:
    """The protocols' evaluator: per-head metrics, the best so far by the protocol's
    primary metric (and its direction), and the history of that metric."""

    def __init__(
        self, accelerator: Accelerator, evaluate: Evaluate, num_heads: int,
        primary: Metric = MIOU,
    ) -> None:
        self.acc = accelerator
        self.evaluate = evaluate
        self.primary = primary
        self.best: list[dict | None] = [None] * num_heads
        self.history: list[dict] = []
        self.last: list[dict] = []

    def __call__(self, iteration: int) -> None:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        key = self.primary.key
        values = [m[key] for m in metrics]
        self.history.append(
            {"iteration": iteration, key: values, "eval_s": round(time.perf_counter() - t0, 3)}
        )
        self.acc.log(_per_head(f"eval/{key}", values), step=iteration)
        for k, m in enumerate(metrics):
            old = self.best[k]
            if self.primary.better(m[key], None if old is None else old[key]):
                self.best[k] = {"iteration": iteration, **m}
        self.last = metrics

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.history = list(state["best"]), list(state["history"])


def segmentation_step(device: torch.device, parts: bool = False) -> StepFn:
    """The protocols' step: the model's ``forward(img, label)`` returns its ``loss``;
    with ``parts``, also its ``per_head`` losses (for :class:`LossParts`)."""

    def step(model: nn.Module, batch: dict) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        img = batch["img"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        out = model(img, label)
        return (out["loss"], out["per_head"]) if parts else out["loss"]

    return step


class Trainer:
    """A protocol's training: the engine with the segmentation step and mIoU evaluation.

    ``model`` is the prepared training module whose ``forward(img, label)`` returns a
    dict with ``loss``; ``state_module`` what the checkpoint (and the final weights) hold.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        state_module: nn.Module,
        batches: Batches,
        evaluate: Evaluate,
        settings: ProtocolSettings,
        checkpointer: Checkpointer,
        num_heads: int = 1,
        progress: bool = True,
        description: str = "train",
        primary: Metric = MIOU,
        loss_parts: LossParts | None = None,
    ) -> None:
        s = settings
        assert s.iters is not None
        self.s = settings
        self.ckpt = checkpointer
        self.state_module = state_module
        self.evaluation = MetricEvaluation(accelerator, evaluate, num_heads, primary)
        loop = LoopSettings(
            iters=s.iters,
            accum_steps=s.grad_accum_steps,
            log_interval=s.log_interval,
            eval_interval=s.eval_interval,
            checkpoint_interval=s.checkpoint_interval,
            compile=resolve_compile(s.compile, accelerator.device.type == "cuda"),
        )
        self.engine = TrainingEngine(
            accelerator, model, optimizer, scheduler, state_module, batches,
            segmentation_step(accelerator.device, parts=loss_parts is not None), loop,
            checkpointer, evaluator=self.evaluation, progress=progress, description=description,
            loss_parts=loss_parts,
        )  # fmt: skip

    def run(self) -> TrainOutcome:
        out = self.engine.run()
        if self.s.save_final_weights:
            self.ckpt.save_weights(self.state_module, out.iterations)
        ev = self.evaluation
        return TrainOutcome(
            last=ev.last,
            best=ev.best,  # type: ignore[arg-type]  # every head evaluated at least once
            history=ev.history,
            train_loss=out.train_loss,
            iterations=out.iterations,
            resumed_from=out.resumed_from,
            train_time_s=out.train_time_s,
        )
