"""NMI-HAD distillation end to end on synthetic images with tiny teachers and students."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bench.backbones.adapter import load_backbone
from bench.backbones.backbone import INFRARED_MEAN
from bench.cli import main
from bench.protocols import runtime
from bench.protocols.runtime import compile_supported
from unip.distill import StepInfo, attention_kl, distill, distill_param_groups
from unip.distill_config import load_config, recipe_differences
from unip.images import ImageListDataset, find_images, resize_centre_crop
from unip.student import build_student

IMG = 32


def make_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for i in range(count):
        y, x = np.mgrid[0:48, 0:48]
        cy, cx = rng.integers(6, 42, 2)
        img = 40 + 180 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / rng.uniform(20, 120))
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img, "L").save(folder / f"{i:03d}.png")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: thread wake-ups cost more than the maths on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 images and a 2-block ViT-S teacher whose attention is far from uniform."""
    root = tmp_path_factory.mktemp("distill")
    make_images(root / "images", 16)
    torch.manual_seed(0)
    teacher = load_backbone("mae", "S", img_size=IMG, depth=2)
    with torch.no_grad():
        for blk in teacher.vit.blocks:
            blk.attn.qkv.weight.mul_(3.0)  # logits x9: peaked, image-dependent attention
        teacher.vit.pos_embed.normal_(0, 0.5)
    torch.save({"model": teacher.vit.state_dict()}, root / "teacher.pth")
    return root


def write_config(root: Path, name: str, **changes) -> Path:
    cfg = {
        "teacher": {"adapter": "mae", "size": "S", "checkpoint": str(root / "teacher.pth"),
                    "depth": 2, "layer": 2},
        "student": {"size": "T", "depth": 2},
        "data": {"path": str(root / "images"), "img_size": IMG, "num_workers": 0},
        "optim": {"epochs": 8, "warmup_epochs": 1, "batch_size": 4, "lr": 2e-3},
        "output_dir": str(root / name),
        "save_every": 3,
        "log_every": 4,
        "progress": False,
    }  # fmt: skip
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def eval_batch(root: Path) -> torch.Tensor:
    """Training images, centre view, infrared normalisation: what the student was fit on."""
    ds = ImageListDataset(find_images(root / "images")[:8], resize_centre_crop(IMG))
    return torch.stack([ds[i] for i in range(len(ds))])


