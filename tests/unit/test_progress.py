"""Progress off a terminal is plain periodic lines; trackers are chosen as documented."""

from __future__ import annotations

import io
import re

import pytest

from bench.progress import Progress, format_duration
from bench.trackers import flat_config, tracker_names


def test_off_a_terminal_each_line_has_step_values_speed_and_eta() -> None:
    out = io.StringIO()
    p = Progress(10, desc="fine-tune soda", stream=out, every_s=0.0, terminal=False)
    for step in range(1, 11):
        p.set(loss=1.0 / step, lr=1e-4)
        p.update()
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert re.fullmatch(
        r"fine-tune soda: step 3/10 \(30\.0%\) loss 0\.3333 lr 1\.00e-04 "
        r"[\d.]+ (it/s|s/it) ETA \d+:\d\d", lines[2]
    ), lines[2]
    assert lines[-1].startswith("fine-tune soda: step 10/10 (100.0%)")
    assert lines[-1].endswith("ETA 0:00")


def test_lines_are_spaced_in_time_but_the_first_and_last_always_show() -> None:
    out = io.StringIO()
    p = Progress(100, initial=40, desc="distill", stream=out, every_s=3600.0, terminal=False)
    p.resumed("checkpoint out/checkpoint.pth")
    for _ in range(60):
        p.update()
    lines = out.getvalue().splitlines()
    assert lines[0] == "distill: resuming from step 40 of 100 (checkpoint out/checkpoint.pth)"
    assert [ln.split(" (")[0] for ln in lines[1:]] == [
        "distill: step 41/100", "distill: step 100/100"
    ]


def test_disabled_progress_prints_nothing() -> None:
    out = io.StringIO()
    p = Progress(5, stream=out, every_s=0.0, terminal=False, enabled=False)
    p.resumed("x")
    for _ in range(5):
        p.update()
    assert out.getvalue() == ""


def test_durations() -> None:
    assert format_duration(3725) == "1:02:05"
    assert format_duration(125.4) == "2:05"


def test_tracker_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracker_names("none") == []
    assert tracker_names("tensorboard") == ["tensorboard"]
    assert tracker_names("auto") == ["tensorboard"]  # installed with the test extras
    monkeypatch.setenv("UNIPBENCH_TRACKERS", "off")
    assert tracker_names() == []
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'"):
        tracker_names("tensorbord")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match="wandb is not installed: pip install wandb"):
        tracker_names("wandb")


def test_config_is_flattened_to_scalars() -> None:
    flat = flat_config({"settings": {"lr": 1e-4, "layers": [3, 5], "neck": None}, "seed": 0})
    assert flat == {"settings.lr": 1e-4, "settings.layers": "[3, 5]",
                    "settings.neck": "None", "seed": 0}
