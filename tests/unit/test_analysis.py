"""Attention analysis: patterns, the NMI-HAD layer, and ``unipbench analyze attention``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.backbones.adapter import load_backbone
from bench.cli import main
from unip.analysis import (
    check_thresholds,
    classify_pattern,
    closest_layer,
    default_query_tokens,
    query_attention_maps,
)
from unip.nmi import summarise_layer


def write_images(folder: Path, count: int, size: int = 48) -> list[Path]:
    """Blobs on noise, grey PNGs and one RGB JPEG, in nested folders."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        y, x = np.mgrid[0:size, 0:size]
        cy, cx = rng.integers(8, size - 8, 2)
        img = 50 + 160 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 60.0)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        sub = folder / f"part{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        if i == 0:
            path = sub / f"img{i}.jpg"
            Image.fromarray(np.stack([img, img // 2, img], -1), "RGB").save(path)
        else:
            path = sub / f"img{i}.png"
            Image.fromarray(img, "L").save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_patterns_follow_the_thresholds() -> None:
    assert classify_pattern(0.4) == "local"
    assert classify_pattern(0.15) == "local"
    assert classify_pattern(0.09) == "hybrid"
    assert classify_pattern(0.05) == "global"
    assert classify_pattern(0.01) == "global"
    assert classify_pattern(0.09, local_threshold=0.08, global_threshold=0.02) == "local"
    with pytest.raises(ValueError, match="thresholds"):
        check_thresholds(0.05, 0.1)


def test_closest_layer_to_target() -> None:
    values = [0.5, 0.25, 0.125, 0.0]  # exact in binary, so the tie below is a real one
    layers = [summarise_layer(i + 1, torch.tensor([[v]])) for i, v in enumerate(values)]
    assert closest_layer(layers, 0.09) == 3
    assert closest_layer(layers, 0.375) == 1  # tie between 0.5 and 0.25: the earlier layer
    assert closest_layer(layers, 0.0) == 4


def test_query_maps_are_distributions_on_the_grid() -> None:
    bb = load_backbone("deit", "T", img_size=64, depth=2)
    image = torch.randn(3, 64, 64)
    queries = default_query_tokens((4, 4))
    assert queries == [5, 10, 15]
    maps = query_attention_maps(bb, image, [1, 2], queries)
    assert maps.shape == (2, 3, 4, 4)
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(2, 3))
    with pytest.raises(ValueError, match="outside the 4x4 patch grid"):
        query_attention_maps(bb, image, [1], [16])
    with pytest.raises(ValueError, match="layer 3 is outside"):
        query_attention_maps(bb, image, [3], [0])


def test_cli_writes_table_json_and_pngs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_images(tmp_path / "imgs", 5)
    out = tmp_path / "out"
    rc = main(
        [
            "analyze", "attention", "--adapter", "mae", "--size", "S", "--depth", "3",
            "--data", str(tmp_path / "imgs"), "--num-images", "4", "--img-size", "48",
            "--out", str(out), "--maps-layers", "1", "3", "--query-tokens", "0", "4",
            "--maps-images", "2", "--infrared-norm",
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "layer" in printed and "pattern" in printed and "closest to target" in printed
    record = json.loads((out / "nmi.json").read_text())
    assert [entry["layer"] for entry in record["layers"]] == [1, 2, 3]
    assert record["num_images"] == 4 and len(record["images"]["files"]) == 4
    assert record["normalisation"] == "infrared"
    means = [entry["mean"] for entry in record["layers"]]
    assert record["teacher_layer"] == 1 + int(np.argmin([abs(m - 0.09) for m in means]))
    for entry in record["layers"]:
        assert entry["pattern"] == classify_pattern(entry["mean"])
        assert entry["heads"] == 6 and len(entry["per_head"]) == 6
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "nmi.png" in pngs
    assert len([p for p in pngs if p.startswith("attention_maps_")]) == 2
    for name in pngs:
        with Image.open(out / name) as img:
            assert img.size[0] > 100 and img.size[1] > 100


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    rc = main(
        ["analyze", "attention", "--adapter", "mae", "--size", "S", "--depth", "1",
         "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert rc == 2
    assert "no images" in capsys.readouterr().err
    write_images(tmp_path / "imgs", 2)
    rc = main(
        ["analyze", "attention", "--adapter", "mae", "--size", "S", "--depth", "2",
         "--data", str(tmp_path / "imgs"), "--img-size", "32", "--maps-layers", "3",
         "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert rc == 2
    assert "layer 3 is outside 1..2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_cli_warns_when_no_layer_is_hybrid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_images(tmp_path / "imgs", 2)
    args = ["analyze", "attention", "--adapter", "mae", "--size", "S", "--depth", "2",
            "--data", str(tmp_path / "imgs"), "--img-size", "32",
            "--out", str(tmp_path / "o")]  # fmt: skip
    # Random weights: near-uniform attention, every layer global.
    assert main(args) == 0
    assert "warning: no layer is hybrid; the closest one to the target is global" in (
        capsys.readouterr().out
    )
    # Thresholds that make the same layers hybrid: no warning.
    assert main([*args, "--global-threshold", "0", "--local-threshold", "1"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_query_map_figure_states_each_panel_peak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.axes

    from unip.figures import plot_query_maps

    flat = torch.full((1, 2, 4, 4), 1 / 16)
    flat[0, 1, 0, 0] = 0.5  # the second panel peaks at 8x uniform
    texts: list[str] = []
    original = matplotlib.axes.Axes.text

    def spy(self, x, y, s, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        texts.append(s)
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", spy)
    out = plot_query_maps(
        torch.zeros(3, 64, 64), flat, [1], [0, 5], (0.5,) * 3, (0.2,) * 3, tmp_path / "m.png"
    )
    assert out.exists()
    assert texts == ["max 1.0x", "max 8.0x"]


def test_table_keeps_four_decimals() -> None:
    from unip.analysis import AttentionAnalysis, analysis_table

    stats = [summarise_layer(1, torch.tensor([[0.001]])), summarise_layer(2, torch.tensor([[0.5]]))]
    a = AttentionAnalysis(stats, [6, 6], ["global", "local"], 0.09, 1, 0.15, 0.05, 1, 32, "x")
    assert "| 0.0010 |" in analysis_table(a)
