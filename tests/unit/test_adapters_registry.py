"""Adapter lookup, plug-ins, the ``unipbench adapters`` command and loud load failures."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from bench.backbones.adapter import (
    Adapter,
    AdapterError,
    CheckpointFormat,
    list_adapters,
    load_backbone,
    register_adapter,
)
from bench.cli import main
from bench.registry import ADAPTERS

BUILT_IN = {"mae", "crossmae", "deit", "deit3", "dino", "ibot", "unip", "dinov2", "timm"}


def tiny_state(depth: int = 2) -> dict[str, torch.Tensor]:
    return VisionTransformer(embed_dim=192, depth=depth, num_heads=3, num_classes=0).state_dict()


def test_unknown_adapter_suggests_the_closest_name() -> None:
    with pytest.raises(AdapterError, match=r"unknown adapters 'maee'.*Did you mean 'mae'"):
        load_backbone("maee", "tiny")


def test_unknown_size_suggests_the_sizes() -> None:
    with pytest.raises(AdapterError, match="unknown ViT size 'huge'"):
        load_backbone("mae", "huge")


def test_unknown_format_name_lists_the_declared_ones(tmp_path) -> None:
    torch.save(tiny_state(), tmp_path / "m.pth")
    with pytest.raises(AdapterError, match=r"no checkpoint format 'pretrained'.*'pretrain'"):
        load_backbone(
            "mae", "tiny", tmp_path / "m.pth", format="pretrained", depth=2, cache_dir=tmp_path
        )


def test_folder_format_forced_on_a_file_is_explained(tmp_path) -> None:
    """``format="hf"`` on a .pth once failed with KeyError: 'model_type'."""
    torch.save({"model": tiny_state()}, tmp_path / "m.pth")
    with pytest.raises(AdapterError, match=r"format 'hf' of adapter 'mae' reads a Hugging Face "
                       r"export folder, but .*m\.pth is a file"):  # fmt: skip
        load_backbone("mae", "tiny", tmp_path / "m.pth", format="hf", depth=2, cache_dir=tmp_path)


def test_all_built_in_adapters_are_registered() -> None:
    assert set(list_adapters()) >= BUILT_IN


def test_cli_lists_all_adapters_with_formats(capsys) -> None:
    assert main(["adapters", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["adapter"]: r for r in rows}
    assert set(by_name) == BUILT_IN  # the nine built-ins, no more, no fewer
    assert {f["name"] for f in by_name["mae"]["formats"]} == {"pretrain", "timm", "hf"}
    assert {f["name"] for f in by_name["deit"]["formats"]} == {"official", "timm", "hf"}
    assert by_name["unip"]["sizes"] == ["T", "S", "B"]
    assert by_name["dinov2"]["sizes"] == ["S", "B", "L", "g"]
    assert by_name["timm"]["sizes"] == []  # any timm model name


def test_entry_points_name_the_built_ins_where_they_live() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["entry-points"]
    adapters = declared["unipbench.adapters"]
    assert set(adapters) == BUILT_IN
    assert adapters["unip"] == "unip.adapter:ADAPTER"  # UNIP's own package, not adapters/
    assert adapters["dinov2"] == "adapters.dinov2:ADAPTER"
    assert adapters["timm"] == "adapters.timm_model:ADAPTER"


def test_bench_imports_neither_adapters_nor_unip() -> None:
    """The harness knows methods only through the registry."""
    root = Path(__file__).resolve().parents[2] / "bench"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(root.parent)}: {n}"
                for n in names
                if n.split(".")[0] in ("adapters", "unip")
            ]
    assert offenders == []


@pytest.fixture
def plugin():
    """A third-party method, as a plug-in would define it: one Adapter object."""
    adapter = Adapter(
        name="thirdparty",
        description="a method from outside this repository",
        formats=(
            CheckpointFormat(
                name="release",
                description="{'state_dict': {'encoder.*'}}",
                key_path=("state_dict",),
                keep_prefix="encoder.",
            ),
        ),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    register_adapter(adapter)
    yield adapter
    ADAPTERS.unregister("thirdparty")


def test_registered_plugin_loads_through_load_backbone(tmp_path, plugin) -> None:
    state = tiny_state()
    ckpt = {"state_dict": {f"encoder.{k}": v for k, v in state.items()}}
    ckpt["state_dict"]["projector.weight"] = torch.zeros(4, 4)  # not under encoder.: ignored
    torch.save(ckpt, tmp_path / "plugin.pth")

    bb = load_backbone("thirdparty", "tiny", tmp_path / "plugin.pth", depth=2, cache_dir=tmp_path)

    assert "thirdparty" in list_adapters()
    assert bb.meta.adapter == "thirdparty" and bb.meta.checkpoint_format == "release"
    assert bb.mean == (0.5, 0.5, 0.5)
    assert torch.equal(bb.vit.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])


def test_registering_a_taken_name_is_refused(plugin) -> None:
    with pytest.raises(KeyError, match="already registered"):
        register_adapter(plugin)


def test_dino_training_checkpoint_handed_to_mae_names_missing_keys(tmp_path) -> None:
    state = tiny_state()
    ckpt = {
        "teacher": {f"backbone.{k}": v for k, v in state.items()},
        "student": {f"module.backbone.{k}": v for k, v in state.items()},
        "epoch": 100,
    }
    torch.save(ckpt, tmp_path / "dino_full.pth")
    with pytest.raises(AdapterError) as info:
        load_backbone("mae", "tiny", tmp_path / "dino_full.pth", depth=2, cache_dir=tmp_path)
    msg = str(info.value)
    assert "adapter 'mae'" in msg and "dino_full.pth" in msg
    assert "missing keys" in msg and "blocks.0.attn.qkv.weight" in msg
    assert "unexpected keys" in msg and "teacher" in msg
    # ... and says why: the structure MAE expects, and whose layout the file has.
    assert "expects weights under 'model', the file has 'teacher', 'student', 'epoch'" in msg
    assert "layout is that of adapter(s) dino, ibot" in msg


def test_weights_of_another_size_say_which_size_they_are(tmp_path) -> None:
    state = VisionTransformer(embed_dim=384, depth=2, num_heads=6, num_classes=0).state_dict()
    torch.save({"model": state}, tmp_path / "vit_s.pth")
    with pytest.raises(AdapterError) as info:
        load_backbone("mae", "tiny", tmp_path / "vit_s.pth", depth=2, cache_dir=tmp_path)
    msg = str(info.value)
    assert "vit_s.pth" in msg and "its embed dim is 384, the model's 192" in msg
    assert "it is a ViT-S (pass size 'S')" in msg
    assert "shape mismatches" in msg and "blocks.0.attn.qkv.weight" in msg
    with pytest.raises(AdapterError, match=r"it has 2 blocks, the model 12"):
        load_backbone("mae", "small", tmp_path / "vit_s.pth", cache_dir=tmp_path)


@pytest.mark.parametrize("img_size", ["512", (512,), (512, 0), 224.0, True])
def test_bad_img_size_is_explained(img_size) -> None:
    with pytest.raises(AdapterError, match="img_size .* is not a positive int or a"):
        load_backbone("mae", "tiny", None, img_size=img_size, depth=1)


def test_checkpoint_of_other_depth_reports_missing_blocks(tmp_path) -> None:
    torch.save({"model": tiny_state(depth=2)}, tmp_path / "d2.pth")
    with pytest.raises(AdapterError, match=r"missing keys.*blocks\.2\."):
        load_backbone("mae", "tiny", tmp_path / "d2.pth", depth=3, cache_dir=tmp_path)


def test_unip_without_metadata_or_last_heads_fails_clearly(tmp_path) -> None:
    torch.save(tiny_state(), tmp_path / "unip_flat.pth")
    with pytest.raises(
        AdapterError, match=r"unip_flat\.pth has no 'unip.last_heads' metadata.*last_heads="
    ):
        load_backbone("unip", "tiny", tmp_path / "unip_flat.pth", depth=2, cache_dir=tmp_path)


@pytest.mark.parametrize("last_heads", [0, -4, "abc", 2.5, True])
def test_unip_bad_last_heads_is_explained(tmp_path, last_heads) -> None:
    torch.save(tiny_state(), tmp_path / "unip_flat.pth")
    with pytest.raises(AdapterError, match=r"last_heads=.* is not a positive whole number"):
        load_backbone(
            "unip", "tiny", tmp_path / "unip_flat.pth", depth=2, last_heads=last_heads,
            cache_dir=tmp_path,
        )  # fmt: skip


def test_unip_last_heads_as_a_cli_string_is_read() -> None:
    bb = load_backbone("unip", "tiny", None, depth=2, last_heads="16")
    assert bb.num_heads == [3, 16]


@pytest.mark.parametrize(
    "table,why",
    [
        (
            torch.zeros(1, 197, 100),
            r"pos_embed: checkpoint \(1, 197, 100\) vs model \(1, 197, 192\)",
        ),
        (torch.zeros(197, 192), r"pos_embed: checkpoint \(197, 192\) vs model \(1, 197, 192\)"),
        (torch.zeros(1, 150, 192), r"pos_embed holds 149 patch entries .* not a square grid"),
    ],
    ids=["width", "no-batch-dim", "not-square"],
)
def test_bad_position_table_names_the_file_and_key(tmp_path, table, why) -> None:
    """A table of another width once escaped as a RuntimeError from load_state_dict."""
    state = tiny_state()
    state["pos_embed"] = table
    torch.save({"model": state}, tmp_path / "pos.pth")
    with pytest.raises(
        AdapterError, match=r"checkpoint .*pos\.pth does not fit adapter 'mae'.*" + why
    ):
        load_backbone("mae", "tiny", tmp_path / "pos.pth", depth=2, cache_dir=tmp_path)


def test_unip_last_heads_contradicting_metadata_fails(tmp_path) -> None:
    torch.save({"model": tiny_state(), "unip": {"last_heads": 16}}, tmp_path / "unip.pth")
    with pytest.raises(AdapterError, match="contradicts"):
        load_backbone(
            "unip", "tiny", tmp_path / "unip.pth", depth=2, last_heads=12, cache_dir=tmp_path
        )


def test_example_adapter_in_the_docs_works(tmp_path) -> None:
    """The adapter module shown in docs/adding-a-method.md loads its declared layout."""
    doc = (Path(__file__).parents[2] / "docs" / "adding-a-method.md").read_text()
    module_source = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    namespace: dict = {}
    exec(compile(module_source, "adding-a-method.md", "exec"), namespace)
    adapter = namespace["ADAPTER"]

    ref = VisionTransformer(embed_dim=192, depth=2, num_heads=3, num_classes=0).eval()
    encoder = {re.sub(r"^norm\.", "ln_final.", k): v for k, v in ref.state_dict().items()}
    ckpt = {
        "state_dict": {
            **{f"module.momentum_encoder.{k}": v for k, v in encoder.items()},
            **{f"module.encoder.{k}": v + 1 for k, v in encoder.items()},
            "module.predictor.weight": torch.zeros(8, 8),
        },
        "epoch": 300,
    }
    torch.save(ckpt, tmp_path / "mymethod.pth")
    register_adapter(adapter)
    try:
        bb = load_backbone(
            "mymethod", "tiny", tmp_path / "mymethod.pth", depth=2, cache_dir=tmp_path
        )
    finally:
        ADAPTERS.unregister("mymethod")
    assert bb.meta.checkpoint_format == "pretrain"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        got = bb.eval().features(x, [0, 1])
        want = ref.forward_intermediates(x, indices=[0, 1], norm=False, intermediates_only=True)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-5)
