"""A run's FLOPs and parameters describe the checkpoint's model, not the size's default."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.backbones.adapter import load_backbone
from bench.backbones.flops import protocol_flops
from bench.protocols.config import resolve_settings


def test_shallow_unip_student_is_counted_at_its_own_depth(tmp_path: Path) -> None:
    student = load_backbone("unip", "T", img_size=32, depth=2, last_heads=6)
    path = tmp_path / "student.pth"
    torch.save({"model": student.vit.state_dict(), "unip": {"last_heads": 6, "depth": 2}}, path)
    settings = resolve_settings("linear_probe", "soda", "unip", "tiny",
                                {"crop_size": 32, "layers": [0, 1, 1, 1]})

    from_file = protocol_flops("linear_probe", settings, "unip", "T", 21, checkpoint=str(path))
    full = protocol_flops("linear_probe", settings, "unip", "T", 21, {"depth": 12})

    n_student = sum(p.numel() for p in student.vit.parameters()) / 1e6
    assert abs(from_file.backbone_params_m - n_student) < 1e-3
    assert from_file.backbone_params_m < 0.5 * full.backbone_params_m
    assert from_file.backbone_gmacs < full.backbone_gmacs
