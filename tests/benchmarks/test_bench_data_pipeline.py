"""The training data pipeline feeds a ViT-T fine-tuning step at 512 at least twice as fast
as the step consumes images.

Pipeline: synthetic SODA-like 640 x 480 thermal images through the protocol's transforms
(RandomResize (2048, 512) x 0.5-2.0, RandomCrop 512 with cat_max_ratio, flip, photometric
distortion, normalise, pad) and a DataLoader with 2 workers. Consumer: timm's ViT-T
(embed 192, depth 12, heads 3, img_size 512, random init) with a 1x1-conv head, one
forward + backward + AdamW step at batch 2. Both are timed in the same run; the ratio of
images/s is printed and asserted. ``make bench`` runs it with ``--benchmark-enable``.

The consumer runs on the CPU, as specified; a GPU step consumes far more images per
second, so size ``num_workers`` from the per-worker rate printed here.
"""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from bench.data import build_dataset, get_dataset_info
from bench.data.loader import build_train_loader
from bench.data.synth import synthesize
from bench.data.transforms import train_transform

MIN_RATIO = 2.0
BATCH = 2
CROP = 512


class TinySegmenter(nn.Module):
    """ViT-T patch features -> 1x1 conv to classes -> logits at input resolution."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.vit = VisionTransformer(
            img_size=CROP, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=0
        )
        self.head = nn.Conv2d(192, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens :]
        b, n, d = tokens.shape
        g = int(n**0.5)
        logits = self.head(tokens.transpose(1, 2).reshape(b, d, g, g))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def soda_640(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline") / "soda"
    synthesize("soda", root, train=24, test=1, size=(480, 640), seed=0)
    return root


def pipeline_rate(dataset, batches: int) -> float:
    """Images/s delivered by a 2-worker loader, after the workers have started."""
    it = iter(build_train_loader(dataset, BATCH, seed=0, num_workers=2))
    for _ in islice(it, 2):  # worker start-up and first decode are not steady state
        pass
    t = time.perf_counter()
    for batch in islice(it, batches):
        assert batch["img"].shape == (BATCH, 3, CROP, CROP)
    rate = batches * BATCH / (time.perf_counter() - t)
    del it
    return rate


def model_rate(model: nn.Module, opt: torch.optim.Optimizer, batch: dict, steps: int) -> float:
    """Images/s consumed by forward + backward + AdamW steps."""

    def step() -> None:
        loss = F.cross_entropy(model(batch["img"]), batch["label"], ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # allocator and autograd warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - t)


def test_pipeline_outpaces_vit_t_finetuning(benchmark, soda_640: Path, timing_target) -> None:
    info = get_dataset_info("soda")
    dataset = build_dataset("soda", soda_640, "train", transform=train_transform(info))
    batch = next(iter(build_train_loader(dataset, BATCH, seed=1)))
    model = TinySegmenter(info.num_classes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    pipe_ips: list[float] = []
    model_ips: list[float] = []

    def time_model() -> None:  # pedantic's setup: untimed by the benchmark, timed here
        model_ips.append(model_rate(model, opt, batch, steps=2))

    def time_pipeline() -> None:
        pipe_ips.append(pipeline_rate(dataset, batches=12))

    rounds = 2 if benchmark.enabled else 1
    benchmark.pedantic(time_pipeline, setup=time_model, rounds=rounds, warmup_rounds=0)

    ratio = max(pipe_ips) / max(model_ips)
    benchmark.extra_info.update(
        pipeline_images_per_s=max(pipe_ips), vit_t_images_per_s=max(model_ips), ratio=ratio
    )
    print(
        f"\ndata pipeline {max(pipe_ips):.1f} img/s (640x480 -> 512 crops, 2 workers, "
        f"~{max(pipe_ips) / 2:.0f} per worker); "
        f"ViT-T fine-tuning step at 512, batch {BATCH}: {max(model_ips):.2f} img/s; "
        f"ratio {ratio:.1f} (needs >= {MIN_RATIO})"
    )
    timing_target(ratio >= MIN_RATIO, f"pipeline/step ratio {ratio:.1f} < {MIN_RATIO}")
