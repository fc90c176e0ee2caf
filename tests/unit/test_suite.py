"""Suite YAML: schema, includes, and errors that name the file, the line and the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench.suites.load import SuiteError, load_suite

# Fine-tuning is at 2.0, linear probing at 2.1: one line states both.
VERSIONS = 'protocol_versions: {fine_tune: "2.0", linear_probe: "2.1"}'
VALID = """\
suite: unit
protocol_versions: {fine_tune: "2.0", linear_probe: "2.1"}
models:
  - {adapter: mae, size: T}
  - adapter: unip
    size: T
    options: {last_heads: 16}
datasets:
  - name: soda
    root: data/soda
protocols:
  fine_tune: {iters: 10, warmup_iters: 2}
  linear_probe:
seeds: [0, 1]
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(path: Path) -> list[str]:
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    return [str(p) for p in info.value.problems]


def test_valid_suite_loads(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, VALID))
    assert suite.name == "unit"
    assert [m.label for m in suite.spec.models] == ["mae", "unip"]
    assert suite.protocol_settings("linear_probe") == {}
    assert suite.spec.executor.kind == "inline"


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, VALID.replace("seeds: [0, 1]", "seeds: [0, 1"))
    (msg,) = problems(p)
    assert f"{p}:" in msg and "invalid YAML" in msg


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, VALID + "seeds: [3]\n")
    (msg,) = problems(p)
    assert f"{p}:15: seeds: duplicate key (first given on line 14)" in msg


@pytest.mark.parametrize(
    ("old", "new", "line", "expected"),
    [
        ("seeds: [0, 1]", "seeeds: [0, 1]", 14,
         "seeeds: unknown key 'seeeds'. Did you mean 'seeds'?"),
        ("  - adapter: unip", "  - adaptor: unip", 5,
         "models[1].adaptor: unknown key 'adaptor'. Did you mean 'adapter'?"),
        ("    root: data/soda", "    rot: data/soda", 10,
         "datasets[0].rot: unknown key 'rot'. Did you mean 'root'?"),
        ("{adapter: mae, size: T}", "{adapter: maee, size: T}", 4,
         "models[0].adapter: unknown adapter 'maee'"),
        ("  - name: soda", "  - name: sodaa", 9, "datasets[0].name: unknown dataset 'sodaa'"),
        ("  linear_probe:", "  linear_prob:", 13,
         "protocols.linear_prob: unknown protocol 'linear_prob'"),
        ("{iters: 10, warmup_iters: 2}", "{itres: 10, warmup_iters: 2}", 12,
         "protocols.fine_tune.itres: unknown setting 'itres' for protocol fine_tune. "
         "Did you mean 'iters'?"),
        ("    size: T", "    size: XL", 6, "models[1].size: unknown ViT size 'XL'"),
        ("seeds: [0, 1]", "seeds: [zero]", 14, "seeds[0]: Input should be a valid integer"),
        (VERSIONS, 'protocol_version: "0.9"', 2,
         "protocol_version: the suite was written for protocol version '0.9'"),
    ],
)
def test_error_names_file_line_key_and_suggestion(
    tmp_path: Path, old: str, new: str, line: int, expected: str
) -> None:
    assert old in VALID
    p = write(tmp_path, VALID.replace(old, new))
    msgs = problems(p)
    assert any(m.startswith(f"{p}:{line}: {expected}") for m in msgs), msgs


def test_did_you_mean_for_names(tmp_path: Path) -> None:
    msgs = problems(write(tmp_path, VALID.replace("adapter: mae,", "adapter: maee,")
                          .replace("name: soda", "name: sodaa")
                          .replace("linear_probe:", "linear_prob:")))
    text = "\n".join(msgs)
    assert "Did you mean 'mae'" in text
    assert "Did you mean 'soda'" in text
    assert "Did you mean 'linear_probe'" in text


def test_missing_key_points_at_the_enclosing_mapping(tmp_path: Path) -> None:
    p = write(tmp_path, VALID.replace("    size: T\n", ""))
    assert f"{p}:5: models[1].size: missing required key 'size'" in problems(p)


