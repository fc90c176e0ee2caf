"""The defaults are the released UNIP pipeline's, pinned with numbers taken from it.

Each test states the released behaviour it pins (casiatao/UNIP, UNIP_segmentation on
mmseg 0.x / mmcv 1.x, and UNIP_pretraining) and checks a value a wrong implementation
cannot meet. Weight decay and layer decay of every parameter are in test_optim.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from timm.models.vision_transformer import VisionTransformer

from bench.backbones.adapter import downstream_options, load_backbone
from bench.models.layers import cross_entropy
from bench.protocols.config import resolve_settings
from bench.protocols.registry import get_protocol
from bench.suites.load import load_suite

SUITES = Path(__file__).resolve().parents[2] / "suites"
PROTOCOL_VERSION = get_protocol("fine_tune").version


# ---------------------------------------------------------------- loss normalisation
def test_loss_is_the_mean_over_all_pixels_ignored_ones_counting_zero() -> None:
    # mmseg 0.x CrossEntropyLoss (reduction 'mean', no avg_non_ignore): F.cross_entropy
    # with reduction='none' gives 0 at ignored pixels, then .mean() over B*H*W.
    classes = 4
    logits = torch.zeros(2, classes, 4, 4)  # uniform prediction: log(4) per labelled pixel
    label = torch.zeros(2, 4, 4, dtype=torch.long)
    label[0, :, 2:] = 255  # half of crop 0 is padding
    label[1, 3:, :] = 255  # a quarter of crop 1
    labelled = 32 - 8 - 4
    assert cross_entropy(logits, label, 255) == pytest.approx(labelled * math.log(4) / 32)
    assert cross_entropy(logits, label, 255, "labelled_pixels") == pytest.approx(math.log(4))
    for proto in ("fine_tune", "linear_probe", "layerwise_probe"):
        assert resolve_settings(proto, "soda", "mae", "S").loss_norm == "all_pixels"


def test_segmentor_loss_uses_the_setting() -> None:
    from bench.protocols.finetune import build_model

    torch.manual_seed(0)
    bb = load_backbone("mae", "tiny", img_size=32, depth=2)
    label = torch.randint(0, 3, (1, 32, 32))
    label[:, :, 16:] = 255
    img = torch.randn(1, 3, 32, 32)
    out = {}
    for norm in ("all_pixels", "labelled_pixels"):
        s = resolve_settings("fine_tune", "soda", "mae", "tiny",
                             {"loss_norm": norm, "layers": [0, 1, 1, 1], "aux_head": None,
                              "head_channels": 16})
        torch.manual_seed(1)  # the same head weights for both
        model = build_model(bb, 3, s).eval()
        out[norm] = model(img, label)["loss_decode"].item()
    # half the pixels are padding: the all-pixel mean is exactly half the labelled mean
    assert out["all_pixels"] == pytest.approx(out["labelled_pixels"] / 2, rel=1e-5)


# ---------------------------------------------------------------- evaluation interval
@pytest.mark.parametrize(
    ("dataset", "interval"),
    [("soda", 800), ("mfnet_thermal", 700), ("scut_seg", 800),
     ("nyuv2_depth", 700), ("sunrgbd_depth", 1000), ("ade20k", 1000)],
)
def test_evaluation_interval_is_the_released_configs(dataset: str, interval: int) -> None:
    for proto in ("fine_tune", "linear_probe", "layerwise_probe"):
        assert resolve_settings(proto, dataset, "mae", "S").eval_interval == interval


def test_layerwise_schedules_of_rgb_and_depth_are_the_released_configs() -> None:
    got = {d: resolve_settings("layerwise_probe", d, "mae", "S")
           for d in ("ade20k", "nyuv2_depth", "sunrgbd_depth")}
    assert (got["ade20k"].iters, got["ade20k"].warmup_iters) == (75000, 1500)
    assert (got["nyuv2_depth"].iters, got["nyuv2_depth"].warmup_iters) == (9800, 1000)
    assert (got["sunrgbd_depth"].iters, got["sunrgbd_depth"].warmup_iters) == (65000, 6000)
    assert got["nyuv2_depth"].crop_size == 480


# ---------------------------------------------------------------- UNIP head split downstream
def _unip_file(path: Path, heads: int = 16) -> Path:
    """A UNIP-T file as the trainer saves it: the last block split into ``heads`` heads."""
    vit = load_backbone("unip", "tiny", None, depth=2, last_heads=heads).vit
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.2)
    torch.save({"model": vit.state_dict(), "unip": {"last_heads": heads, "depth": 2}}, path)
    return path


def test_downstream_builds_unip_with_uniform_heads_as_the_release(tmp_path: Path) -> None:
    ckpt = _unip_file(tmp_path / "unip_t.pth")
    analysed = load_backbone("unip", "tiny", ckpt)
    assert analysed.num_heads == [3, 16]  # attention analysis keeps the distilled split
    opts = downstream_options("unip", {})
    assert opts == {"head_split": "uniform"}
    bb = load_backbone("unip", "tiny", ckpt, **opts)
    assert bb.num_heads == [3, 3]
    assert bb.meta.extra["distilled_last_heads"] == 16
    # The released downstream configs build a plain 3-head ViT-T and load the file into it
    # (strict=False, nothing missing): an independent timm ViT with those weights.
    ref = VisionTransformer(embed_dim=192, depth=2, num_heads=3, num_classes=0).eval()
    state = torch.load(ckpt, weights_only=True)["model"]
    ref.load_state_dict(state)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=[1], norm=False, output_fmt="NCHW",
                                         intermediates_only=True)[0]
        got = bb.features(x, [1])[0]
        distilled = analysed.features(x, [1])[0]
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(distilled, want, atol=1e-3)  # the 16-head split differs


def test_last_heads_with_the_uniform_split_is_refused(tmp_path: Path) -> None:
    ckpt = _unip_file(tmp_path / "unip_t.pth")
    with pytest.raises(ValueError, match="last_heads=16 was given with head_split='uniform'"):
        load_backbone("unip", "tiny", ckpt, **downstream_options("unip", {"last_heads": 16}))
    bb = load_backbone("unip", "tiny", ckpt, **downstream_options(
        "unip", {"head_split": "distilled"}))
    assert bb.num_heads == [3, 16]
    with pytest.raises(ValueError, match="head_split='even' is not one of"):
        load_backbone("unip", "tiny", ckpt, head_split="even")


def test_no_suite_splits_unip_heads_downstream() -> None:
    for path in SUITES.rglob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        for m in (data or {}).get("models", []) or []:
            assert "last_heads" not in (m.get("options") or {}), f"{path}: {m}"


# ---------------------------------------------------------------- load_backbone defaults
def test_load_backbone_is_deterministic_eval_mode_without_drop_path() -> None:
    bb = load_backbone("mae", "tiny", img_size=32, depth=3)
    assert not bb.training
    rates = [m.drop_prob for m in bb.modules() if type(m).__name__ == "DropPath"]
    assert rates == []
    x = torch.randn(2, 3, 32, 32)
    bb.train()  # even in training mode nothing is random: no drop path was asked for
    assert torch.equal(bb.features(x, [2])[0], bb.features(x, [2])[0])
    asked = load_backbone("mae", "tiny", img_size=32, depth=3, drop_path_rate=0.1)
    assert [round(m.drop_prob, 4) for m in asked.modules()
            if type(m).__name__ == "DropPath"] == [0.05, 0.05, 0.1, 0.1]


# ---------------------------------------------------------------- UNIP student init
def test_student_patch_bias_keeps_pytorchs_default_as_the_release() -> None:
    # models_unip.py initialises the patch projection's weight (xavier) and never its bias:
    # nn.Conv2d's default, uniform in +-1/sqrt(fan_in), fan_in = 3*16*16.
    from unip.student import build_student

    torch.manual_seed(0)
    bias = build_student("base", last_heads=16, depth=1).vit.patch_embed.proj.bias.detach()
    bound = 1 / math.sqrt(3 * 16 * 16)
    assert bias.abs().max() <= bound
    assert bias.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)  # 768 draws


# ---------------------------------------------------------------- YAML 1.1 booleans
def test_yaml_no_is_the_choice_no(tmp_path: Path) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text(
        f'suite: t\nprotocol_version: "{PROTOCOL_VERSION}"\n'
        "datasets: [{name: soda, root: data/x}]\nmodels: [{adapter: mae, size: T}]\n"
        "protocols: {fine_tune: {mixed_precision: no, iters: 10, warmup_iters: 1}}\n"
    )
    raw = load_suite(suite).spec.protocols["fine_tune"]
    assert raw["mixed_precision"] is False  # what YAML 1.1 says ...
    s = resolve_settings("fine_tune", "soda", "mae", "T", raw)
    assert s.mixed_precision == "no"  # ... and what the setting means
    with pytest.raises(ValueError, match="inference"):
        resolve_settings("fine_tune", "soda", "mae", "T", {"inference": False})


def test_distill_yaml_no_is_the_choice_no() -> None:
    from unip.distill_config import DistillConfig

    cfg = DistillConfig.model_validate(yaml.safe_load(
        "teacher: {adapter: mae, size: L, layer: 18}\n"
        "data: {path: x}\noutput_dir: out\nmixed_precision: no\n"
    ))
    assert cfg.mixed_precision == "no"


# ---------------------------------------------------------------- version
def test_protocol_version_is_bumped_and_suites_follow() -> None:
    expected = {"fine_tune": "2.0", "linear_probe": "2.1", "layerwise_probe": "2.1"}
    for name, version in expected.items():
        assert get_protocol(name).version == version
    for path in SUITES.rglob("*.yaml"):
        data = yaml.safe_load(path.read_text()) or {}
        stated = data.get("protocol_versions") or {}
        for protocol in data.get("protocols") or {}:
            version = stated.get(protocol, data.get("protocol_version"))
            assert version == get_protocol(protocol).version, (path, protocol)


def test_ls_says_which_stored_runs_are_of_an_older_protocol_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.cli import main
    from bench.results.store import append_record, read_records

    suite = tmp_path / "s.yaml"
    suite.write_text(
        f'suite: t\nprotocol_version: "{PROTOCOL_VERSION}"\n'
        "datasets: [{name: soda, root: data/x}]\nmodels: [{adapter: mae, size: T}]\n"
        "protocols: {fine_tune: {iters: 10, warmup_iters: 1}}\n"
    )
    store = tmp_path / "store.jsonl"
    old = {"run_id": "old1", "suite": "t", "protocol": "fine_tune", "protocol_version": "1.0",
           "status": "done", "config": {}, "model_name": "mae", "adapter": "mae",
           "size": "tiny", "random_init": True, "dataset": "soda", "seed": 0,
           "metrics": {"mIoU": 12.0}}
    append_record(store, old)
    assert [r.protocol_version for r in read_records(store)] == ["1.0"]  # still readable
    assert main(["ls", str(suite), "--store", str(store), "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 done, 0 failed, 0 partial, 1 pending" in out
    assert "1 record(s) of fine_tune version 1.0 for suite 't': not reused" in out
