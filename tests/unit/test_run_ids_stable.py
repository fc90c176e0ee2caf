"""Run ids of the built-in protocols are those the code made before protocols declared
their own versions: a store of finished runs stays reused, except where a protocol's
version moved since (the probes' 2.1), which changes only that protocol's ids.

tests/golden/store/schema1-tiny.jsonl was written by that code for the suite below
(synthetic data from a fixed seed): expanding the same suite now must give the same ids.
The suite text is a frozen copy of the runner tests' tiny suite of that day: that one may
change, the golden store may not.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from bench.suites.load import load_suite
from bench.suites.matrix import expand, run_id_of
from bench.suites.runner import prepare_datasets

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "store" / "schema1-tiny.jsonl"

TINY = """\
suite: tiny
protocol_version: "2.0"
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


def test_builtin_run_ids_are_unchanged(tmp_path: Path) -> None:
    stored = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    # The stored ids are the hashes of the stored identities (of version 2.0) ...
    for rec in stored:
        assert run_id_of(rec["config"]["identity"]) == rec["run_id"]
        assert rec["config"]["identity"]["protocol_version"] == "2.0"
    # ... the probes are at 2.1 now (per-head fp16 loss scaling), fine-tuning still 2.0.
    text = TINY.replace('protocol_version: "2.0"\n', 'protocol_version: "2.0"\n'
                        'protocol_versions: {{linear_probe: "2.1", layerwise_probe: "2.1"}}\n')
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(text.format(root=tmp_path / "data" / "soda")))
    suite = load_suite(path)
    prepare_datasets(expand(suite, data=False), log=lambda _m: None)
    runs = expand(suite)
    # The same suite on the same data gives fine-tuning's ids again. The broken model's
    # checkpoint path differs (its identity names the missing path), so only the runs
    # of the model without a checkpoint are compared.
    mine = {r.protocol: r for r in runs if r.checkpoint is None}
    theirs = {rec["protocol"]: rec for rec in stored if rec["checkpoint"] is None}
    assert mine.keys() == theirs.keys() == {"fine_tune", "linear_probe", "layerwise_probe"}
    assert mine["fine_tune"].run_id == theirs["fine_tune"]["run_id"]
    # A probe's identity is its 2.0 identity with the new version, so its id is new:
    # 2.0 results are not reused as 2.1 ones.
    for name in ("linear_probe", "layerwise_probe"):
        old = theirs[name]["config"]["identity"]
        assert mine[name].identity == {**old, "protocol_version": "2.1"}
        assert mine[name].run_id != theirs[name]["run_id"]
    assert {r.protocol_version for r in runs if r.protocol != "fine_tune"} == {"2.1"}
