"""The memory bank: frozen patch features of the training split and their labels.

Each training image goes through the test pipeline (keep-ratio resize to ``scale``, no
augmentation; the label resized with it, nearest neighbour) and is read in the views
the evaluation uses: the sliding-window grid (``slide_crop``/``slide_stride``) or the
whole image. Every patch of every view with at least one labelled pixel is a candidate;
``memory_size`` caps how many each image keeps (see :func:`sample_patches`).

Several processes each read their strided shard of the images and the shards are
all-gathered; rows are then put in (image, patch) order, so the bank, and with it every
tie between neighbours, is the same on any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench.models.layers import pad_to_multiple
from bench.protocols.context import RunContext
from bench.protocols.inference import window_boxes
from plugins.knn_probe.retrieval import patch_label_counts, patch_labels, sample_patches

# Bank rows are ordered by image index, then by the patch's position among the image's
# labelled patches (views in grid order, patches row-major): key = image << 32 | position.
_POSITION_BITS = 32


@dataclass
class MemoryBank:
    """Unit-norm features (``M x D``) and class distributions (``M x K``), one row each."""

    features: torch.Tensor
    labels: torch.Tensor
    images: int  # training images read (all processes)
    views: int  # crops read (all processes)
    labelled_patches: int  # candidate patches before the memory_size cap (all processes)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def describe(self) -> dict[str, Any]:
        return {"patches": len(self), "labelled_patches": self.labelled_patches,
                "images": self.images, "views": self.views,
                "dim": int(self.features.shape[1]),
                "class_patches": [int(v) for v in (self.labels > 0).sum(0).tolist()]}


def view_boxes(h: int, w: int, settings: Any) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of the crops an image is read in: the inference mode's views."""
    if settings.inference == "slide":
        return window_boxes(h, w, settings.slide_crop, settings.slide_stride)
    return [(0, h, 0, w)]


def resolve_layer(layer: int, depth: int) -> int:
    """Zero-based block index of setting ``layer`` (negatives count from the end)."""
    j = layer + depth if layer < 0 else layer
    if not 0 <= j < depth:
        raise ValueError(f"setting 'layer' = {layer} is out of range for a backbone of "
                         f"depth {depth} (use 0..{depth - 1} or -{depth}..-1)")
    return j


@torch.no_grad()
def image_patches(
    backbone: Any,
    img: torch.Tensor,
    label: torch.Tensor,
    settings: Any,
    layer: int,
    num_classes: int,
    ignore_index: int,
    autocast: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (``P x D``, float32) and pixel counts per class (``P x K``) of the
    labelled patches of one image (``3 x H x W`` and ``H x W``), views in grid order."""
    p = backbone.patch_size
    h, w = img.shape[-2:]
    feats, counts = [], []
    boxes = view_boxes(h, w, settings)
    for start in range(0, len(boxes), settings.batch_size):
        chunk = boxes[start : start + settings.batch_size]
        # Every window of one image has the same size (edge windows shift inwards).
        x = torch.cat([pad_to_multiple(img[None, :, y1:y2, x1:x2], p)
                       for y1, y2, x1, x2 in chunk])
        with autocast():
            maps = backbone.features(x, [layer], norm=settings.feature_norm)[0]
        for (y1, y2, x1, x2), fmap in zip(chunk, maps, strict=True):
            lab = label[y1:y2, x1:x2]
            ph, pw = (-lab.shape[0]) % p, (-lab.shape[1]) % p
            lab = F.pad(lab, (0, pw, 0, ph), value=ignore_index)
            c = patch_label_counts(lab, p, num_classes, ignore_index)
            labelled = c.sum(1) > 0
            feats.append(fmap.flatten(1).T.float()[labelled])
            counts.append(c[labelled])
    return torch.cat(feats), torch.cat(counts)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` from every process, rank after rank (sizes may differ)."""
    if not _distributed():
        return t
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    most = int(max(int(s) for s in sizes))
    padded = t.new_zeros((most, *t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s)] for o, s in zip(out, sizes, strict=True)])


def _sum(values: list[int], device: torch.device) -> list[int]:
    t = torch.tensor(values, dtype=torch.int64, device=device)
    if _distributed():
        dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


@torch.no_grad()
def build_bank(ctx: RunContext, layer: int) -> MemoryBank:
    """This run's memory bank, on the accelerator's device, identical on every process."""
    from bench.data.loader import build_eval_loader
    from bench.data.transforms import Compose, Normalize, Resize

    s, info, acc = ctx.settings, ctx.info, ctx.accelerator
    device = acc.device
    backbone = ctx.backbone.to(device).eval()
    # The test pipeline, with the label resized too so that patches and labels align.
    tf = Compose([Resize(s.scale, resize_label=True), Normalize(info.mean, info.std)])
    dataset = ctx.build(ctx.train_split, tf)
    n = len(dataset)
    quota = s.memory_size // n
    if quota == 0:
        raise ValueError(
            f"setting 'memory_size' = {s.memory_size} is smaller than the {n} images of "
            f"split {ctx.train_split!r}: the bank keeps a whole number of patches per "
            f"image, so use memory_size >= {n}"
        )
    dtype = torch.float16 if s.bank_dtype == "float16" else torch.float32
    rank, world = acc.process_index, acc.num_processes
    loader = build_eval_loader(dataset, num_workers=s.num_workers, rank=rank, world_size=world)
    indices = range(rank, n, world)  # the loader's order
    feats, labels, keys = [], [], []
    views = labelled = 0
    bar = tqdm(zip(indices, loader, strict=True), total=len(indices), desc="memory bank",
               disable=not (ctx.progress and acc.is_main_process))
    for index, batch in bar:
        img, label = batch["img"][0].to(device), batch["label"][0].to(device)
        f, c = image_patches(backbone, img, label, s, layer, info.num_classes,
                             info.ignore_index, acc.autocast)
        views += len(view_boxes(*img.shape[-2:], s))
        labelled += int(f.shape[0])
        keep = sample_patches(c > 0, quota, ctx.seed, index).to(device)
        feats.append(F.normalize(f[keep], dim=1).to(dtype))
        labels.append(patch_labels(c[keep], s.patch_labels))
        keys.append((index << _POSITION_BITS) + keep)
    dim, k = backbone.embed_dim, info.num_classes
    feat = torch.cat(feats) if feats else torch.zeros(0, dim, dtype=dtype, device=device)
    lab = torch.cat(labels) if labels else torch.zeros(0, k, device=device)
    key = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.int64, device=device)
    # gloo gathers half tensors slowly or not at all: CPU runs gather float32.
    gather_dtype = torch.float32 if device.type == "cpu" else dtype
    feat = _gather_rows(feat.to(gather_dtype)).to(dtype)
    lab, key = _gather_rows(lab), _gather_rows(key)
    order = torch.argsort(key)
    images, views, labelled = _sum([len(indices), views, labelled], device)
    if feat.shape[0] < s.k:
        raise ValueError(
            f"the memory bank holds {feat.shape[0]} labelled patches, fewer than setting "
            f"'k' = {s.k}"
        )
    return MemoryBank(feat[order], lab[order], images, views, labelled)
