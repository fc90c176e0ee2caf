"""The plug-ins in a real suite: the DINOv2 and timm adapters, the k-NN probe protocol.

Two checkpoints are written as their projects write them: a DINOv2 ViT-S/14 reg4 hub file
(the release's tensor names and shapes from its golden manifest, reproducible random
values, cut to 2 blocks) and an EVA-02 tiny state dict as timm builds it (2 blocks,
safetensors). A suite runs both under ``knn_probe`` and ``linear_probe`` on a synthetic
SODA at patch-14 crops through ``unipbench run`` (inline executor) and ``unipbench
table``; a second ``run`` must take every result from the store.

FLOPs and parameter counts are checked against counts derived by hand from the two
architectures (DINOv2: a pre-norm ViT with LayerScale, 4 registers, a 4x GELU MLP; EVA-02
tiny: q/v biases, a SwiGLU MLP of 2 x 512 hidden units), not against our own counter.
"""

from __future__ import annotations

import hashlib
import io
import re
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.cli import main
from bench.results.store import RunRecord, read_records
from tests.release_weights import load_manifest, release_tensors

DEPTH = 2
CROP = 28  # a 2 x 2 grid of 14-px patches
EVA = "eva02_tiny_patch14_224"

SUITE = """\
suite: plugins
protocol_versions: {{knn_probe: "1.0", linear_probe: "2.1"}}
datasets:
  # 56 x 42 images; resized into (56, 28) for evaluation: 37 x 28, padded to a patch multiple
  - {{name: soda, root: {root}/data/soda, synthetic: {{train: 4, test: 2, size: 42, seed: 0}}}}
models:
  - {{adapter: dinov2, size: S, checkpoint: {dinov2}, options: {{depth: {depth}}}}}
  - {{name: EVA-02, adapter: timm, size: {eva}, checkpoint: {eva_file},
     options: {{depth: {depth}}}}}
protocols:
  knn_probe: {{k: 5, crop_size: {crop}, scale: [56, 28], inference: whole, batch_size: 2,
              num_workers: 0}}
  linear_probe: {{iters: 3, warmup_iters: 1, batch_size: 2, num_workers: 0, crop_size: {crop},
                 scale: [56, 28], inference: whole, eval_interval: 0, checkpoint_interval: 2,
                 layers: [0, 1, 1, 1]}}
seeds: [0]
"""