def test_bad_value_is_blamed_on_the_layer_that_set_it(tmp_path: Path) -> None:
    text = VALID.replace(
        "    options: {last_heads: 16}",
        "    options: {last_heads: 16}\n    overrides:\n      fine_tune: {lr: -1}",
    )
    p = write(tmp_path, text)
    msgs = problems(p)
    assert any(m.startswith(f"{p}:9: models[1].overrides.fine_tune.lr: Input should be greater")
               for m in msgs), msgs


def test_dataset_without_schedule_needs_iters(tmp_path: Path) -> None:
    # Every built-in dataset has the paper's schedule; a plug-in dataset may have none.
    from dataclasses import replace

    from bench.data import get_dataset_info, list_datasets
    from bench.registry import DATASETS

    list_datasets()
    DATASETS.register("my_ir", replace(get_dataset_info("soda"), name="my_ir",
                                            protocol_defaults={}))
    try:
        text = VALID.replace("name: soda", "name: my_ir").replace(
            "  fine_tune: {iters: 10, warmup_iters: 2}\n", "")
        p = write(tmp_path, text)
        (msg,) = problems(p)
    finally:
        DATASETS.unregister("my_ir")
    assert msg.startswith(f"{p}:9: datasets[0]: dataset 'my_ir' has no paper schedule")


def test_include_is_merged_and_errors_point_into_it(tmp_path: Path) -> None:
    write(tmp_path, """\
        datasets:
          - {name: soda, root: data/soda}
        protocols:
          fine_tune: {iters: 10, warmup_iters: 2, batch_sise: 2}
        seeds: [7]
        """, "defaults.yaml")
    main = write(tmp_path, """\
        suite: with-include
        protocol_version: "2.0"
        include: defaults.yaml
        models: [{adapter: mae, size: T}]
        protocols:
          fine_tune: {iters: 20}
        """)
    msgs = problems(main)
    assert msgs == [
        f"{tmp_path / 'defaults.yaml'}:4: protocols.fine_tune.batch_sise: unknown setting "
        "'batch_sise' for protocol fine_tune. Did you mean 'batch_size' or 'crop_size'?"
    ]
    (tmp_path / "defaults.yaml").write_text(
        (tmp_path / "defaults.yaml").read_text().replace(", batch_sise: 2", ""))
    suite = load_suite(main)
    assert suite.spec.seeds == [7]  # from the include
    assert suite.protocol_settings("fine_tune") == {"iters": 20, "warmup_iters": 2}  # deep merge
    assert suite.locate(("protocols", "fine_tune", "iters")) == (str(main), 6)
    assert suite.locate(("protocols", "fine_tune", "warmup_iters")) == (
        str(tmp_path / "defaults.yaml"), 4)


def test_nested_include_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "seeds: [1]\n", "base.yaml")
    write(tmp_path, "include: base.yaml\nseeds: [2]\n", "defaults.yaml")
    main = write(tmp_path, VALID + "include: defaults.yaml\n")
    (msg,) = problems(main)
    assert msg.startswith(f"{tmp_path / 'defaults.yaml'}:1: include: included files cannot "
                          "include others")


def test_missing_include(tmp_path: Path) -> None:
    main = write(tmp_path, VALID + "include: nowhere.yaml\n")
    (msg,) = problems(main)
    assert msg.startswith(f"{main}:15: include: included file") and "does not exist" in msg


def test_duplicate_model_is_refused(tmp_path: Path) -> None:
    twice = "  - {adapter: mae, size: T}\n  - {adapter: mae, size: tiny}"
    p = write(tmp_path, VALID.replace("  - {adapter: mae, size: T}", twice))
    assert any("listed twice" in m and f"{p}:5:" in m for m in problems(p))


def test_shipped_suites_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "suites"
    paths = [root / "demo.yaml", *sorted((root / "paper").glob("*.yaml"))]
    loaded = [load_suite(p) for p in paths if p.name != "infrared_defaults.yaml"]
    assert {s.name for s in loaded} == {
        "demo", "paper-infrared-finetune", "paper-infrared-linear-probe",
        "paper-layerwise-rgb-depth",
    }


