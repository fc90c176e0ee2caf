"""Layer-wise attention-pattern analysis: NMI per layer, its pattern, the NMI-HAD layer.

Patterns by mean NMI over images and heads: ``local`` (NMI >= local threshold: queries
attend their neighbourhood), ``global`` (NMI <= global threshold: all queries attend the
same keys) and ``hybrid`` in between. The paper names the patterns from the maps; the
default thresholds here (0.15 / 0.05) bracket its distillation target s = 0.09 and its
stable range 0.06-0.12, so the chosen teacher layer is always a hybrid one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.backbones.backbone import Backbone
from unip.images import ImageListDataset, resize_centre_crop
from unip.nmi import (
    GLOBAL_THRESHOLD,
    LOCAL_THRESHOLD,
    NMI_TARGET,
    LayerNMI,
    attention_nmi,
    summarise_layer,
)


def classify_pattern(
    nmi: float, local_threshold: float = LOCAL_THRESHOLD, global_threshold: float = GLOBAL_THRESHOLD
) -> str:
    """``local``, ``hybrid`` or ``global`` for a layer's mean NMI."""
    if nmi >= local_threshold:
        return "local"
    if nmi <= global_threshold:
        return "global"
    return "hybrid"


def check_thresholds(local_threshold: float, global_threshold: float) -> None:
    if not 0.0 <= global_threshold < local_threshold <= 1.0:
        raise ValueError(
            f"thresholds must satisfy 0 <= global ({global_threshold}) < local "
            f"({local_threshold}) <= 1"
        )


def closest_layer(layers: Sequence[LayerNMI], target: float = NMI_TARGET) -> int:
    """1-based id of the layer whose mean NMI is closest to ``target`` (earliest on ties)."""
    if not layers:
        raise ValueError("no layers to choose from")
    return min(layers, key=lambda s: (abs(s.mean - target), s.layer)).layer


@dataclass
class AttentionAnalysis:
    """NMI of every layer of one backbone on a set of images."""

    layers: list[LayerNMI]
    heads: list[int]
    patterns: list[str]
    target: float
    teacher_layer: int  # 1-based
    local_threshold: float
    global_threshold: float
    num_images: int
    img_size: int
    normalisation: str
    backbone: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "teacher_layer": self.teacher_layer,
            "teacher_layer_heads": self.heads[self.teacher_layer - 1],
            "local_threshold": self.local_threshold,
            "global_threshold": self.global_threshold,
            "num_images": self.num_images,
            "img_size": self.img_size,
            "normalisation": self.normalisation,
            "nmi_definition": "Park et al. 2023: prefix tokens dropped, rows renormalised, "
            "uniform queries; per image and head, then averaged",
            "layers": [
                {**s.to_dict(), "heads": h, "pattern": p}
                for s, h, p in zip(self.layers, self.heads, self.patterns, strict=True)
            ],
            "backbone": self.backbone,
        }


def image_loader(
    paths: Sequence[Path],
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 8,
    num_workers: int = 0,
) -> DataLoader:
    """Batches of the images, resized and centre-cropped to ``img_size``, normalised."""
    ds = ImageListDataset(paths, resize_centre_crop(img_size), mean=mean, std=std)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)


@torch.inference_mode()
def layer_nmi_values(
    backbone: Backbone, batches: DataLoader, layers: Sequence[int] | None = None
) -> dict[int, torch.Tensor]:
    """``images x heads`` NMI of each block (1-based ids; all blocks by default)."""
    ids = list(layers) if layers is not None else list(range(1, backbone.depth + 1))
    device = next(backbone.parameters()).device
    backbone.eval()
    parts: dict[int, list[torch.Tensor]] = {i: [] for i in ids}
    for x in batches:
        maps = backbone.attention(x.to(device), [i - 1 for i in ids])
        for i, a in zip(ids, maps, strict=True):
            parts[i].append(attention_nmi(a, backbone.num_prefix_tokens).cpu())
    if not any(parts.values()):
        raise ValueError("no images to analyse")
    return {i: torch.cat(v) for i, v in parts.items()}


