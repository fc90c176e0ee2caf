"""The cached linear probe's feature cache: what it holds, when it is reused, when rebuilt.

Tiny real runs: ViT-T cut to 2 blocks from a weights file, 32 x 43 synthetic SODA images
(4 training images, centre-cropped to 32), blocks [0, 1, 1, 1], two steps. The result is
deleted between runs so that the same workdir trains again with its cache kept
(``keep_training_state``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from single_thread import one_thread
from timm.models.vision_transformer import VisionTransformer

from bench.backbones.adapter import load_backbone
from bench.data import build_dataset, get_dataset_info
from bench.data.synth import synthesize
from bench.data.transforms import test_transform
from bench.protocols import feature_cache, run_protocol

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

LAYERS = [0, 1, 1, 1]
CROP = 32
# Scale (64, 32) leaves a 32 x 43 image as it is, so the cache's crop is columns 5:37.
SETTINGS = {
    "mode": "cached", "sweep_lrs": [1e-3], "iters": 2, "warmup_iters": 1, "batch_size": 2,
    "num_workers": 0, "crop_size": CROP, "scale": [64, 32], "inference": "whole",
    "layers": LAYERS, "eval_interval": 0, "checkpoint_interval": 0,
    "keep_training_state": True,
}


def tiny_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    vit = VisionTransformer(embed_dim=192, depth=2, num_heads=3, num_classes=0)
    torch.save({"model": vit.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache") / "soda"
    synthesize("soda", root, train=4, test=2, size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tiny_weights(tmp_path_factory.mktemp("weights") / "a.pth", seed=0)


@pytest.fixture
def cropped(monkeypatch) -> list[int]:
    """One entry per image the cache computes features for (its centre crop)."""
    calls: list[int] = []
    real = feature_cache.centre_crop

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "centre_crop", counting)
    return calls


def train(root: Path, ckpt: Path, workdir: Path, **overrides) -> dict:
    model = {"adapter": "mae", "size": "tiny", "checkpoint": str(ckpt),
             "options": {"depth": 2}}
    result = run_protocol("linear_probe", model, {"name": "soda", "root": str(root)},
                          {**SETTINGS, **overrides}, workdir, progress=False)
    (workdir / "result.json").unlink()  # the next call trains again, next to the cache
    return result


def cache_files(workdir: Path) -> tuple[Path, Path, Path]:
    d = workdir / "feature_cache"
    return (d / "rank0of1.features.npy", d / "rank0of1.labels.npy", d / "rank0of1.done.json")


def test_cached_features_are_the_backbones_live_features(data, weights, tmp_path, cropped):
    result = train(data, weights, tmp_path)
    assert len(cropped) == 4 and result["cached_images"] == 4
    feat_path, label_path, done = cache_files(tmp_path)
    cached = np.load(feat_path)
    labels = np.load(label_path)
    assert cached.dtype == np.float16 and cached.shape == (4, 4 * 192, 2, 2)
    assert labels.dtype == np.uint8 and labels.shape == (4, CROP, CROP)
    assert f'"fingerprint": "{result["fingerprint"]}"' in done.read_text()

    # Live: the test pipeline's image, cropped here, through a freshly loaded backbone.
    info = get_dataset_info("soda")
    live_set = build_dataset("soda", data, "train", transform=test_transform(info, (64, 32)))
    bb = load_backbone("mae", "tiny", str(weights), img_size=CROP, depth=2).eval()
    for i in range(4):
        sample = live_set[i]
        assert tuple(sample["img"].shape) == (3, 32, 43)
        crop = sample["img"][:, :, 5:37]
        with torch.no_grad():
            live = torch.cat(bb.features(crop[None], LAYERS), dim=1)[0].numpy()
        # float16 storage: half a unit in the 11th bit, relative.
        np.testing.assert_allclose(cached[i].astype(np.float32), live, rtol=1e-3, atol=1e-3)
        png = data / "SegmentationClassPNG" / f"{sample['name']}.png"
        np.testing.assert_array_equal(labels[i], np.array(Image.open(png))[:, 5:37])
    assert not np.allclose(cached[0], cached[1], atol=1e-2)  # images differ, so must rows


def test_a_second_run_reuses_the_cache(data, weights, tmp_path, cropped):
    first = train(data, weights, tmp_path)
    feat_path, _, _ = cache_files(tmp_path)
    before = feat_path.stat().st_mtime_ns, feat_path.read_bytes()
    again = train(data, weights, tmp_path)
    assert len(cropped) == 4  # no image went through the backbone the second time
    assert (feat_path.stat().st_mtime_ns, feat_path.read_bytes()) == before
    assert again["fingerprint"] == first["fingerprint"]
    assert again["lr_sweep"] == first["lr_sweep"]  # same features, same seed: same heads


def test_changed_settings_weights_or_data_rebuild_the_cache(data, tmp_path, cropped):
    root = tmp_path / "soda"
    shutil.copytree(data, root)
    ckpt = tiny_weights(tmp_path / "w.pth", seed=0)
    wd = tmp_path / "work"
    feat_path, _, done = cache_files(wd)

    def rebuilt_by(step: str, **kwargs) -> np.ndarray:
        n = len(cropped)
        result = train(root, ckpt, wd, **kwargs)
        assert len(cropped) == n + 4, f"{step}: the cache was not rebuilt"
        assert f'"fingerprint": "{result["fingerprint"]}"' in done.read_text(), step
        return np.load(feat_path).astype(np.float32)

    base = rebuilt_by("first run")
    # Settings: float32 storage. Same numbers, up to float16 rounding.
    as_f32 = rebuilt_by("cache_dtype", cache_dtype="float32")
    assert np.load(feat_path).dtype == np.float32
    np.testing.assert_allclose(base, as_f32, rtol=1e-3, atol=1e-3)
    # Weights: the same file name, other weights.
    tiny_weights(ckpt, seed=1)
    other_weights = rebuilt_by("weights", cache_dtype="float32")
    assert not np.allclose(other_weights, as_f32, atol=1e-2)
    # Data: one training image replaced under the same name.
    jpg = root / "JPEGImages" / "train_00002.jpg"
    Image.open(jpg).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(jpg)
    other_data = rebuilt_by("data", cache_dtype="float32")
    row = [p.strip() for p in (root / "train_infrared.txt").read_text().split()].index(
        "train_00002")
    assert not np.allclose(other_data[row], other_weights[row], atol=1e-2)
    others = [i for i in range(4) if i != row]
    np.testing.assert_array_equal(other_data[others], other_weights[others])
    # A cache without its completion record (a run killed while caching) is not trusted.
    done.unlink()
    np.testing.assert_array_equal(rebuilt_by("unfinished", cache_dtype="float32"), other_data)
