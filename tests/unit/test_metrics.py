"""IoUAccumulator against an independent numpy confusion matrix, mmseg edge cases, gloo sums."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.metrics import IoUAccumulator, format_per_class_table


def reference(preds: list[np.ndarray], labels: list[np.ndarray], n: int, ignore: int) -> dict:
    """Textbook per-class IoU/accuracy from a confusion matrix built with np.add.at."""
    cm = np.zeros((n, n), np.int64)
    for p, t in zip(preds, labels, strict=True):
        keep = t != ignore
        np.add.at(cm, (t[keep], p[keep]), 1)
    ious, accs = [], []
    for c in range(n):
        tp, gt, pr = cm[c, c], cm[c].sum(), cm[:, c].sum()
        union = gt + pr - tp
        ious.append(tp / union if union else math.nan)
        accs.append(tp / gt if gt else math.nan)
    return {
        "mIoU": np.nanmean(ious) * 100,
        "mAcc": np.nanmean(accs) * 100,
        "aAcc": np.trace(cm) / cm.sum() * 100,
        "iou": np.array(ious) * 100,
        "acc": np.array(accs) * 100,
    }


def random_maps(rng: np.random.Generator, n: int, shape=(2, 17, 23)):
    label = rng.integers(0, n, shape)
    label[label == n - 1] = 2  # class n-1 never in the ground truth...
    label[rng.random(shape) < 0.2] = 255  # ...and a fifth of the pixels ignored
    pred = rng.integers(0, n, shape)
    pred[pred == 0] = 1  # class 0 never predicted
    pred[pred == n - 2] = 1  # class n-2: in neither once we drop it from the labels too
    label[label == n - 2] = 1
    return pred, label


def test_matches_an_independent_confusion_matrix() -> None:
    rng = np.random.default_rng(0)
    n = 7
    acc = IoUAccumulator(n)
    preds, labels = [], []
    for _ in range(5):
        p, t = random_maps(rng, n)
        preds.append(p.ravel())
        labels.append(t.ravel())
        acc.update(torch.from_numpy(p), torch.from_numpy(t))
    got, ref = acc.compute(), reference(preds, labels, n, 255)
    for key in ("mIoU", "mAcc", "aAcc"):
        assert got[key] == pytest.approx(ref[key], abs=1e-9)
    np.testing.assert_allclose(got["per_class_iou"], ref["iou"], equal_nan=True)
    np.testing.assert_allclose(got["per_class_acc"], ref["acc"], equal_nan=True)
    # Class n-2 is absent from both: NaN, left out of the mean. Class n-1 is predicted
    # but never in the ground truth: IoU 0 (counted), accuracy NaN.
    assert math.isnan(got["per_class_iou"][n - 2])
    assert got["per_class_iou"][n - 1] == 0.0 and math.isnan(got["per_class_acc"][n - 1])
    assert got["per_class_iou"][0] == 0.0  # in the ground truth, never predicted


def test_split_accumulation_equals_one_update() -> None:
    rng = np.random.default_rng(1)
    p, t = random_maps(rng, 5, (4, 9, 9))
    whole, parts = IoUAccumulator(5), IoUAccumulator(5)
    whole.update(torch.from_numpy(p), torch.from_numpy(t))
    for i in range(4):
        parts.update(torch.from_numpy(p[i]), torch.from_numpy(t[i]))
    assert torch.equal(whole.confusion, parts.confusion)


def test_predictions_on_ignored_pixels_do_not_count() -> None:
    label = torch.tensor([[0, 1, 255, 255]])
    a, b = IoUAccumulator(2), IoUAccumulator(2)
    a.update(torch.tensor([[0, 1, 0, 0]]), label)
    b.update(torch.tensor([[0, 1, 1, 1]]), label)
    assert a.compute() == b.compute()
    assert a.compute()["mIoU"] == 100.0 and a.compute()["pixels"] == 2


def test_perfect_and_empty() -> None:
    acc = IoUAccumulator(3)
    assert math.isnan(acc.compute()["mIoU"])
    t = torch.tensor([0, 1, 1, 2])
    acc.update(t.clone(), t)
    r = acc.compute()
    assert (r["mIoU"], r["mAcc"], r["aAcc"]) == (100.0, 100.0, 100.0)
    acc.reset()
    assert acc.confusion is None


def test_bad_inputs_are_explained() -> None:
    acc = IoUAccumulator(3)
    with pytest.raises(ValueError, match="differ in shape"):
        acc.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class maps"):
        acc.update(torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="label values 0..7 fall outside 0..2"):
        acc.update(torch.zeros(2, dtype=torch.long), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="predicted classes 0..3 fall outside 0..2"):
        acc.update(torch.tensor([0, 3]), torch.tensor([0, 1]))


def test_table_lists_every_class_and_the_summary() -> None:
    acc = IoUAccumulator(3)
    acc.update(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))
    table = format_per_class_table(acc.compute(), ["road", "person", "sky"])
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "Acc"]
    assert lines[2].split() == ["road", "50.00", "100.00"]
    assert lines[4].split() == ["sky", "nan", "nan"]
    assert lines[-1] == "mIoU 50.00  mAcc 75.00  aAcc 66.67"


def test_sync_without_a_process_group_is_a_no_op() -> None:
    acc = IoUAccumulator(2)
    acc.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    acc.sync()
    assert int(acc.confusion.sum()) == 2


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    acc = IoUAccumulator(4)
    if rank == 0:  # rank 1 sees no data at all, as a short last shard can
        acc.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 1, 255]))
        acc.update(torch.tensor([3, 3]), torch.tensor([3, 2]))
    acc.sync()
    acc.sync()  # a second call must not add the counts twice
    torch.save(acc.confusion, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_all_reduce_sums_over_gloo_ranks(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    expected = IoUAccumulator(4)
    expected.update(torch.tensor([0, 1, 2, 3, 3, 3]), torch.tensor([0, 1, 1, 255, 3, 2]))
    for r in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"rank{r}.pt"), expected.confusion)
