"""An unknown name reads the same everywhere: what is unknown, what is known, the closest."""

from __future__ import annotations

import pytest

from bench.backbones.adapter import AdapterError, check_options, get_adapter
from bench.data import get_dataset_info
from bench.data.spec import DatasetError
from bench.protocols.config import canonical_protocol
from bench.registry import Registry, RegistryError, literal_hint, unknown_name_message


def test_the_sentence_lists_the_known_names_and_the_closest() -> None:
    assert unknown_name_message("dataset", "sodaa", ["mfnet_thermal", "soda"]) == (
        "unknown dataset 'sodaa'; known: mfnet_thermal, soda. Did you mean 'soda'?"
    )
    assert unknown_name_message("neck", "xyz", ["multilevel", "identity"]) == (
        "unknown neck 'xyz'; known: multilevel, identity."
    )
    assert unknown_name_message("heads", "fcn", []) == "unknown heads 'fcn'; known: none."


def test_an_owner_says_what_has_no_such_name() -> None:
    assert unknown_name_message("layout", "thermall", ["rgbt", "thermal"],
                                owner="dataset 'mfnet_thermal'") == (
        "dataset 'mfnet_thermal' has no layout 'thermall'; known: rgbt, thermal. "
        "Did you mean 'thermal'?"
    )


def test_suggestions_may_come_from_more_names_than_are_listed() -> None:
    msg = unknown_name_message("protocol", "ft_tune", ["fine_tune"], suggest=["ft", "finetune"])
    assert msg == "unknown protocol 'ft_tune'; known: fine_tune. Did you mean 'finetune'?"


def test_registries_datasets_layouts_adapters_and_protocols_use_it() -> None:
    reg: Registry = Registry("widgets", group="unipbench.test-no-such-group")
    reg.register("spanner", object())
    with pytest.raises(RegistryError) as info:
        reg.get("spaner")
    assert str(info.value) == "unknown widgets 'spaner'; known: spanner. Did you mean 'spanner'?"

    with pytest.raises(DatasetError) as info:
        get_dataset_info("mfnet")
    assert str(info.value) == (
        "unknown dataset 'mfnet'; known: ade20k, mfnet_thermal, nyuv2_depth, scut_seg, soda, "
        "sunrgbd_depth. Did you mean 'mfnet_thermal'?"
    )
    with pytest.raises(DatasetError, match=r"^dataset 'mfnet_thermal' has no layout 'rgb'; "
                       r"known: rgbt, thermal\. Did you mean 'rgbt'\?$"):
        get_dataset_info("mfnet_thermal").layout("rgb")

    mae = get_adapter("mae")
    with pytest.raises(AdapterError, match=r"^adapter 'mae' has no option 'dpeth'; known: "
                       r"depth, patch_size\. Did you mean 'depth'\?$"):
        check_options(mae, {"dpeth": 2})
    with pytest.raises(AdapterError, match=r"^adapter 'mae' has no checkpoint format 'tim'; "
                       r"known: pretrain, timm, hf\. Did you mean 'timm'\?$"):
        mae.format("tim")

    with pytest.raises(ValueError) as info:
        canonical_protocol("fine tunning")
    assert str(info.value) == (
        "unknown protocol 'fine tunning'; known: fine_tune, knn_probe, layerwise_probe, "
        "linear_probe. Did you mean 'finetune' or 'fine_tune'?"
    )


def test_a_misspelt_literal_gets_the_closest_choice() -> None:
    from typing import Literal

    from pydantic import BaseModel, ValidationError

    class Inference(BaseModel):
        mode: Literal["slide", "whole"]

    with pytest.raises(ValidationError) as info:
        Inference(mode="slid")
    assert literal_hint(info.value.errors()[0]) == ". Did you mean 'slide'?"
    with pytest.raises(ValidationError) as info:
        Inference(mode=3)
    assert literal_hint(info.value.errors()[0]) == ""
    assert literal_hint({"type": "missing", "input": "x"}) == ""
