"""Subprocess side of the protocol memory benchmark: one fine-tuning loop, peak RSS growth.

``python protocol_bench_job.py {harness,bare}`` builds the same ViT-T + UPerNet segmentor
and batches, then runs STEPS training steps either through the harness (accelerate,
Trainer: divergence check, schedule, logging) or a bare PyTorch loop, and prints one JSON
line with the growth of the process's peak resident memory over the steps.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
from pathlib import Path

import torch

STEPS = 3
BATCH = 4
CROP = 256


def current_rss() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def setup():
    from accelerate.utils import set_seed

    from bench.backbones.adapter import load_backbone
    from bench.protocols.config import resolve_settings
    from bench.protocols.finetune import build_model, optimizer_groups
    from bench.protocols.optim import build_adamw

    s = resolve_settings(
        "fine_tune",
        "soda",
        "mae",
        "tiny",
        {
            "iters": STEPS,
            "warmup_iters": 1,
            "batch_size": BATCH,
            "crop_size": CROP,
            "log_interval": 1,
            "checkpoint_interval": 0,
            "eval_interval": 0,
        },
    )
    set_seed(0)
    bb = load_backbone("mae", "tiny", img_size=CROP)
    model = build_model(bb, 21, s)
    opt = build_adamw(optimizer_groups(model, s), lr=s.lr, betas=s.betas)
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "img": torch.randn(BATCH, 3, CROP, CROP, generator=g),
            "label": torch.randint(0, 21, (BATCH, CROP, CROP), generator=g),
        }
        for _ in range(STEPS)
    ]
    return s, model, opt, batches


def harness_trainer(s, model, opt, batches: list[dict], progress: bool = False):
    """The harness around ``model``: accelerate-prepared, Trainer with a no-op evaluation
    (the benchmarks time training steps) and a checkpointer that never fires."""
    from bench.protocols.checkpointing import Checkpointer
    from bench.protocols.engine import Trainer, build_scheduler
    from bench.protocols.runtime import make_accelerator

    sched = build_scheduler(opt, s)
    acc = make_accelerator("no")
    prepared, popt = acc.prepare(model, opt)
    return Trainer(
        acc,
        prepared,
        popt,
        sched,
        model,
        lambda start: iter(batches),
        lambda: [{"mIoU": 0.0}],
        s,
        Checkpointer(tempfile.mkdtemp(), acc, "bench"),
        progress=progress,
    )


def bare_loop(s, model, opt, batches: list[dict]) -> None:
    """The same steps in plain PyTorch: forward, backward, AdamW, lr schedule."""
    from bench.protocols.engine import build_scheduler

    sched = build_scheduler(opt, s)
    model.train()
    for batch in batches:
        loss = model(batch["img"], batch["label"])["loss"]
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


def main(mode: str) -> None:
    torch.set_num_threads(1)
    s, model, opt, batches = setup()
    if mode == "harness":
        trainer = harness_trainer(s, model, opt, batches)
        before = current_rss()
        trainer.run()
    else:
        before = current_rss()
        bare_loop(s, model, opt, batches)
    print(json.dumps({"mode": mode, "growth": peak_rss() - before}))


if __name__ == "__main__":
    main(sys.argv[1])