def test_merge_keys_may_be_overridden_and_keep_their_lines(tmp_path: Path) -> None:
    text = VALID.replace(
        "  fine_tune: {iters: 10, warmup_iters: 2}\n  linear_probe:\n",
        "  fine_tune: &short\n    iters: 10\n    warmup_iters: 2\n"
        "  linear_probe:\n    <<: *short\n    iters: 20\n    itres: 3\n",
    )
    p = write(tmp_path, text)
    (msg,) = problems(p)  # the override of a merged key is fine, the typo is not
    assert msg.startswith(f"{p}:18: protocols.linear_probe.itres: unknown setting")
    p.write_text(text.replace("    itres: 3\n", ""))
    suite = load_suite(p)
    assert suite.protocol_settings("linear_probe") == {"iters": 20, "warmup_iters": 2}
    assert suite.locate(("protocols", "linear_probe", "iters")) == (str(p), 17)
    assert suite.locate(("protocols", "linear_probe", "warmup_iters")) == (str(p), 14)


def test_blocks_the_model_lacks_are_an_error_before_any_run(tmp_path: Path) -> None:
    # The paper's blocks [3, 5, 7, 11] on a 4-block test model: blamed on its depth.
    text = VALID.replace("{adapter: mae, size: T}", "{adapter: mae, size: T, options: {depth: 4}}")
    msgs = problems(write(tmp_path, text))
    assert len(msgs) == 2  # fine_tune (multilevel neck) and linear_probe, not unip's LL-FPN
    assert all(":4: models[0].options.depth: blocks [5, 7, 11] of [3, 5, 7, 11] are out of "
               "range" in m for m in msgs)
    # Blocks the suite sets are blamed on that line; blocks within range are fine.
    text = text.replace("linear_probe:\n", "linear_probe: {layers: [0, 1, 2, 4]}\n")
    text = text.replace("warmup_iters: 2}", "warmup_iters: 2, layers: [0, 1, 2, -1]}")
    (msg,) = problems(write(tmp_path, text))
    assert ":13: protocols.linear_probe.layers: blocks [4] of [0, 1, 2, 4]" in msg
    # ViT-L reads [7, 11, 15, 23] by default: in range for 24 blocks.
    load_suite(write(tmp_path, VALID.replace("{adapter: mae, size: T}", "{adapter: mae, size: L}")))


def test_misspelt_choice_gets_a_suggestion(tmp_path: Path) -> None:
    (msg,) = problems(write(tmp_path, VALID + "executor: {kind: slurn}\n"))
    assert ":15: executor.kind: Input should be 'inline', 'local' or 'slurm' (got 'slurn')." \
        " Did you mean 'slurm'?" in msg
    text = VALID.replace("warmup_iters: 2}", "warmup_iters: 2, inference: slid}")
    (msg,) = problems(write(tmp_path, text))
    assert ":12: protocols.fine_tune.inference: Input should be 'slide' or 'whole' " \
        "(got 'slid'). Did you mean 'slide'?" in msg


# ---------------------------------------------------------------- protocol versions
@pytest.mark.parametrize(
    ("old", "new", "line", "expected"),
    [
        (VERSIONS, "description: no version", 12,
         "protocols.fine_tune: no version stated for protocol fine_tune; add "
         'protocol_version: "2.0"'),
        (VERSIONS, 'protocol_versions: {fine_tun: "2.0"}', 2,
         "protocol_versions.fine_tun: unknown protocol 'fine_tun'"),
        (VERSIONS, 'protocol_versions: {ft: "2.0"}', 2,
         "protocol_versions.ft: write the protocol as 'fine_tune'"),
        (VERSIONS,
         'protocol_version: "2.0"\nprotocol_versions: {linear_probe: "1.0"}', 3,
         "protocol_versions.linear_probe: the suite was written for linear_probe version "
         "'1.0', this unip-bench implements '2.1'"),
    ],
)
def test_protocol_version_problems_name_the_key(
    tmp_path: Path, old: str, new: str, line: int, expected: str
) -> None:
    p = write(tmp_path, VALID.replace(old, new))
    msgs = problems(p)
    assert any(m.startswith(f"{p}:{line}: {expected}") for m in msgs), msgs


def test_per_protocol_versions_replace_or_refine_the_shared_one(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, VALID))  # both named in protocol_versions
    assert suite.spec.protocol_version is None
    assert suite.spec.protocol_versions == {"fine_tune": "2.0", "linear_probe": "2.1"}
    # One protocol named, the others through protocol_version.
    mixed = 'protocol_version: "2.0"\nprotocol_versions: {linear_probe: "2.1"}'
    assert load_suite(write(tmp_path, VALID.replace(VERSIONS, mixed)))
