"""The on-the-fly lr sweep: each head is the single-lr probe of the same seed, exactly.

Every comparison is against separate ordinary runs (``sweep`` off, one ``lr`` each),
which do not go through any of the sweep's code: same data order and augmentation,
initial weights, AdamW state, schedule and evaluation, so head weights, per-class IoU,
best and last evaluations agree to float tolerance.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from protocol_job import (
    MODEL,
    TINY,
    Killed,
    dataset,
    die_after_next_checkpoint,
    give_accelerators_a_grad_scaler,
    make_soda,
)
from safetensors.torch import load_file
from single_thread import one_thread

from bench.protocols import run_protocol

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

LRS = [3e-4, 1e-3, 1e-2]
# Evaluations at 3 and 6: best and last both compared. Weight decay stays at its
# default (0.05), so decoupled decay cross-talk would show.
BASE = {**TINY, "iters": 6, "eval_interval": 3, "save_final_weights": True,
        "keep_training_state": False}


@pytest.fixture(scope="module")
def soda(tmp_path_factory):
    return make_soda(tmp_path_factory.mktemp("soda") / "data")


def _close(a, b, what: str) -> None:
    """Metrics dicts equal to float tolerance (None for an absent class on both sides)."""
    assert a.keys() == b.keys(), what
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            _close(x, y, f"{what}.{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), f"{what}.{k}"
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                assert (u is None and v is None) or math.isclose(u, v, rel_tol=1e-5,
                                                                  abs_tol=1e-4), \
                    f"{what}.{k}[{i}]: {u} != {v}"
        elif isinstance(x, float):
            assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-4), f"{what}.{k}: {x} != {y}"
        else:
            assert x == y, f"{what}.{k}: {x} != {y}"


@pytest.mark.parametrize("sweep_heads", [None, ["linear", "bn_linear"]])
def test_each_sweep_head_equals_the_single_run(soda, tmp_path, sweep_heads):
    """Every (head type, lr) of the sweep against its own ordinary run."""
    extra = {} if sweep_heads is None else {"sweep_heads": sweep_heads}
    swept = run_protocol("linear_probe", MODEL, dataset(soda),
                         {**BASE, "sweep": True, "sweep_lrs": LRS, **extra},
                         tmp_path / "sweep", progress=False)
    sweep_w = load_file(tmp_path / "sweep" / "final_weights.safetensors")
    grid = [(h, lr) for h in (sweep_heads or ["linear"]) for lr in LRS]
    assert [(row["head"], row["lr"]) for row in swept["lr_sweep"]] == grid
    assert swept["mode"] == "on_the_fly" and swept["selected_by"] == "paper_lr"
    for k, (head, lr) in enumerate(grid):
        single = run_protocol("linear_probe", MODEL, dataset(soda),
                              {**BASE, "head": head, "lr": lr}, tmp_path / f"h{k}",
                              progress=False)
        assert "lr_sweep" not in single
        single_w = load_file(tmp_path / f"h{k}" / "final_weights.safetensors")
        for name, w in single_w.items():
            assert name.startswith("heads.0."), name
            mine = sweep_w[name.replace("heads.0.", f"heads.{k}.", 1)]
            torch.testing.assert_close(mine, w, rtol=1e-5, atol=1e-6,
                                       msg=f"{head} lr {lr}: {name}")
        row = swept["lr_sweep"][k]
        _close(row["last"], single["last"], f"{head} lr {lr} last")
        _close(row["best"], single["best"], f"{head} lr {lr} best")
        assert [h["iteration"] for h in swept["history"]] == [3, 6]
        for hs, h1 in zip(swept["history"], single["history"], strict=True):
            assert math.isclose(hs["mIoU"][k], h1["mIoU"][0], rel_tol=1e-5, abs_tol=1e-4)
        paper = head == "linear" and lr == TINY["lr"]  # the settings' head and lr
        assert row["reported"] == paper
        if paper:
            assert swept["reported_lr"] == lr and swept["reported_head"] == head
            _close(swept["metrics"], single["metrics"], "reported")
    # Two orders of magnitude apart, the heads must differ: the comparison above has teeth.
    assert swept["lr_sweep"][0]["last"] != swept["lr_sweep"][2]["last"]


def test_best_on_eval_reports_the_best_final_head(soda, tmp_path):
    r = run_protocol("linear_probe", MODEL, dataset(soda),
                     {**TINY, "iters": 4, "sweep": True, "sweep_lrs": [1e-4, 1e-2],
                      "select": "best_on_eval"}, tmp_path, progress=False)
    best = max(r["lr_sweep"], key=lambda row: row["last"]["mIoU"])
    assert r["selected_by"] == "best_on_eval"
    assert r["reported_lr"] == best["lr"] and r["metrics"] == best["last"]
    assert [row["reported"] for row in r["lr_sweep"]] == [
        row["lr"] == best["lr"] for row in r["lr_sweep"]
    ]


def test_cli_train_prints_every_head_and_marks_the_reported_one(soda, tmp_path, capsys):
    from bench.cli import main

    sets = []
    for k, v in {**TINY, "iters": 2, "sweep": True, "sweep_lrs": [1e-4, 1e-3]}.items():
        sets += ["--set", f"{k}={json.dumps(v)}"]
    rc = main(["train", "linear-probe", "--adapter", "mae", "--size", "T", "--option",
               "depth=4", "--dataset", "soda", "--root", str(soda), "--workdir",
               str(tmp_path), "--no-progress", *sets])
    out = capsys.readouterr().out
    assert rc == 0, out
    r = json.loads((tmp_path / "result.json").read_text())
    rows = [line for line in out.splitlines() if line[2:].startswith(("0.0001 ", "0.001 "))]
    assert len(rows) == 2
    assert rows[0].startswith("  0.0001") and rows[1].startswith("* 0.001")
    assert f"{r['lr_sweep'][1]['last']['mIoU']:.2f}" in rows[1]
    assert "reported lr (*): 0.001 (linear head), selected by paper_lr (the settings' lr)" in out
    # The per-class table below is the reported head's.
    assert f"{r['metrics']['mIoU']:.2f}" in out and r["metrics"] == r["lr_sweep"][1]["last"]


def test_loss_scaled_sweep_gives_each_head_its_own_scale(soda, tmp_path, monkeypatch):
    """fp16's GradScaler, on CPU: the accelerator gets torch's scaler (what fp16 on CUDA
    gives it); a single run keeps it, a sweep swaps in one scale per head. The scale is
    set near fp32's limit so that it grows and backs off within a few steps."""
    give_accelerators_a_grad_scaler(monkeypatch)
    settings = {**TINY, "iters": 6, "checkpoint_interval": 6, "keep_training_state": True}
    lrs = [1e-4, 1e-2]
    run_protocol("linear_probe", MODEL, dataset(soda), {**settings, "sweep": True,
                 "sweep_lrs": lrs, "lr": 1e-4}, tmp_path / "sweep", progress=False)
    swept = torch.load(tmp_path / "sweep" / "checkpoint.pt", weights_only=True)
    assert len(swept["scaler"]["scales"]) == 2
    for k, lr in enumerate(lrs):
        run_protocol("linear_probe", MODEL, dataset(soda), {**settings, "lr": lr},
                     tmp_path / f"lr{k}", progress=False)
        single = torch.load(tmp_path / f"lr{k}" / "checkpoint.pt", weights_only=True)
        assert swept["scaler"]["scales"][k] == single["scaler"]["scale"]
        assert swept["scaler"]["growth_trackers"][k] == single["scaler"]["_growth_tracker"]
        for name, w in single["model"].items():
            mine = swept["model"][name.replace("heads.0.", f"heads.{k}.", 1)]
            torch.testing.assert_close(mine, w, rtol=1e-5, atol=1e-6, msg=f"lr {lr}: {name}")
    # 2^118 grew past fp32's range and backed off: the scaler really acted.
    assert swept["scaler"]["scales"][0] != 2.0**118


