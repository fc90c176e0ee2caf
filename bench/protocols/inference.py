"""Inference for evaluation: sliding-window or whole-image logits, then IoU over a split.

A predictor is any ``f(images B x 3 x h x w) -> logits B x K x h x w``; K may hold
several heads' classes back to back (probes), and each head gets its own metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from bench.models.layers import resize

Predictor = Callable[[torch.Tensor], torch.Tensor]

# Crops of one image run through the model in chunks of this many: bounds memory on big
# images (a 2048-wide image gives 6 windows at 512/341) without one call per window.
SLIDE_CHUNK = 8


def window_boxes(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide_inference grid: (y1, y2, x1, x2), last windows aligned to the edges."""
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            boxes.append((y1, y2, x1, x2))
    return boxes


@torch.no_grad()
def slide_logits(predict: Predictor, img: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Average of the window logits over ``img`` (1 x 3 x H x W) -> 1 x K x H x W."""
    h, w = img.shape[-2:]
    boxes = window_boxes(h, w, crop, stride)
    out: torch.Tensor | None = None
    count = torch.zeros(1, 1, h, w, device=img.device)
    for start in range(0, len(boxes), SLIDE_CHUNK):
        chunk = boxes[start : start + SLIDE_CHUNK]
        # Every window of one image has the same size (edge windows are shifted inwards).
        crops = torch.cat([img[..., y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        logits = predict(crops).float()
        if out is None:
            out = torch.zeros(1, logits.shape[1], h, w, device=img.device)
        for (y1, y2, x1, x2), lg in zip(chunk, logits, strict=True):
            out[0, :, y1:y2, x1:x2] += lg
            count[..., y1:y2, x1:x2] += 1
    assert out is not None
    return out / count


@torch.no_grad()
def predict_image(
    predict: Predictor, img: torch.Tensor, mode: str, crop: int, stride: int
) -> torch.Tensor:
    """Logits 1 x K x H x W at the (test-resized) image's resolution."""
    if mode == "slide":
        return slide_logits(predict, img, crop, stride)
    if mode == "whole":
        return predict(img).float()
    raise ValueError(f"unknown inference mode {mode!r}; use 'slide' or 'whole'")


@torch.no_grad()
def evaluate(
    predict: Predictor,
    batches: Iterable[dict],
    accumulators: list,
    num_classes: int,
    device: torch.device,
    mode: str = "slide",
    crop: int = 512,
    stride: int = 341,
) -> None:
    """Feed every image's per-head predictions into ``accumulators`` (one per head).

    Logits are resized to the label's resolution (the test resize leaves labels at
    their original size, as mmseg evaluates), one head at a time to bound memory.
    """
    heads = len(accumulators)
    for batch in batches:
        img = batch["img"].to(device)
        label = batch["label"].to(device)
        for i in range(img.shape[0]):
            logits = predict_image(predict, img[i : i + 1], mode, crop, stride)
            if logits.shape[1] != heads * num_classes:
                raise ValueError(
                    f"predictor gave {logits.shape[1]} channels, expected {heads} head(s) x "
                    f"{num_classes} classes"
                )
            for k, acc in enumerate(accumulators):
                head_logits = logits[:, k * num_classes : (k + 1) * num_classes]
                pred = resize(head_logits, label.shape[-2:]).argmax(1)[0]
                acc.update(pred, label[i])
