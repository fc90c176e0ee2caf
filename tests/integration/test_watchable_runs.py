"""Long runs people can watch: plain progress lines in logs, a resume notice, and
TensorBoard curves of loss, lr and evaluation mIoU, for fine-tuning and distillation."""

from __future__ import annotations

from pathlib import Path

import pytest
from protocol_job import MODEL, TINY_FT, dataset, make_soda
from single_thread import one_thread

from bench.protocols import run_protocol
from bench.protocols.engine import MetricEvaluation

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


def scalar_tags(logdir: Path) -> dict[str, list[int]]:
    """Tag -> logged steps, read back from the event files TensorBoard itself reads."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[int]] = {}
    for events in logdir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return out


def test_fine_tuning_prints_plain_lines_resumes_visibly_and_logs_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    soda = make_soda(tmp_path / "soda", train=8, test=2)
    monkeypatch.setenv("UNIPBENCH_TRACKERS", "tensorboard")
    monkeypatch.setenv("UNIPBENCH_LOG_EVERY_S", "0")
    settings = {**TINY_FT, "iters": 4, "log_interval": 2, "eval_interval": 2,
                "checkpoint_interval": 4, "crop_size": 64, "slide_crop": 64,
                "slide_stride": 64, "scale": [85, 64]}
    wd = tmp_path / "run"

    # Interrupt the first session in its final evaluation, after the step-4 checkpoint.
    real_eval = MetricEvaluation.__call__

    def interrupted(self, iteration):
        if iteration == 4:
            raise KeyboardInterrupt
        return real_eval(self, iteration)

    monkeypatch.setattr(MetricEvaluation, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_protocol("fine_tune", MODEL, dataset(soda), settings, wd, progress=True)
    first = capsys.readouterr().err
    steps = [ln.split(" (")[0] for ln in first.splitlines() if ": step " in ln]
    assert steps == [f"fine-tune soda: step {i}/4" for i in (1, 2, 3, 4)]
    assert "\r" not in first
    assert "loss " in first.splitlines()[-1] and " lr " in first and "ETA" in first

    monkeypatch.setattr(MetricEvaluation, "__call__", real_eval)
    result = run_protocol("fine_tune", MODEL, dataset(soda), settings, wd, progress=True)
    second = capsys.readouterr().err
    assert f"fine-tune soda: resuming from step 4 of 4 (checkpoint {wd}" in second
    assert result["resumed_from"] == 4

    tags = scalar_tags(wd / "logs")
    assert sorted(set(tags["train/loss"])) == [2, 4]
    assert sorted(set(tags["train/lr"])) == [2, 4]
    assert 2 in tags["eval/mIoU"] and 4 in tags["eval/mIoU"]


def test_distillation_logs_curves_and_plain_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import yaml
    from test_distill import IMG, make_images

    from bench.backbones.adapter import load_backbone
    from unip.distill import distill
    from unip.distill_config import load_config

    make_images(tmp_path / "images", 8)
    teacher = load_backbone("mae", "S", img_size=IMG, depth=2)
    torch.save({"model": teacher.vit.state_dict()}, tmp_path / "teacher.pth")
    cfg_path = tmp_path / "distill.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "teacher": {"adapter": "mae", "size": "S", "checkpoint": str(tmp_path / "teacher.pth"),
                    "depth": 2, "layer": 2},
        "student": {"size": "T", "depth": 2},
        "data": {"path": str(tmp_path / "images"), "img_size": IMG, "num_workers": 0},
        "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size": 4, "lr": 2e-3},
        "output_dir": str(tmp_path / "out"),
        "log_every": 2,
    }))
    monkeypatch.setenv("UNIPBENCH_TRACKERS", "tensorboard")
    monkeypatch.setenv("UNIPBENCH_LOG_EVERY_S", "0")
    result = distill(load_config(cfg_path))
    err = capsys.readouterr().err
    assert result.steps == 4
    assert "distill: step 4/4 (100.0%) loss " in err and "\r" not in err
    tags = scalar_tags(tmp_path / "out" / "logs")
    assert sorted(set(tags["train/loss"])) == [2, 4]
    assert sorted(set(tags["train/lr"])) == [2, 4]
