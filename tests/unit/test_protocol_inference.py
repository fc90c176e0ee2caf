"""Sliding-window inference: the mmseg window grid, and equality with whole-image
inference for a per-pixel model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.metrics import IoUAccumulator
from bench.protocols.inference import evaluate, slide_logits, window_boxes


@pytest.mark.parametrize(("h", "w"), [(512, 683), (512, 512), (300, 1400), (512, 2048)])
def test_windows_cover_the_image_with_the_papers_crop_and_stride(h, w):
    boxes = window_boxes(h, w, 512, 341)
    covered = torch.zeros(h, w, dtype=torch.bool)
    for y1, y2, x1, x2 in boxes:
        assert y2 - y1 == min(512, h) and x2 - x1 == min(512, w)
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    cols = max(w - 512 + 341 - 1, 0) // 341 + 1
    assert len(boxes) == cols * (max(h - 512 + 341 - 1, 0) // 341 + 1)


def test_slide_equals_whole_for_a_per_pixel_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1)
    img = torch.randn(1, 3, 70, 150)
    with torch.no_grad():
        torch.testing.assert_close(slide_logits(model, img, 64, 40), model(img))


def test_evaluate_splits_heads_and_resizes_to_the_label():
    # Two heads of 3 classes: head 0 always predicts class 1, head 1 class 2.
    def predict(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 6, *x.shape[-2:])
        out[:, 1] = 1
        out[:, 5] = 1
        return out

    label = torch.full((1, 40, 60), 1)
    label[..., :20] = 255
    batches = [{"img": torch.zeros(1, 3, 32, 48), "label": label}]
    accs = [IoUAccumulator(3), IoUAccumulator(3)]
    evaluate(predict, batches, accs, 3, torch.device("cpu"), "slide", 32, 16)
    assert accs[0].compute()["aAcc"] == 100.0
    assert accs[1].compute()["aAcc"] == 0.0
    assert accs[0].compute()["pixels"] == 40 * 40
