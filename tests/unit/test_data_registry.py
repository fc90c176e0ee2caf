"""The dataset registry: the six built-ins, their conventions, lookups and plug-ins."""

from __future__ import annotations

import pytest

from bench.data import (
    DatasetError,
    DatasetInfo,
    Layout,
    UnknownDatasetError,
    get_dataset_info,
    list_datasets,
)
from bench.registry import DATASETS

EXPECTED = {
    # name: (num_classes, modality, reduce_zero_label, default eval split)
    "soda": (21, "infrared", False, "test"),
    "mfnet_thermal": (9, "infrared", False, "test"),
    "scut_seg": (10, "infrared", False, "val"),
    "ade20k": (150, "rgb", True, "val"),
    "nyuv2_depth": (40, "depth", True, "test"),
    "sunrgbd_depth": (37, "depth", True, "test"),
}


def test_builtins_are_registered_with_their_conventions() -> None:
    assert set(EXPECTED) <= set(list_datasets())
    for name, (n, modality, rzl, eval_split) in EXPECTED.items():
        info = get_dataset_info(name)
        assert (info.num_classes, info.modality, info.reduce_zero_label) == (n, modality, rzl)
        assert info.default_eval_split == eval_split and eval_split in info.splits
        assert info.ignore_index == 255
        assert len(set(info.classes)) == n, f"{name} has duplicate class names"
        assert len(info.mean) == len(info.std) == 3


def test_infrared_sets_use_the_released_segmentation_statistics() -> None:
    # UNIP_segmentation/configs/_base_/datasets/{soda,mfnet,scut_seg}.py: img_norm_cfg
    # mean 96.9255, std 47.8976 (0-255 units); 0.1871 is the pre-training std.
    for name in ("soda", "mfnet_thermal", "scut_seg"):
        info = get_dataset_info(name)
        assert [m * 255 for m in info.mean] == pytest.approx([96.9255] * 3, abs=1e-9)
        assert [s * 255 for s in info.std] == pytest.approx([47.8976] * 3, abs=1e-9)
        assert info.std[0] == pytest.approx(0.18783, abs=5e-6)
    assert get_dataset_info("ade20k").mean == (0.485, 0.456, 0.406)


def test_class_lists_start_where_the_labels_do() -> None:
    assert get_dataset_info("soda").classes[:3] == ("background", "person", "building")
    assert get_dataset_info("mfnet_thermal").classes[-1] == "bump"
    assert get_dataset_info("ade20k").classes[:3] == ("wall", "building", "sky")
    assert get_dataset_info("ade20k").classes[-1] == "flag"
    nyu = get_dataset_info("nyuv2_depth").classes
    assert nyu[:37] == get_dataset_info("sunrgbd_depth").classes


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownDatasetError) as err:
        get_dataset_info("sodaa")
    assert "unknown dataset 'sodaa'" in str(err.value)
    assert "Did you mean 'soda'?" in str(err.value)
    # Callers catching either the registry's KeyError or a user ValueError both see it.
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)


def test_unknown_layout_suggests_the_closest() -> None:
    with pytest.raises(DatasetError, match="no layout 'thermall'.*Did you mean 'thermal'"):
        get_dataset_info("mfnet_thermal").layout("thermall")


def test_a_plugin_dataset_is_found_like_a_builtin() -> None:
    lay = Layout(
        "flat", "images/ + labels/", "images", "labels", ".png", ".png", {"train": "t.txt"}
    )
    info = DatasetInfo(
        name="my_ir",
        title="plug-in",
        classes=("bg", "hot"),
        modality="infrared",
        mean=(0.5,) * 3,
        std=(0.2,) * 3,
        layouts=(lay,),
        splits=("train",),
        default_eval_split="train",
    )
    list_datasets()  # built-ins first, as a real session would
    DATASETS.register("my_ir", info)
    try:
        assert "my_ir" in list_datasets()
        assert get_dataset_info("my_ir").num_classes == 2
    finally:
        DATASETS.unregister("my_ir")


def test_inconsistent_info_is_refused() -> None:
    lay = get_dataset_info("soda").layouts[0]
    with pytest.raises(ValueError, match="split 'val' is not one of"):
        DatasetInfo(
            "x", "x", ("a", "b"), "rgb", (0,) * 3, (1,) * 3, (lay,), ("train", "test"), "val"
        )
