"""The training loop all protocols share: accumulate, step, evaluate, checkpoint, resume.

A protocol hands over a prepared model whose ``forward(img, label)`` returns a dict with
``loss`` (and optionally ``per_head`` losses), an optimiser, a micro-batch stream factory
and an evaluation function; the loop owns the schedule, the divergence check and the
resumable state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from bench.progress import Progress
from bench.protocols.checkpointing import Checkpointer
from bench.protocols.config import ProtocolSettings
from bench.protocols.registry import MIOU, Metric
from bench.protocols.schedules import warmup_poly

Batches = Callable[[int], Iterator[dict]]  # micro-batch index to start at -> stream
Evaluate = Callable[[], list[dict]]  # -> one metrics dict per head


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is a good one."""


@dataclass
class TrainOutcome:
    """What the loop hands back: per-head metrics of the last and best evaluations."""

    last: list[dict]
    best: list[dict]
    history: list[dict] = field(default_factory=list)
    train_loss: list[dict] = field(default_factory=list)
    iterations: int = 0
    resumed_from: int = 0
    # Seconds in the training loop (with its evaluations) over every session of the run,
    # so a resumed run reports its whole cost, not only the part after the restart.
    train_time_s: float = 0.0

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


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The scheduled base lr (a layer-decayed group's lr over its scale)."""
    g = optimizer.param_groups[0]
    return float(g["lr"]) / float(g.get("lr_scale", 1.0))


def _per_head(name: str, values: list[float]) -> dict[str, float]:
    """One tracker series per head: 'eval/mIoU' alone, or 'eval/mIoU/head0', ..."""
    if len(values) == 1:
        return {name: values[0]}
    return {f"{name}/head{k}": v for k, v in enumerate(values)}


class Trainer:
    """Runs ``settings.iters`` optimiser steps of ``model`` with everything resumable."""

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
    ) -> None:
        self.acc = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.state_module = state_module
        self.batches = batches
        self.evaluate = evaluate
        self.s = settings
        self.ckpt = checkpointer
        self.num_heads = num_heads
        self.progress = progress
        self.description = description
        self.primary = primary  # the metric, and its direction, that picks the best
        self.saved_at: int | None = None  # iteration of the checkpoint on disk

    # ------------------------------------------------------------------ state
    def _state(
        self, best: list, history: list, train_loss: list, log_accum: tuple[float, int]
    ) -> dict[str, Any]:
        scaler = self.acc.scaler
        return {
            "elapsed_s": self._elapsed(),
            "model": self.state_module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "best": best,
            "history": history,
            "train_loss": train_loss,
            "log_accum": log_accum,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.state_module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.acc.scaler is not None and state.get("scaler") is not None:
            self.acc.scaler.load_state_dict(state["scaler"])
        self.ckpt.restore_rng(state)

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._session_start

    # ------------------------------------------------------------------ checks
    def _check_finite(self, loss: torch.Tensor, it: int) -> None:
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.acc.num_processes > 1:  # every rank must stop together, not deadlock
            bad = self.acc.reduce(bad, reduction="sum")
        if bad.item() > 0:
            kept = (
                f"the last good checkpoint ({self.ckpt.path}, iteration {self.saved_at}) "
                "is kept"
                if self.saved_at is not None
                else "no checkpoint had been written yet"
            )
            raise TrainingDiverged(
                f"loss became {loss.item()} at iteration {it + 1} of {self.s.iters}; {kept}. "
                "Lower lr (--set lr=...) or use mixed_precision='no'."
            )

    # ------------------------------------------------------------------ loop
    def _eval(self, it: int, best: list, history: list) -> list[dict]:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        key = self.primary.key
        history.append(
            {"iteration": it, key: [m[key] for m in metrics],
             "eval_s": round(time.perf_counter() - t0, 3)}
        )
        self.acc.log(_per_head(f"eval/{key}", [m[key] for m in metrics]), step=it)
        for k, m in enumerate(metrics):
            if self.primary.better(m[key], None if best[k] is None else best[k][key]):
                best[k] = {"iteration": it, **m}
        return metrics

    def run(self) -> TrainOutcome:
        s = self.s
        assert s.iters is not None
        accum = s.grad_accum_steps
        saved = self.ckpt.load()
        self._session_start = time.perf_counter()
        self._elapsed_before = float(saved.get("elapsed_s", 0.0)) if saved is not None else 0.0
        start = 0
        best: list = [None] * self.num_heads
        history: list[dict] = []
        train_loss: list[dict] = []
        running, seen = 0.0, 0  # loss summed since the last log line, and its step count
        if saved is not None:
            self._restore(saved)
            start = self.saved_at = int(saved["iteration"])
            best, history = list(saved["best"]), list(saved["history"])
            train_loss = list(saved["train_loss"])
            running, seen = saved["log_accum"]
        # Creating a DataLoader iterator draws from the global torch RNG; keep that draw
        # off the stream dropout uses, so a resumed run matches an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            stream = self.batches(start * accum)
        bar = Progress(s.iters, start, self.description,
                       enabled=self.progress and self.acc.is_main_process)
        if saved is not None:
            bar.resumed(f"checkpoint {self.ckpt.path}")
        for it in range(start, s.iters):
            self.model.train()
            for micro in range(accum):
                batch = next(stream)
                img = batch["img"].to(self.acc.device, non_blocking=True)
                label = batch["label"].to(self.acc.device, non_blocking=True)
                last_micro = micro == accum - 1
                sync = nullcontext() if last_micro else self.acc.no_sync(self.model)
                with sync:
                    out = self.model(img, label)
                    loss = out["loss"]
                    self._check_finite(loss, it)
                    self.acc.backward(loss / accum)
                running += float(loss.detach()) / accum
            lr_used = _base_lr(self.optimizer)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            seen += 1
            done = it + 1
            if done % s.log_interval == 0 or done == s.iters:
                mean = torch.tensor([running / seen], device=self.acc.device)
                mean = self.acc.reduce(mean, reduction="mean").item()
                train_loss.append({"iteration": done, "loss": mean})
                bar.set(loss=mean, lr=lr_used)
                self.acc.log({"train/loss": mean, "train/lr": lr_used}, step=done)
                running, seen = 0.0, 0
            bar.update(1)
            if s.eval_interval and done % s.eval_interval == 0 and done < s.iters:
                self._eval(done, best, history)
            if s.checkpoint_interval and done % s.checkpoint_interval == 0:
                self.ckpt.save(done, self._state(best, history, train_loss, (running, seen)))
                self.saved_at = done
        bar.close()
        last = self._eval(s.iters, best, history)
        if s.save_final_weights:
            self.ckpt.save_weights(self.state_module, s.iters)
        return TrainOutcome(
            last=last,
            best=best,
            history=history,
            train_loss=train_loss,
            iterations=s.iters,
            resumed_from=start,
            train_time_s=self._elapsed(),
        )
