"""The k-NN probe end to end on synthetic SODA-like data (ViT-T cut to 4 blocks, CPU).

A random-init ViT is enough to test the probe: its patch features still encode each
patch's grey level and texture, which is what separates the synthetic classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from accelerate.utils import set_seed
from protocol_job import MODEL, TINY, dataset, make_soda
from single_thread import one_thread

from bench.protocols import run_protocol
from bench.protocols.registry import register_protocol
from plugins.knn_probe import PROTOCOL, KnnProbeSettings

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

# The tiny pipeline of the other protocol tests: 128 x 171 images, two 128-px windows.
KNN: dict[str, Any] = {
    k: TINY[k] for k in ("crop_size", "scale", "slide_crop", "slide_stride", "num_workers")
}


def enable_knn_probe() -> None:
    """Register the plug-in where its entry point is not installed (a source checkout)."""
    from bench.registry import PROTOCOLS

    if "knn_probe" not in PROTOCOLS:
        register_protocol(PROTOCOL)


@pytest.fixture(scope="module")
def soda(tmp_path_factory):
    return make_soda(tmp_path_factory.mktemp("soda") / "data")


@pytest.fixture(scope="module")
def knn(soda, tmp_path_factory):
    """``run(overrides, name) -> result`` through run_protocol, the plug-in enabled."""
    from bench.registry import PROTOCOLS

    installed = "knn_probe" in PROTOCOLS  # through the entry point
    enable_knn_probe()

    def run(overrides: dict[str, Any], name: str, seed: int = 0) -> dict[str, Any]:
        wd = tmp_path_factory.mktemp(name)
        return run_protocol("knn_probe", MODEL, dataset(soda), {**KNN, **overrides}, wd,
                            seed=seed, progress=False)

    yield run
    if not installed:  # later tests see the registry as it was
        PROTOCOLS.unregister("knn_probe")


@pytest.fixture(scope="module")
def default_run(knn):
    return knn({}, "default")


def label_maps(root, split: str) -> list[np.ndarray]:
    from bench.data import build_dataset

    ds = build_dataset("soda", root, split)
    return [np.asarray(ds.load(i)[1]) for i in range(len(ds))]


def majority_baseline(root) -> dict[str, float]:
    """mIoU and aAcc of painting every test pixel with the training split's most frequent
    class (mmseg semantics: classes absent from prediction and ground truth left out)."""
    train = np.concatenate([m[m != 255].ravel() for m in label_maps(root, "train")])
    top = int(np.bincount(train).argmax())
    test = np.concatenate([m[m != 255].ravel() for m in label_maps(root, "test")])
    hit = float((test == top).sum())
    classes = len(set(np.unique(test).tolist()) | {top})
    return {"mIoU": 100 * hit / test.size / classes, "aAcc": 100 * hit / test.size}


def test_result_records_the_run(default_run):
    r = default_run
    assert r["protocol"] == "knn_probe"
    m = r["metrics"]
    assert {metric.key for metric in PROTOCOL.metrics} <= set(m)
    assert len(m["per_class_iou"]) == 21
    assert r["layer"] == 3  # -1 on a 4-block ViT
    bank = r["bank"]
    # 16 training images, two 128-px windows each (171 wide, stride 96), 8 x 8 patches.
    assert bank["images"] == 16 and bank["views"] == 32
    assert bank["patches"] == bank["labelled_patches"] == 32 * 64  # nothing capped
    assert r["retrieval_gmacs_per_crop"] == pytest.approx(64 * 2048 * 192 / 1e9)
    assert r["settings"]["k"] == 30 and r["settings"]["temperature"] == 0.02


def test_knn_on_a_random_vit_beats_the_majority_baseline(default_run, soda):
    base = majority_baseline(soda)
    m = default_run["metrics"]
    # Measured: 12.2 mIoU and 57.8 aAcc against 2.5 and 37.0.
    assert m["mIoU"] > 4 * base["mIoU"], (m["mIoU"], base)
    assert m["aAcc"] > base["aAcc"] + 15, (m["aAcc"], base)


def test_features_not_label_marginals_make_the_score(knn, default_run, monkeypatch):
    """Control: the same run with the bank's labels permuted across its rows keeps the
    class frequencies but cuts labels from features; it falls to the baseline."""
    from plugins.knn_probe import probe

    build = probe.build_bank

    def permuted(ctx, layer):
        bank = build(ctx, layer)
        order = torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))
        bank.labels = bank.labels[order]
        return bank

    monkeypatch.setattr(probe, "build_bank", permuted)
    control = knn({}, "permuted")["metrics"]
    m = default_run["metrics"]
    # Measured: 4.7 mIoU and 37.4 aAcc.
    assert m["mIoU"] > 2 * control["mIoU"], (m["mIoU"], control["mIoU"])
    assert m["aAcc"] > control["aAcc"] + 15, (m["aAcc"], control["aAcc"])


def test_k1_on_the_training_split_recovers_it(knn, default_run):
    r = knn({"k": 1, "eval_split": "train"}, "k1-train")
    assert r["dataset"]["eval_split"] == "train"
    # Each patch retrieves itself: only sub-patch detail and the bilinear blending at
    # patch borders are lost.
    assert r["metrics"]["aAcc"] > 85
    assert r["metrics"]["mIoU"] > default_run["metrics"]["mIoU"] + 20


def test_same_seed_same_numbers(knn, default_run):
    again = knn({}, "default-again")
    assert again["metrics"] == default_run["metrics"]
    assert again["bank"] == default_run["bank"]


def test_memory_size_caps_the_bank_per_image(knn, default_run):
    r = knn({"memory_size": 160}, "capped")
    assert r["bank"]["patches"] == 160  # 10 of each image's 128 labelled patches
    assert r["bank"]["labelled_patches"] == 32 * 64
    other = knn({"memory_size": 160}, "capped-seed1", seed=1)
    assert other["bank"]["class_patches"] != r["bank"]["class_patches"]


def test_memory_smaller_than_the_image_count_is_refused(knn):
    assert knn({"memory_size": 40, "k": 1}, "two-each")["bank"]["patches"] == 32  # 40 // 16
    with pytest.raises(ValueError, match="'memory_size' = 8 is smaller than the 16 images"):
        knn({"memory_size": 8, "k": 1}, "too-small")


def test_whole_image_inference_reads_whole_images(knn):
    r = knn({"inference": "whole"}, "whole")
    assert r["bank"]["views"] == 16
    assert r["bank"]["patches"] == 16 * 8 * 11  # 128 x 171 padded to 128 x 176
    assert r["inference"]["mode"] == "whole"


def test_k1_retrieves_every_training_patchs_own_label(soda, tmp_path):
    """Patch level, no upsampling: with k = 1 a training patch's nearest bank row is
    itself, so its prediction is the majority class of its pixels, computed here
    independently from the label files."""
    from bench.backbones.adapter import load_backbone
    from bench.data import get_dataset_info
    from bench.data.transforms import Compose, Normalize, Resize
    from bench.protocols.context import RunContext
    from bench.protocols.runtime import make_accelerator
    from plugins.knn_probe.bank import build_bank, view_boxes
    from plugins.knn_probe.probe import KnnPredictor, PatchFeatures

    s = KnnProbeSettings(**KNN, k=1, bank_dtype="float32")
    info = get_dataset_info("soda")
    set_seed(0)
    bb = load_backbone("mae", "tiny", img_size=128, depth=4)
    ctx = RunContext(protocol="knn_probe", settings=s, info=info, dataset=dataset(soda),
                     backbone=bb, accelerator=make_accelerator("no"), workdir=tmp_path,
                     seed=0, fingerprint="test", progress=False)
    bank = build_bank(ctx, 3)
    predict = KnnPredictor(PatchFeatures(bb, 3, True), bank, s)
    ds = ctx.build("train", Compose([Resize(s.scale, resize_label=True),
                                     Normalize(info.mean, info.std)]))
    checked = wrong = 0
    for i in range(len(ds)):
        img, label = ds[i]["img"], ds[i]["label"].numpy()
        for y1, y2, x1, x2 in view_boxes(*img.shape[-2:], s):
            pred = predict.patch_scores(img[None, :, y1:y2, x1:x2])[0].argmax(0).numpy()
            lab = label[y1:y2, x1:x2]
            for r in range(pred.shape[0]):
                for c in range(pred.shape[1]):
                    block = lab[16 * r : 16 * r + 16, 16 * c : 16 * c + 16]
                    block = block[block != 255]
                    if block.size:
                        checked += 1
                        wrong += int(pred[r, c] != np.bincount(block).argmax())
    assert checked == len(bank) == 32 * 64
    assert wrong == 0


def test_k_larger_than_one_is_not_self_retrieval(knn):
    """The control of the test above: with k = 30 on the training split the vote mixes
    in other patches, so the training split is no longer reproduced as well."""
    one = knn({"k": 1, "eval_split": "train"}, "k1-train-control")
    many = knn({"k": 30, "eval_split": "train", "temperature": 1.0}, "k30-train")
    assert many["metrics"]["aAcc"] < one["metrics"]["aAcc"]


def test_bad_layer_fails_naming_the_setting(knn):
    with pytest.raises(ValueError, match="setting 'layer' = 4 is out of range"):
        knn({"layer": 4}, "bad-layer")


def test_retrieval_is_float32_under_bf16_autocast(knn, default_run):
    r = knn({"mixed_precision": "bf16"}, "bf16")
    # bf16 features move the numbers a little, not to chance.
    assert abs(r["metrics"]["mIoU"] - default_run["metrics"]["mIoU"]) < 5