def test_loss_falls_and_saved_student_matches_teacher_layer(workspace: Path) -> None:
    losses: list[float] = []
    cfg = load_config(write_config(workspace, "run_a"))
    result = distill(cfg, callbacks=[lambda info: losses.append(info.loss)])
    assert result.steps == len(losses) == 32
    assert result.teacher_layer == 2 and result.last_heads == 6
    assert np.mean(losses[-6:]) < 0.6 * np.mean(losses[:3])

    log = [json.loads(ln) for ln in (workspace / "run_a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(4, 33, 4))
    assert all(r["lr"] >= 0 and r["loss"] > 0 for r in log)

    saved = torch.load(result.student_path, weights_only=True)
    assert saved["unip"]["last_heads"] == 6 and saved["unip"]["teacher_layer"] == 2
    assert saved["unip"]["teacher"]["adapter"] == "mae"
    # The depth and head count come from the file's metadata: nothing but the size is given.
    student = load_backbone("unip", "T", checkpoint=result.student_path, img_size=IMG)
    assert student.num_heads == [3, 6]  # ViT-T, last block with the ViT-S teacher's heads
    assert student.mean == pytest.approx(INFRARED_MEAN)

    teacher = load_backbone("mae", "S", checkpoint=workspace / "teacher.pth", img_size=IMG,
                            depth=2).eval()  # fmt: skip
    torch.manual_seed(cfg.seed)
    fresh = build_student("T", 6, IMG, depth=2).eval()
    x = eval_batch(workspace)
    with torch.no_grad():
        target = teacher.attention(x, [1], logits=True)[0]
        kl_init = attention_kl(fresh.attention(x, [-1], logits=True)[0], target)
        kl_trained = attention_kl(student.eval().attention(x, [-1], logits=True)[0], target)
    assert kl_trained < 0.7 * kl_init


def test_teacher_layer_chosen_by_nmi(workspace: Path) -> None:
    cfg = load_config(
        write_config(workspace, "run_nmi", teacher__layer=None, optim__epochs=1),
        ["teacher.nmi_images=6", "teacher.nmi_target=0.5"],
    )
    result = distill(cfg)
    analysis = json.loads((workspace / "run_nmi" / "teacher_nmi.json").read_text())
    means = [entry["mean"] for entry in analysis["layers"]]
    assert analysis["num_images"] == 6
    assert result.teacher_layer == analysis["teacher_layer"]
    assert result.teacher_layer == 1 + int(np.argmin([abs(m - 0.5) for m in means]))


KILLED_RUN = """
import sys, time, torch
from pathlib import Path
from unip.distill import distill
from unip.distill_config import load_config
from unip.images import ImageListDataset, find_images, resize_centre_crop
marker = Path(sys.argv[2])
def pause(info):
    if info.step == int(sys.argv[3]):
        marker.write_text(str(info.step))
        time.sleep(600)  # the parent kills us here
distill(load_config(sys.argv[1]), callbacks=[pause])
"""


def test_kill_and_resume_gives_the_same_student(workspace: Path) -> None:
    reference = distill(load_config(write_config(workspace, "run_ref", optim__epochs=3)))

    cfg_path = write_config(workspace, "run_kill", optim__epochs=3)
    marker = workspace / "killed_at"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(cfg_path), str(marker), "5"], env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run did not reach step 5"
            time.sleep(0.05)
        assert (workspace / "run_kill" / "checkpoint.pth").exists()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    out = workspace / "run_kill"
    assert not (out / "student.pth").exists()
    assert torch.load(out / "checkpoint.pth", weights_only=True)["step"] == 3
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 6, "los')  # as if killed mid-write

    assert main(["distill", str(cfg_path), "--set", "progress=false"]) == 0  # resumes at 3
    want = torch.load(reference.student_path, weights_only=True)["model"]
    got = torch.load(out / "student.pth", weights_only=True)["model"]
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    ref_log = (workspace / "run_ref" / "log.jsonl").read_text()
    assert (out / "log.jsonl").read_text() == _without_timing(ref_log, like=out / "log.jsonl")


def _without_timing(reference: str, like: Path) -> str:
    """The reference log with the resumed log's timings: everything else must be equal."""
    ref = [json.loads(ln) for ln in reference.splitlines()]
    got = [json.loads(ln) for ln in like.read_text().splitlines()]
    assert len(ref) == len(got)
    merged = [{**r, "sec_per_step": g["sec_per_step"]} for r, g in zip(ref, got, strict=True)]
    return "".join(json.dumps(r) + "\n" for r in merged)


def test_resume_refuses_another_recipe(workspace: Path) -> None:
    cfg = load_config(write_config(workspace, "run_once", optim__epochs=1))
    distill(cfg)
    changed = load_config(write_config(workspace, "run_once", optim__epochs=1, optim__lr=1e-3))
    with pytest.raises(ValueError, match=r"another recipe \(optim.lr: 0.002 -> 0.001\)"):
        distill(changed)
    same_but_logging = load_config(write_config(workspace, "run_once", optim__epochs=1,
                                                log_every=1))  # fmt: skip
    assert distill(same_but_logging).steps == 4


def test_config_errors_name_file_and_key(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_config(workspace, "bad", optim__epoch=3)
    with pytest.raises(ValueError, match=r"bad.yaml: optim.epoch: Extra inputs"):
        load_config(path)
    good = write_config(workspace, "good")
    with pytest.raises(ValueError, match=r"--set: optim.batch_size: Input should be a valid int"):
        load_config(good, ["optim.batch_size=many"])
    cfg = load_config(good, ["optim.epochs=2", "teacher.layer=1", "optim.betas=[0.9, 0.99]"])
    assert (cfg.optim.epochs, cfg.teacher.layer, cfg.optim.betas) == (2, 1, (0.9, 0.99))
    assert load_config(good, ["optim.lr=null"]).optim.effective_lr == pytest.approx(
        1.5e-4 * 4 / 256
    )
    assert main(["distill", str(path)]) == 2
    assert "optim.epoch" in capsys.readouterr().err


def test_step_info_reports_each_step(workspace: Path) -> None:
    seen: list[StepInfo] = []
    distill(load_config(write_config(workspace, "run_info", optim__epochs=1)), [seen.append])
    assert [s.step for s in seen] == [1, 2, 3, 4]
    assert seen[0].lr == 0.0  # linear warm-up starts from zero


def test_example_configs_mirror_the_released_recipes() -> None:
    configs = Path(__file__).resolve().parents[2] / "unip" / "configs"
    recipes = {
        "unip-s_mae-l18.yaml": ("mae", "L", 18),
        "unip-s_ibot-l21.yaml": ("ibot", "L", 21),
        "unip-s_dino-b9.yaml": ("dino", "B", 9),
    }
    for name, (adapter, size, layer) in recipes.items():
        cfg = load_config(configs / name)
        assert (cfg.teacher.adapter, cfg.teacher.size, cfg.teacher.layer) == (adapter, size, layer)
        assert cfg.optim.effective_lr == pytest.approx(2.4e-3)
        assert (cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.optim.betas) == (100, 5, (0.9, 0.95))
        assert (cfg.data.img_size, cfg.data.scale, cfg.student.drop_path) == (224, (0.2, 1.0), 0.1)
    tiny = load_config(configs / "tiny-synthetic.yaml")
    assert tiny.teacher.layer is None and tiny.teacher.checkpoint is None


def test_optimiser_and_schedule_follow_the_recipe(workspace: Path) -> None:
    """lr = 1.5e-4 x batch / 256, AdamW (0.9, 0.95), linear warm-up then cosine to 0 per
    iteration, weight decay on weights and the CLS token but not on biases and norms."""
    seen: list[StepInfo] = []
    cfg = load_config(
        write_config(workspace, "run_recipe", optim__epochs=3), ["optim.lr=null"]
    )  # 16 images, batch 4: 4 steps an epoch, 1 epoch of warm-up
    distill(cfg, [seen.append])
    peak = 1.5e-4 * 4 / 256
    total, warmup = 12, 4
    want = [peak * i / warmup for i in range(warmup)] + [
        peak * 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup)))
        for i in range(warmup, total)
    ]
    assert [s.lr for s in seen] == pytest.approx(want, rel=1e-12, abs=1e-15)

    state = torch.load(workspace / "run_recipe" / "checkpoint.pth", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert all(tuple(g["betas"]) == (0.9, 0.95) for g in groups)
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.05]

    student = build_student("T", 6, IMG, depth=2)
    no_decay, decay = distill_param_groups(student.vit.named_parameters(), 1.0, 0.05)
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.05)
    assert "cls_token" in decay["names"] and "blocks.0.attn.qkv.weight" in decay["names"]
    assert "patch_embed.proj.weight" in decay["names"]
    assert all(n.endswith(".bias") or "norm" in n for n in no_decay["names"])
    assert {"blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= set(no_decay["names"])
    trained = {n for n, p in student.vit.named_parameters() if p.requires_grad}
    assert set(decay["names"]) | set(no_decay["names"]) == trained
    assert "pos_embed" not in trained  # fixed sin-cos table


def test_run_time_errors_name_the_source_and_key(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good = write_config(workspace, "run_errors")
    out = workspace / "run_errors"
    # Teacher layer beyond the teacher's blocks: in the file, and through --set.
    deep = write_config(
        workspace, "run_deep", teacher__checkpoint=None, teacher__depth=None, teacher__layer=13
    )  # a random 12-block ViT-S: the depth is only known once it is built
    with pytest.raises(ValueError, match=r"run_deep.yaml: teacher.layer 13 is beyond .* 12 blocks"):
        distill(load_config(deep))
    with pytest.raises(ValueError, match=r"^--set: teacher.layer 5 is beyond"):
        load_config(good, ["teacher.layer=5"])
    # A model-level check reached through --set is blamed on --set, with its key.
    with pytest.raises(ValueError, match=r"^--set: data.img_size: .*multiple of the patch size"):
        load_config(good, ["data.img_size=40"])
    with pytest.raises(ValueError, match=r"^--set: teacher.adapter: unknown adapter"):
        load_config(good, ["teacher.adapter=maee"])
    # A folder with no images, and too few images for a batch.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^--set: data.path: no images .* under .*empty"):
        distill(load_config(good, [f"data.path={tmp_path / 'empty'}"]))
    with pytest.raises(ValueError, match=r"^--set: optim.batch_size 64 is more than the 16"):
        distill(load_config(good, ["optim.batch_size=64"]))
    assert not out.exists() and not (workspace / "run_deep").exists()  # nothing written
    assert main(["distill", str(good), "--set", "teacher.layer=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--set: teacher.layer" in err


def test_a_format_1_checkpoint_still_resumes_and_a_newer_one_is_refused(workspace: Path) -> None:
    """Format 1 (before the shared training engine) kept the main process's RNG states as
    one dict and no elapsed time; such a checkpoint resumes to the uninterrupted student."""
    reference = distill(load_config(write_config(workspace, "run_v1_ref", optim__epochs=3)))

    def stop(info: StepInfo) -> None:
        if info.step == 5:
            raise KeyboardInterrupt

    cfg = load_config(write_config(workspace, "run_v1", optim__epochs=3))
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, [stop])
    ckpt = workspace / "run_v1" / "checkpoint.pth"
    state = torch.load(ckpt, weights_only=True)
    assert state["format"] == "unip-distill/2" and state["step"] == 3
    assert len(state["rng"]) == 1 and state["elapsed_s"] > 0
    state.update(format="unip-distill/1", rng=state["rng"][0])
    del state["elapsed_s"]
    torch.save(state, ckpt)

    assert distill(cfg).steps == 12
    want = torch.load(reference.student_path, weights_only=True)["model"]
    got = torch.load(workspace / "run_v1" / "student.pth", weights_only=True)["model"]
    for key in want:
        assert torch.equal(want[key], got[key]), key

    torch.save({**state, "format": "unip-distill/9"}, ckpt)
    with pytest.raises(ValueError, match=r"checkpoint.pth is a distillation checkpoint of "
                       r"format 'unip-distill/9', which this version cannot resume"):
        distill(cfg)


def test_precision_and_compile_choices(workspace: Path) -> None:
    """One precision policy with the protocols: 'fp16' needs CUDA (an error naming the
    key); YAML booleans read as compile on/off; compile may change on resume."""
    path = write_config(workspace, "run_fp16", mixed_precision="fp16")
    with pytest.raises(ValueError, match=r"run_fp16.yaml: mixed_precision: .*needs a CUDA"):
        distill(load_config(path))
    assert not (workspace / "run_fp16").exists()
    assert load_config(path, ["compile=yes"]).compile == "on"
    assert load_config(path, ["compile=false"]).compile == "off"
    with pytest.raises(ValueError, match=r"--set: compile: Input should be 'auto', 'on' or"):
        load_config(path, ["compile=always"])
    a = load_config(path, ["compile=on"]).model_dump(mode="json")
    assert recipe_differences(a, load_config(path).model_dump(mode="json")) == []


@pytest.mark.skipif(not compile_supported(), reason="torch.compile unsupported")
def test_compiled_distillation_follows_eager(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aot_eager: dynamo and AOTAutograd's tracing without C++ code generation (fast)."""
    monkeypatch.setattr(runtime, "COMPILE_BACKEND", "aot_eager")
    curves = {}
    for mode in ("off", "on"):
        losses: list[float] = []
        cfg = load_config(write_config(workspace, f"run_compile_{mode}", optim__epochs=1,
                                       compile=mode))  # fmt: skip
        distill(cfg, [lambda info, out=losses: out.append(info.loss)])
        curves[mode] = losses
    assert len(curves["on"]) == 4
    assert curves["on"] == pytest.approx(curves["off"], rel=1e-4, abs=1e-6)
    saved = torch.load(workspace / "run_compile_on" / "checkpoint.pth", weights_only=True)
    assert not any("_orig_mod" in k for k in saved["student"])
    plain = torch.load(workspace / "run_compile_off" / "checkpoint.pth", weights_only=True)
    assert list(saved["student"]) == list(plain["student"])