def analyse_attention(
    backbone: Backbone,
    batches: DataLoader,
    img_size: int,
    normalisation: str,
    target: float = NMI_TARGET,
    local_threshold: float = LOCAL_THRESHOLD,
    global_threshold: float = GLOBAL_THRESHOLD,
) -> AttentionAnalysis:
    """NMI summary, pattern and heads of every layer, and the layer closest to ``target``."""
    check_thresholds(local_threshold, global_threshold)
    values = layer_nmi_values(backbone, batches)
    stats = [summarise_layer(i, v) for i, v in sorted(values.items())]
    return AttentionAnalysis(
        layers=stats,
        heads=backbone.num_heads,
        patterns=[classify_pattern(s.mean, local_threshold, global_threshold) for s in stats],
        target=target,
        teacher_layer=closest_layer(stats, target),
        local_threshold=local_threshold,
        global_threshold=global_threshold,
        num_images=stats[0].num_images,
        img_size=img_size,
        normalisation=normalisation,
        backbone=backbone.describe(),
    )


def analysis_table(analysis: AttentionAnalysis) -> str:
    """The per-layer table as text (tabulate), the NMI-HAD layer marked."""
    from tabulate import tabulate

    rows = [
        [
            s.layer,
            h,
            f"{s.mean:.4f}",
            f"{s.std:.4f}",
            f"{s.head_std:.4f}",
            f"{s.image_std:.4f}",
            f"{s.min:.4f}-{s.max:.4f}",
            p,
            "<- closest to target" if s.layer == analysis.teacher_layer else "",
        ]
        for s, h, p in zip(analysis.layers, analysis.heads, analysis.patterns, strict=True)
    ]
    headers = ["layer", "heads", "NMI", "std", "head std", "image std", "range", "pattern", ""]
    # Keep the 4-decimal strings as written (tabulate would print 0.0010 as 0.001).
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def default_query_tokens(grid: tuple[int, int]) -> list[int]:
    """Patch indices (row-major) at a quarter, the middle and three quarters of the grid."""
    h, w = grid
    points = [(h // 4, w // 4), (h // 2, w // 2), ((3 * h) // 4, (3 * w) // 4)]
    return list(dict.fromkeys(r * w + c for r, c in points))


def check_map_request(
    depth: int, grid: tuple[int, int], layers: Sequence[int], queries: Sequence[int]
) -> None:
    """Layers within 1..depth and query patches within the grid, or a ValueError."""
    for i in layers:
        if not 1 <= i <= depth:
            raise ValueError(f"layer {i} is outside 1..{depth}")
    for q in queries:
        if not 0 <= q < grid[0] * grid[1]:
            raise ValueError(f"query token {q} is outside the {grid[0]}x{grid[1]} patch grid")


@torch.inference_mode()
def query_attention_maps(
    backbone: Backbone, image: torch.Tensor, layers: Sequence[int], queries: Sequence[int]
) -> torch.Tensor:
    """``layers x queries x gh x gw`` attention of patch queries over patch keys.

    ``image`` is one normalised ``3 x H x W`` tensor; layers are 1-based, queries are
    row-major patch indices. Heads are averaged; prefix keys are dropped and the rows
    renormalised, as for the NMI.
    """
    p = backbone.patch_size
    grid = (image.shape[-2] // p, image.shape[-1] // p)
    check_map_request(backbone.depth, grid, layers, queries)
    device = next(backbone.parameters()).device
    backbone.eval()
    maps = backbone.attention(image[None].to(device), [i - 1 for i in layers])
    k = backbone.num_prefix_tokens
    out = []
    for a in maps:
        a = a[0, :, k:, k:].float().mean(0)[list(queries)]
        a = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        out.append(a.reshape(len(queries), *grid).cpu())
    return torch.stack(out)