def test_loss_scaled_sweep_resumes_bit_identically(soda, tmp_path, monkeypatch):
    """The per-head scales are part of the resumable state: a run stopped right after its
    step-3 checkpoint and rerun ends exactly as an uninterrupted one."""
    give_accelerators_a_grad_scaler(monkeypatch)
    settings = {**TINY, "iters": 6, "checkpoint_interval": 3, "eval_interval": 3,
                "sweep": True, "sweep_lrs": [1e-4, 1e-3, 1e-2], "log_interval": 1,
                "keep_training_state": True}
    straight = run_protocol("linear_probe", MODEL, dataset(soda), settings,
                            tmp_path / "straight", progress=False)

    save_normally = die_after_next_checkpoint(monkeypatch)
    with pytest.raises(Killed):
        run_protocol("linear_probe", MODEL, dataset(soda), settings, tmp_path / "resumed",
                     progress=False)
    save_normally()
    saved = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 3 and len(saved["scaler"]["scales"]) == 3
    resumed = run_protocol("linear_probe", MODEL, dataset(soda), settings,
                           tmp_path / "resumed", progress=False)
    assert resumed["resumed_from"] == 3 and straight["resumed_from"] == 0
    for key in ("metrics", "best", "last", "train_loss", "lr_sweep", "reported_lr"):
        assert json.dumps(resumed[key]) == json.dumps(straight[key]), key
    ends = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)
            for d in ("straight", "resumed")]
    assert ends[0]["iteration"] == ends[1]["iteration"] == 6
    assert ends[0]["scaler"] == ends[1]["scaler"]
    for name, w in ends[0]["model"].items():
        assert torch.equal(w, ends[1]["model"][name]), name


def test_cached_sweep_over_head_types(soda, tmp_path):
    r = run_protocol("linear_probe", MODEL, dataset(soda),
                     {**TINY, "iters": 2, "mode": "cached", "sweep_lrs": [1e-3],
                      "sweep_heads": ["linear", "bn_linear"]}, tmp_path, progress=False)
    assert [(row["head"], row["lr"]) for row in r["lr_sweep"]] == [("linear", 1e-3),
                                                                    ("bn_linear", 1e-3)]
    assert r["selected_by"] == "best_on_eval"
    assert r["lr_sweep"][0]["last"] != r["lr_sweep"][1]["last"]  # BN changes the head
