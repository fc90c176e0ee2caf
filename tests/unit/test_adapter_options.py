"""Adapter options are checked: a misspelt option must not silently build another model."""

from __future__ import annotations

import pytest
import torch

from bench.backbones.adapter import AdapterError, load_backbone


def test_misspelt_option_is_refused_with_a_suggestion() -> None:
    with pytest.raises(AdapterError, match=r"no option 'depht'.*Did you mean 'depth'"):
        load_backbone("mae", "T", img_size=32, depht=2)


def test_option_of_another_adapter_is_refused() -> None:
    with pytest.raises(AdapterError, match=r"adapter 'dino' has no option 'last_heads'"):
        load_backbone("dino", "T", img_size=32, last_heads=16)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4", True])
def test_depth_must_be_a_positive_whole_number(bad: object) -> None:
    with pytest.raises(AdapterError, match="depth="):
        load_backbone("mae", "T", img_size=32, depth=bad)


def test_known_options_build_what_they_say() -> None:
    bb = load_backbone("unip", "T", img_size=32, depth=3, last_heads=6)
    assert bb.depth == 3 and bb.num_heads == [3, 3, 6]


def test_features_of_no_blocks_is_a_clear_error() -> None:
    bb = load_backbone("mae", "T", img_size=32, depth=2)
    with pytest.raises(ValueError, match="no block indices"):
        bb.features(torch.zeros(1, 3, 32, 32), [])
