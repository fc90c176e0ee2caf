"""Heads trained together stay independent of each other, whatever one of them does.

Under fp16 loss scaling each head keeps its own scale: in a cached-mode lr sweep and in
layer-wise probing (as in the on-the-fly sweep, tests/integration/test_linear_probe_sweep.py),
the first head equals the run that trains it alone, while the other head's overflows
come at other steps. A head whose loss diverges in an lr sweep is dropped (the step it
went bad is recorded, no metrics), and the other heads end exactly as their own runs;
the reported head's divergence still stops the run, and a dropped head stays dropped
across a resume.

fp16 needs CUDA, so the accelerator gets torch's GradScaler on the CPU (what fp16 on
CUDA gives it), started near fp32's limit so that it grows and overflows within a few
steps; one head's logits are blown up at one step so that its scaled gradient overflows
there while its loss stays finite. Divergence is made by turning one head's training
logits into NaN from its third step on.
"""

from __future__ import annotations

import json

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

from bench.commands.train import lr_sweep_table
from bench.models.probe import ProbeHeads
from bench.protocols import run_protocol
from bench.protocols.engine import TrainingDiverged

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

KEEP = {"checkpoint_interval": 6, "keep_training_state": True, "save_final_weights": True}


@pytest.fixture(scope="module")
def soda(tmp_path_factory):
    return make_soda(tmp_path_factory.mktemp("soda") / "data")


@pytest.fixture
def fp16_scaler(monkeypatch):
    give_accelerators_a_grad_scaler(monkeypatch)


@pytest.fixture
def tamper(monkeypatch):
    """``tamper(k, factor, first, last)``: head k's training logits times ``factor`` at
    its training steps ``first`` to ``last`` (1-based; None: to the end), in runs of
    several heads only; arming again starts a new count."""
    real = ProbeHeads.forward

    def arm(head: int, factor: float, first: int, last: int | None = None) -> None:
        steps = {"n": 0}

        def forward(self, feats):
            out = real(self, feats)
            if self.training and len(out) > 1:
                steps["n"] += 1
                if first <= steps["n"] and (last is None or steps["n"] <= last):
                    out[head] = out[head] * factor
            return out

        monkeypatch.setattr(ProbeHeads, "forward", forward)

    return arm


@pytest.fixture
def poison(tamper):
    """``poison(k)``: head k's training logits are NaN from its third step on."""
    return lambda head, from_step=3: tamper(head, float("nan"), from_step)


def _end(workdir) -> dict:
    return torch.load(workdir / "checkpoint.pt", weights_only=True)


def _assert_head0_equal(together: dict, alone: dict) -> None:
    """Head 0 of a run of several heads against the run of head 0 alone."""
    scales = together["scaler"]["scales"]
    assert len(scales) > 1
    assert scales[0] == alone["scaler"]["scale"]
    assert together["scaler"]["growth_trackers"][0] == alone["scaler"]["_growth_tracker"]
    for name, w in alone["model"].items():
        assert name.startswith("heads.0."), name
        torch.testing.assert_close(together["model"][name], w, rtol=0, atol=0, msg=name)
    # Head 1 overflowed at step 2 and backed off, while head 0's step went on: one shared
    # scale would have skipped it too.
    assert scales[1] < scales[0]


def test_cached_sweep_heads_keep_their_own_loss_scale(soda, tmp_path, fp16_scaler, tamper):
    tamper(1, 1e30, 2, 2)  # a finite loss whose scaled gradient overflows fp32
    base = {**TINY, "iters": 6, **KEEP, "mode": "cached", "sweep_lrs": [1e-3]}
    run_protocol("linear_probe", MODEL, dataset(soda),
                 {**base, "sweep_heads": ["linear", "bn_linear"]}, tmp_path / "two",
                 progress=False)  # fmt: skip
    run_protocol("linear_probe", MODEL, dataset(soda), base, tmp_path / "one", progress=False)
    _assert_head0_equal(_end(tmp_path / "two"), _end(tmp_path / "one"))


def test_layerwise_heads_keep_their_own_loss_scale(soda, tmp_path, fp16_scaler, tamper):
    tamper(1, 1e30, 2, 2)
    base = {**TINY, "iters": 6, **KEEP}
    run_protocol("layerwise_probe", MODEL, dataset(soda), {**base, "layers": [0, 3]},
                 tmp_path / "two", progress=False)
    run_protocol("layerwise_probe", MODEL, dataset(soda), {**base, "layers": [0]},
                 tmp_path / "one", progress=False)
    _assert_head0_equal(_end(tmp_path / "two"), _end(tmp_path / "one"))


