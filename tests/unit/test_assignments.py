"""``KEY=VALUE`` items: YAML-typed values, one-line errors naming the flag and the item."""

from __future__ import annotations

import pytest

from bench.assignments import parse_assignments
from bench.cli import main


def test_values_are_typed_as_yaml_reads_them() -> None:
    # Expected values are YAML 1.1's (PyYAML) reading of each text, as in a suite file.
    got = parse_assignments([
        "iters=2000", "lr=0.0001", "betas=[0.9, 0.95]", "mixed_precision=no",
        "aux_head=", "head=null", "neck= multilevel ", "name=a=b", " depth = 2",
        "label='007'", "lr_text=1e-4",
    ])
    assert got == {
        "iters": 2000, "lr": 0.0001, "betas": [0.9, 0.95], "mixed_precision": False,
        "aux_head": None, "head": None, "neck": "multilevel", "name": "a=b", "depth": 2,
        "label": "007", "lr_text": "1e-4",  # YAML 1.1 floats need a dot; pydantic reads it
    }


def test_dotted_keys_are_kept_and_a_later_item_wins() -> None:
    assert parse_assignments(["optim.epochs=2", "seed=1", "optim.epochs=3"]) == {
        "optim.epochs": 3, "seed": 1,
    }
    assert parse_assignments(None) == {} == parse_assignments([])


@pytest.mark.parametrize("item", ["iters", "=3", " =3"])
def test_an_item_without_key_or_equals_is_named(item: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_assignments(["iters=2", item], "--option")
    assert str(info.value) == f"--option {item!r}: expected KEY=VALUE"


def test_the_example_is_shown_when_given() -> None:
    with pytest.raises(ValueError, match=r"^--set 'epochs': expected KEY=VALUE "
                       r"\(e\.g\. optim\.epochs=2\)$"):
        parse_assignments(["epochs"], example="optim.epochs=2")


@pytest.mark.parametrize("value", ["[1,", "@home", "a: b: c"])
def test_unreadable_yaml_is_one_line_naming_the_item(value: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_assignments([f"layers={value}"])
    msg = str(info.value)
    assert msg.startswith(f"--set 'layers={value}': the value is not valid YAML (")
    assert "\n" not in msg and msg.endswith("put it in quotes to pass it as text")
    assert parse_assignments([f"layers='{value}'"]) == {"layers": value}


def test_commands_report_a_bad_item_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "--adapter", "mae", "--size", "T", "--option", "depth"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "unipbench flops: error: --option 'depth': expected KEY=VALUE"
