"""Training progress people can watch: a bar on a terminal, plain periodic lines elsewhere.

Under nohup, SLURM or any captured output a tqdm bar writes carriage returns that end up
as one endless line, so off a terminal the same progress becomes a plain line every
``every_s`` seconds (``UNIPBENCH_LOG_EVERY_S``, default 60): step, the latest logged values
(loss, lr), speed and the time left. The first step, resumption and the last step always
get a line.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from tqdm.auto import tqdm

DEFAULT_EVERY_S = 60.0


def _every_s() -> float:
    raw = os.environ.get("UNIPBENCH_LOG_EVERY_S")
    if raw is None:
        return DEFAULT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"UNIPBENCH_LOG_EVERY_S={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ValueError(f"UNIPBENCH_LOG_EVERY_S={raw!r} must be >= 0")
    return value


def format_duration(seconds: float) -> str:
    """3725 -> '1:02:05'; under an hour '2:05'."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _value(key: str, v: Any) -> str:
    if isinstance(v, float):
        return f"{key} {v:.2e}" if key == "lr" else f"{key} {v:.4f}"
    return f"{key} {v}"


class Progress:
    """``update`` once per step, ``set`` the latest values; ``close`` at the end."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "train",
        enabled: bool = True,
        stream: IO[str] | None = None,
        every_s: float | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.total = total
        self.step = initial
        self.initial = initial
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = _every_s() if every_s is None else every_s
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.values: dict[str, Any] = {}
        self.start = time.perf_counter()
        self.last_line = float("-inf")
        self.bar = None
        if enabled and self.terminal:
            self.bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream,
                            dynamic_ncols=True)

    def resumed(self, where: str) -> None:
        """Say that training continues from ``initial``, and from what."""
        self.say(f"{self.desc}: resuming from step {self.initial} of {self.total} ({where})")

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def set(self, **values: Any) -> None:
        self.values.update(values)
        if self.bar is not None:
            self.bar.set_postfix({k: _value(k, v).split(" ", 1)[1] for k, v in values.items()})

    def update(self, n: int = 1) -> None:
        self.step += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if not self.enabled:
            return
        now = time.perf_counter()
        first = self.step == self.initial + n
        if first or self.step >= self.total or now - self.last_line >= self.every_s:
            self.last_line = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        """'fine-tune soda: step 120/14400 (0.8%) loss 0.8123 lr 1.20e-05 3.41 it/s ETA 1:10:05'"""
        now = time.perf_counter() if now is None else now
        done = self.step - self.initial
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        parts = [f"{self.desc}: step {self.step}/{self.total}"
                 f" ({100.0 * self.step / max(self.total, 1):.1f}%)"]
        parts += [_value(k, v) for k, v in self.values.items()]
        if done:
            parts.append(f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it")
            parts.append(f"ETA {format_duration((self.total - self.step) / rate)}")
        return " ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, as download sizes are usually given."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class ByteProgress(Progress):
    """A download's progress in bytes: a tqdm bar on a terminal, plain lines elsewhere.

    ``total`` None (no Content-Length) shows what arrived without a percentage or ETA.
    """

    def __init__(
        self,
        total: int | None,
        initial: int = 0,
        desc: str = "download",
        stream: IO[str] | None = None,
        every_s: float | None = None,
        terminal: bool | None = None,
    ) -> None:
        # The base class would build a step-counting bar; build a byte-counting one here.
        super().__init__(total or 0, initial, desc, enabled=False, stream=stream,
                         every_s=every_s, terminal=terminal)
        self.enabled = True
        self.known_total = bool(total)
        if not self.known_total:
            self.total = sys.maxsize  # never "done" by count: no final line from update
        if self.terminal:
            self.bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream,
                            unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True)

    def line(self, now: float | None = None) -> str:
        """'mae/vit-base: 120.0 MiB of 330.5 MiB (36.3%) 45.2 MiB/s ETA 0:05'"""
        now = time.perf_counter() if now is None else now
        done = self.step - self.initial
        rate = done / max(now - self.start, 1e-9)
        text = f"{self.desc}: {format_bytes(self.step)}"
        if self.known_total:
            text += f" of {format_bytes(self.total)} ({100.0 * self.step / self.total:.1f}%)"
        if done:
            text += f" {format_bytes(rate)}/s"
            if self.known_total:
                text += f" ETA {format_duration((self.total - self.step) / max(rate, 1e-9))}"
        return text