LRS = [1e-4, 1e-3, 1e-2]  # TINY's lr, the reported one, is the second
SWEEP = {**TINY, "iters": 6, "eval_interval": 2, "sweep": True, "sweep_lrs": LRS,
         "save_final_weights": True}  # fmt: skip


def test_a_diverging_sweep_head_is_dropped_and_the_others_train_on(soda, tmp_path, poison,
                                                                    capsys):
    poison(2)
    r = run_protocol("linear_probe", MODEL, dataset(soda), SWEEP, tmp_path / "sweep",
                     progress=False)
    rows = r["lr_sweep"]
    assert rows[2]["diverged_at"] == 3
    assert rows[2]["last"] is None and rows[2]["best"] is None and not rows[2]["reported"]
    assert "head linear lr=0.01 diverged (loss non-finite) at iteration 3" in (
        capsys.readouterr().out
    )
    # Its evaluations from step 3 on are gone; the one before stays.
    assert [h["mIoU"][2] is None for h in r["history"]] == [False, True, True]
    assert r["reported_lr"] == 1e-3 and r["metrics"] == rows[1]["last"]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in r["train_loss"])
    swept = load_file(tmp_path / "sweep" / "final_weights.safetensors")
    # The dropped head kept finite weights: its steps stopped with its gradients.
    assert all(torch.isfinite(w).all() for n, w in swept.items() if n.startswith("heads.2."))
    for k in (0, 1):
        single = run_protocol("linear_probe", MODEL, dataset(soda),
                              {**TINY, "iters": 6, "eval_interval": 2, "lr": LRS[k],
                               "save_final_weights": True}, tmp_path / f"h{k}",
                              progress=False)  # fmt: skip
        for key in ("mIoU", "aAcc", "mAcc"):
            assert rows[k]["last"][key] == pytest.approx(single["last"][key], rel=1e-5, abs=1e-4)
        for name, w in load_file(tmp_path / f"h{k}" / "final_weights.safetensors").items():
            mine = swept[name.replace("heads.0.", f"heads.{k}.", 1)]
            torch.testing.assert_close(mine, w, rtol=1e-5, atol=1e-6, msg=f"head {k} {name}")
    table = "\n".join(lr_sweep_table({**r, "dataset": {"eval_split": "test"}}))
    assert "0.01      linear     diverged at iteration 3: dropped" in table


def test_the_reported_heads_divergence_stops_the_sweep(soda, tmp_path, poison):
    poison(1)  # the paper's lr: alone, its run would stop
    with pytest.raises(TrainingDiverged, match="iteration 3 of 6"):
        run_protocol("linear_probe", MODEL, dataset(soda), SWEEP, tmp_path, progress=False)


def test_best_on_eval_picks_among_the_heads_that_did_not_diverge(soda, tmp_path, poison):
    poison(0, from_step=1)
    r = run_protocol("linear_probe", MODEL, dataset(soda), {**SWEEP, "select": "best_on_eval"},
                     tmp_path, progress=False)
    assert r["lr_sweep"][0]["diverged_at"] == 1
    assert r["reported_lr"] in LRS[1:]


def test_a_dropped_head_stays_dropped_across_a_resume(soda, tmp_path, poison, monkeypatch):
    settings = {**SWEEP, "checkpoint_interval": 4, "keep_training_state": True}
    poison(2)
    straight = run_protocol("linear_probe", MODEL, dataset(soda), settings,
                            tmp_path / "straight", progress=False)
    poison(2)  # a fresh count of steps for the next run
    save_normally = die_after_next_checkpoint(monkeypatch)
    with pytest.raises(Killed):
        run_protocol("linear_probe", MODEL, dataset(soda), settings, tmp_path / "resumed",
                     progress=False)
    saved = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 4 and saved["loss_parts"] == {"diverged": {"2": 3}}
    save_normally()
    resumed = run_protocol("linear_probe", MODEL, dataset(soda), settings,
                           tmp_path / "resumed", progress=False)
    assert resumed["resumed_from"] == 4
    for key in ("metrics", "last", "best", "lr_sweep", "train_loss"):
        assert json.dumps(resumed[key]) == json.dumps(straight[key]), key
    timeless = [[(h["iteration"], h["mIoU"]) for h in r["history"]] for r in (resumed, straight)]
    assert timeless[0] == timeless[1]
