"""``unipbench analyze attention``'s work: backbone + image folder -> table, JSON and PNGs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.backbones.adapter import load_backbone
from bench.backbones.backbone import INFRARED_MEAN, INFRARED_STD, Backbone
from unip.analysis import (
    AttentionAnalysis,
    analyse_attention,
    check_map_request,
    default_query_tokens,
    image_loader,
    query_attention_maps,
)
from unip.figures import plot_nmi, plot_query_maps
from unip.images import find_images, spread_sample
from unip.nmi import GLOBAL_THRESHOLD, LOCAL_THRESHOLD, NMI_TARGET


@dataclass
class AnalysisOutputs:
    analysis: AttentionAnalysis
    json_path: Path
    plot_path: Path
    map_paths: list[Path] = field(default_factory=list)


def normalisation_stats(backbone: Backbone, normalisation: str) -> tuple[tuple, tuple]:
    """(mean, std): the backbone's own (``backbone``) or the infrared statistics."""
    if normalisation == "backbone":
        return backbone.mean, backbone.std
    if normalisation == "infrared":
        return INFRARED_MEAN, INFRARED_STD
    raise ValueError(f"normalisation must be 'backbone' or 'infrared', got {normalisation!r}")


def run_attention_analysis(
    adapter: str,
    size: str,
    data: str | Path,
    out: str | Path,
    checkpoint: str | None = None,
    num_images: int | None = 64,
    img_size: int = 224,
    target: float = NMI_TARGET,
    local_threshold: float = LOCAL_THRESHOLD,
    global_threshold: float = GLOBAL_THRESHOLD,
    normalisation: str = "backbone",
    maps_layers: Sequence[int] | None = None,
    query_tokens: Sequence[int] | None = None,
    maps_images: int = 1,
    batch_size: int = 8,
    num_workers: int = 0,
    **backbone_options,
) -> AnalysisOutputs:
    """Analyse ``num_images`` images of ``data`` (spread over the sorted folder) and write
    ``nmi.json``, ``nmi.png`` and ``attention_maps_<k>_<stem>.png`` into ``out``.

    ``maps_layers`` (1-based) default to the first, the target-closest and the last layer.
    """
    backbone = load_backbone(
        adapter, size, checkpoint=checkpoint, img_size=img_size, **backbone_options
    )
    grid = (img_size // backbone.patch_size, img_size // backbone.patch_size)
    check_map_request(backbone.depth, grid, maps_layers or [], query_tokens or [])
    mean, std = normalisation_stats(backbone, normalisation)
    paths = spread_sample(find_images(data), num_images)
    loader = image_loader(paths, img_size, mean, std, batch_size, num_workers)
    analysis = analyse_attention(
        backbone, loader, img_size, normalisation, target, local_threshold, global_threshold
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        **analysis.to_dict(),
        "images": {"folder": str(data), "files": [str(p) for p in paths]},
    }
    json_path = out / "nmi.json"
    json_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    name = f"{adapter}-{size}"
    plot_path = plot_nmi(analysis, out / "nmi.png", title=f"{name}: attention NMI per layer")

    layers = (
        list(maps_layers) if maps_layers else sorted({1, analysis.teacher_layer, backbone.depth})
    )
    queries = list(query_tokens) if query_tokens else default_query_tokens(grid)
    map_paths = []
    dataset = loader.dataset
    for k in range(min(maps_images, len(dataset))):
        image = dataset[k]
        maps = query_attention_maps(backbone, image, layers, queries)
        target_png = out / f"attention_maps_{k}_{paths[k].stem}.png"
        map_paths.append(
            plot_query_maps(
                image,
                maps,
                layers,
                queries,
                mean,
                std,
                target_png,
                title=f"{name}: {paths[k].name}",
            )
        )
    return AnalysisOutputs(analysis, json_path, plot_path, map_paths)