def dinov2_hub_file(path: Path) -> Path:
    """``dinov2_vits14_reg4_pretrain.pth`` as the hub serves it, blocks 0 and 1 only."""
    tensors = release_tensors(load_manifest("dinov2_vits14_reg4_pretrain"))
    kept = {k: v for k, v in tensors.items()
            if not k.startswith("blocks.") or int(k.split(".")[1]) < DEPTH}
    assert "register_tokens" in kept and kept["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    torch.save(kept, path)
    return path


def eva02_timm_file(path: Path) -> Path:
    """EVA-02 tiny's state dict as timm builds and saves it (random init, 2 blocks)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(EVA, pretrained=False, depth=DEPTH)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def vit_gmacs(tokens: int, dim: int, mlp_macs_per_token: int, patches: int) -> float:
    """Multiply-adds of the linear layers and attention matmuls of a ViT of DEPTH blocks:
    patch embedding (3 x 14 x 14 -> dim per patch), then per block qkv, projection, q@k^T
    and attn@v, and the MLP. Norms and activations are left out (fvcore adds the norms:
    under 0.1 M here)."""
    block = 4 * tokens * dim * dim + 2 * tokens * tokens * dim + tokens * mlp_macs_per_token
    return (patches * 3 * 14 * 14 * dim + DEPTH * block) / 1e9


PATCHES = (CROP // 14) ** 2
# DINOv2 ViT-S/14: width 384, class token + 4 registers, MLP 384 -> 1536 -> 384.
DINOV2_GMACS = vit_gmacs(PATCHES + 5, 384, 2 * 384 * 1536, PATCHES)
# EVA-02 tiny: width 192, class token, SwiGLU 192 -> 2 x 512 -> (gate) 512 -> 192.
EVA_GMACS = vit_gmacs(PATCHES + 1, 192, 192 * 1024 + 512 * 192, PATCHES)
# Backbone parameters: patch embedding, tokens, position table of the crop's grid, blocks,
# final norm.
DINOV2_PARAMS = (588 * 384 + 384) + 384 + 4 * 384 + PATCHES * 384 + DEPTH * (
    (384 * 1152 + 1152) + (384 * 384 + 384) + (384 * 1536 + 1536) + (1536 * 384 + 384)
    + 4 * 384  # norm1, norm2
    + 2 * 384  # LayerScale ls1, ls2
) + 2 * 384
EVA_PARAMS = (588 * 192 + 192) + 192 + (1 + PATCHES) * 192 + DEPTH * (
    192 * 576 + 2 * 192  # qkv without bias, q and v biases
    + (192 * 192 + 192) + (192 * 1024 + 1024) + (512 * 192 + 192)
    + 4 * 192
) + 2 * 192


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def knn_registered():
    """The k-NN probe registered (a source checkout without the installed entry point)."""
    from bench.protocols.registry import register_protocol
    from bench.registry import PROTOCOLS
    from plugins.knn_probe import PROTOCOL

    installed = "knn_probe" in PROTOCOLS
    if not installed:
        register_protocol(PROTOCOL)
    yield
    if not installed:  # later tests see the registry as it was
        PROTOCOLS.unregister("knn_probe")


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory, knn_registered) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("plugins")
    files = {
        "dinov2": dinov2_hub_file(root / "dinov2_vits14_reg4_pretrain.pth"),
        "eva": eva02_timm_file(root / "eva02_tiny.safetensors"),
    }
    suite = root / "suite.yaml"
    suite.write_text(SUITE.format(root=root, dinov2=files["dinov2"], eva=EVA,
                                  eva_file=files["eva"], depth=DEPTH, crop=CROP))
    where = ["--store", str(root / "store" / "results.jsonl"), "--workdir", str(root / "runs")]
    rc, out, err = cli("run", str(suite), "--executor", "inline", "--no-progress", *where)
    return {"root": root, "suite": suite, "where": where, "files": files,
            "rc": rc, "out": out, "err": err, "records": read_records(Path(where[1]))}


def _by(records: list[RunRecord]) -> dict[tuple[str, str], RunRecord]:
    return {(r.adapter, r.protocol): r for r in records}


def test_every_run_finishes_with_its_protocols_fields(suite_run) -> None:
    assert suite_run["rc"] == 0, suite_run["out"] + suite_run["err"]
    records = suite_run["records"]
    assert len(records) == 4 and {r.status for r in records} == {"done"}, [
        (r.run_id, r.error) for r in records]
    runs = _by(records)
    assert set(runs) == {(a, p) for a in ("dinov2", "timm") for p in ("knn_probe", "linear_probe")}
    for (adapter, protocol), r in runs.items():
        assert r.protocol_version == {"knn_probe": "1.0", "linear_probe": "2.1"}[protocol]
        file = suite_run["files"]["dinov2" if adapter == "dinov2" else "eva"]
        assert not r.random_init
        assert r.checkpoint_sha256 == hashlib.sha256(file.read_bytes()).hexdigest()
        assert "mIoU" in r.metrics
    for adapter, dim in (("dinov2", 384), ("timm", 192)):
        knn = runs[adapter, "knn_probe"].extra
        assert knn["layer"] == DEPTH - 1  # -1: the last of the 2 blocks the option keeps
        # Every training image once, at the evaluation resize (37 x 28, padded to 42 x 28):
        # 3 x 2 patches of 14 px each.
        assert knn["bank"]["dim"] == dim and knn["bank"]["views"] == 4
        assert knn["bank"]["labelled_patches"] == 4 * 3 * 2
    assert runs["timm", "linear_probe"].iterations == 3
    assert runs["timm", "linear_probe"].extra["mode"] == "on_the_fly"


def test_flops_and_params_are_the_architectures_at_patch_14(suite_run) -> None:
    want = {"dinov2": (DINOV2_GMACS, DINOV2_PARAMS / 1e6), "timm": (EVA_GMACS, EVA_PARAMS / 1e6)}
    assert sorted(r.adapter for r in suite_run["records"]) == ["dinov2"] * 2 + ["timm"] * 2
    for r in suite_run["records"]:
        f = r.flops
        assert f is not None and f.input_size == [CROP, CROP], r.run_id
        gmacs, params = want[r.adapter]
        # Stored to 4 decimals; norms add under 1e-4 G here.
        assert abs(f.backbone_gmacs - gmacs) <= 2e-4, (r.adapter, f.backbone_gmacs, gmacs)
        assert f.backbone_params_m == pytest.approx(params, abs=1e-4), r.adapter
        assert f.total_gmacs >= f.backbone_gmacs > 0
    # Measured: DINOv2 0.0330 G (0.03288 by hand), EVA-02 0.0049 G (0.00489 by hand).


def test_table_has_a_knn_and_an_lp_group_for_both_models(suite_run) -> None:
    rc, out, err = cli("table", "--suite", str(suite_run["suite"]),
                       "--store", suite_run["where"][1], "--no-reference")
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {cells[0]: cells for cells in
            ([c.strip().strip("*") for c in ln.strip("|").split("|")] for ln in lines[2:])}
    assert "kNN soda" in header and "LP soda" in header and "GFLOPs" in header
    # Rows are labelled by each adapter's own size: DINOv2's letter, timm's size word.
    assert set(rows) == {"dinov2-S", "EVA-02-T"}
    runs = _by(suite_run["records"])
    for label, adapter in (("dinov2-S", "dinov2"), ("EVA-02-T", "timm")):
        for title, protocol in (("kNN soda", "knn_probe"), ("LP soda", "linear_probe")):
            cell = rows[label][header.index(title)]
            assert re.fullmatch(r"\d+\.\d", cell), (label, title, cell)
            assert float(cell) == pytest.approx(runs[adapter, protocol].metrics["mIoU"],
                                                abs=0.051)
        # GFLOPs: the first declared protocol with a count (LP), backbone + 1x1 head.
        gflops = rows[label][header.index("GFLOPs")]
        assert float(gflops) == round(runs[adapter, "linear_probe"].flops.total_gmacs, 2)
    assert "protocol versions: LP 2.1; kNN 1.0" in out


def test_a_second_run_reuses_every_result(suite_run, monkeypatch) -> None:
    from bench.protocols.registry import Protocol

    def no_recompute(self):
        raise AssertionError(f"protocol {self.name} ran again")

    monkeypatch.setattr(Protocol, "run_fn", no_recompute)
    rc, out, err = cli("run", str(suite_run["suite"]), "--executor", "inline", "--no-progress",
                       *suite_run["where"])
    assert rc == 0, out + err
    reused = [ln for ln in out.splitlines() if ln.strip().startswith("reusing ")]
    assert len(reused) == 4, out
    for r in suite_run["records"]:
        assert any(f"({r.run_id})" in ln for ln in reused), r.run_id
    assert "4 runs, 4 done already, 0 to run" in out
    assert len(read_records(Path(suite_run["where"][1]))) == 4


def test_a_knn_block_the_model_lacks_is_refused_at_its_key(tmp_path, knn_registered) -> None:
    """The k-NN probe reads one block, `layer` (not the inherited `layers`): the suite
    check reads the field the protocol declares and points at its line."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(f"""\
        suite: plugins
        protocol_versions: {{knn_probe: "1.0"}}
        datasets: [{{name: soda, root: {tmp_path}/soda}}]
        models: [{{adapter: dinov2, size: S, options: {{depth: {DEPTH}}}}}]
        protocols:
          knn_probe: {{layer: {DEPTH}}}
        seeds: [0]
        """))
    rc, _, err = cli("validate", "--quick", str(suite))
    assert rc == 1
    assert f"{suite}:6: protocols.knn_probe.layer: blocks [{DEPTH}] of [{DEPTH}] are out of " \
           f"range for models[0] (dinov2-S: {DEPTH} blocks, zero-based); set " \
           f"knn_probe.layer to blocks below {DEPTH}" in err, err
