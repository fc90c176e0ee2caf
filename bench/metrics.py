"""Segmentation metrics with mmseg semantics: mIoU, mAcc, aAcc over a whole split.

A class absent from predictions and ground truth is NaN and left out of the mean; one
predicted but absent from the ground truth scores IoU 0. Ignore pixels count nowhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist


class IoUAccumulator:
    """Accumulates a label x prediction confusion matrix (int64, via bincount)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes <= 0:
            raise ValueError("num_classes must be positive")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion: torch.Tensor | None = None  # created on the first update's device
        self._synced = False

    def reset(self) -> None:
        self.confusion = None
        self._synced = False

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add one batch of integer maps of the same shape (any device)."""
        if self._synced:
            raise RuntimeError("this accumulator was already summed over ranks; reset() first")
        if pred.shape != label.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape"
            )
        if pred.is_floating_point() or label.is_floating_point():
            raise ValueError("pred and label must be integer class maps (argmax the logits)")
        n = self.num_classes
        keep = label != self.ignore_index
        p = pred[keep].long()
        t = label[keep].long()
        if t.numel():
            if int(t.min()) < 0 or int(t.max()) >= n:
                raise ValueError(
                    f"label values {int(t.min())}..{int(t.max())} fall outside 0..{n - 1} "
                    f"and are not the ignore value {self.ignore_index}"
                )
            if int(p.min()) < 0 or int(p.max()) >= n:
                raise ValueError(
                    f"predicted classes {int(p.min())}..{int(p.max())} fall outside 0..{n - 1}"
                )
        counts = torch.bincount(t * n + p, minlength=n * n).reshape(n, n)
        if self.confusion is None:
            self.confusion = torch.zeros(n, n, dtype=torch.int64, device=counts.device)
        self.confusion += counts.to(self.confusion.device)

    def sync(self) -> None:
        """Sum the areas over all ranks (no-op without an initialised process group)."""
        if self._synced or not (dist.is_available() and dist.is_initialized()):
            return
        if self.confusion is None:
            # A rank that saw no data still takes part in the collective.
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            n = self.num_classes
            self.confusion = torch.zeros(n, n, dtype=torch.int64, device=device)
        dist.all_reduce(self.confusion, op=dist.ReduceOp.SUM)
        self._synced = True

    all_reduce = sync

    def areas(self) -> dict[str, torch.Tensor]:
        """Per-class intersection, union, predicted and label areas (float64, CPU)."""
        n = self.num_classes
        cm = (
            self.confusion.double().cpu()
            if self.confusion is not None
            else torch.zeros(n, n, dtype=torch.float64)
        )
        inter = cm.diagonal().clone()
        area_label = cm.sum(1)
        area_pred = cm.sum(0)
        return {
            "intersect": inter,
            "union": area_pred + area_label - inter,
            "pred": area_pred,
            "label": area_label,
        }

    def compute(self) -> dict:
        """``mIoU``, ``mAcc``, ``aAcc`` (percent) and per-class lists (NaN where undefined)."""
        a = self.areas()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(a["union"] > 0, a["intersect"] / a["union"].clamp(min=1), nan)
        acc = torch.where(a["label"] > 0, a["intersect"] / a["label"].clamp(min=1), nan)
        total = float(a["label"].sum())
        return {
            "mIoU": _nanmean(iou) * 100,
            "mAcc": _nanmean(acc) * 100,
            "aAcc": float(a["intersect"].sum()) / total * 100 if total else float("nan"),
            "per_class_iou": [float(v) * 100 for v in iou],
            "per_class_acc": [float(v) * 100 for v in acc],
            "pixels": int(total),
        }


def _nanmean(x: torch.Tensor) -> float:
    ok = ~torch.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


def format_per_class_table(result: dict, class_names: Sequence[str]) -> str:
    """A per-class IoU / Acc table followed by the summary line, as mmseg prints it."""
    width = max([len("class"), *(len(c) for c in class_names)])
    rows = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]

    def cell(v: float | None) -> str:  # None: NaN after a round trip through JSON
        return f"{'nan':>6}" if v is None or math.isnan(v) else f"{v:6.2f}"

    for name, iou, acc in zip(
        class_names, result["per_class_iou"], result["per_class_acc"], strict=True
    ):
        rows.append(f"{name:<{width}}  {cell(iou)}  {cell(acc)}")
    rows.append("-" * (width + 16))
    rows.append(f"mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}  aAcc {result['aAcc']:.2f}")
    return "\n".join(rows)
