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

    from bench.adapter import load_backbone
    from bench.protocols.config import resolve_settings
    from bench.protocols.finetune import build_model, optimizer_groups
    from bench.protocols.optim import build_adamw

    s = resolve_settings(
        "fine_tune", "soda", "mae", "tiny",
        {"iters": STEPS, "warmup_iters": 1, "batch_size": BATCH, "crop_size": CROP,
         "log_interval": 1, "checkpoint_interval": 0, "eval_interval": 0},
    )
    set_seed(0)
    bb = load_backbone("mae", "tiny", img_size=CROP)
    model = build_model(bb, 21, s)
    opt = build_adamw(optimizer_groups(model, s), lr=s.lr, betas=s.betas)
    g = torch.Generator().manual_seed(0)
    batches = [
        {"img": torch.randn(BATCH, 3, CROP, CROP, generator=g),
         "label": torch.randint(0, 21, (BATCH, CROP, CROP), generator=g)}
        for _ in range(STEPS)
    ]
    return s, model, opt, batches


def main(mode: str) -> None:
    torch.set_num_threads(1)
    from bench.protocols.engine import build_scheduler

    s, model, opt, batches = setup()
    sched = build_scheduler(opt, s)
    if mode == "harness":
        from bench.protocols.checkpointing import Checkpointer
        from bench.protocols.engine import Trainer
        from bench.protocols.runtime import make_accelerator

        acc = make_accelerator("no")
        prepared, popt = acc.prepare(model, opt)
        workdir = tempfile.mkdtemp()
        trainer = Trainer(
            acc, prepared, popt, sched, model, lambda start: iter(batches),
            lambda: [{"mIoU": 0.0}], s, Checkpointer(workdir, acc, "bench"), progress=False,
        )
        before = current_rss()
        trainer.run()
    else:
        before = current_rss()
        model.train()
        for batch in batches:
            loss = model(batch["img"], batch["label"])["loss"]
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    print(json.dumps({"mode": mode, "growth": peak_rss() - before}))


if __name__ == "__main__":
    main(sys.argv[1])
