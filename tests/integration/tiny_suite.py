"""A tiny real suite (depth-2 ViT-T, 32-px synthetic SODA, 4 steps) for runner tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

from bench.suites.load import Suite, load_suite
from bench.suites.runner import Paths

TINY = """\
suite: tiny
protocol_version: "2.0"
protocol_versions: {{linear_probe: "2.1", layerwise_probe: "2.1"}}
datasets:
  - {{name: soda, root: {root}, synthetic: {{train: 4, test: 2, size: 32, seed: 0}}}}
models:
  - {{adapter: mae, size: T, options: {{depth: 2}}}}
  - {{name: broken, adapter: deit, size: T, checkpoint: {root}/../missing.pth,
     options: {{depth: 2}}}}
protocols:
  fine_tune:
    <<: &tiny {{iters: 4, warmup_iters: 1, batch_size: 2, num_workers: 0, crop_size: 32,
               scale: [48, 32], inference: whole, eval_interval: 0, checkpoint_interval: 2,
               layers: [0, 1, 1, 1]}}
    head_channels: 16
    aux_channels: 8
  linear_probe:
    <<: *tiny
  layerwise_probe:
    <<: *tiny
    layers: all
seeds: [0]
"""


def tiny_suite(tmp_path: Path) -> tuple[Suite, Paths]:
    p = tmp_path / "tiny.yaml"
    p.write_text(textwrap.dedent(TINY.format(root=tmp_path / "data" / "soda")))
    suite = load_suite(p)
    return suite, Paths(tmp_path / "store" / "results.jsonl", tmp_path / "runs")
