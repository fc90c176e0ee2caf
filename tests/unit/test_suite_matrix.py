"""Run matrix: expansion order, stable run ids, what changes them, --only patterns."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from bench.checkpoints.reader import DigestCache
from bench.suites.load import SuiteError, load_suite
from bench.suites.matrix import expand

SUITE = """\
suite: {name}
protocol_versions: {{fine_tune: "2.0", linear_probe: "2.1"}}
models:
  - {{adapter: mae, size: T{ckpt}}}
  - {{adapter: deit, size: S, name: {label}}}
datasets:
  - {{name: soda, root: {root}}}
  - {{name: mfnet_thermal, root: data/mfnet}}
protocols:
  fine_tune: {{iters: {iters}, warmup_iters: 2}}
  linear_probe: {{iters: 10, warmup_iters: 2}}
seeds: [0, 1]
"""


def suite_file(tmp_path: Path, name: str = "a", label: str = "deit", root: str = "data/soda",
               iters: int = 10, ckpt: str = "", fname: str = "s.yaml") -> Path:
    p = tmp_path / fname
    extra = f", checkpoint: {ckpt}" if ckpt else ""
    p.write_text(textwrap.dedent(SUITE.format(name=name, label=label, root=root, iters=iters,
                                              ckpt=extra)))
    return p


def ids(path: Path, cache: DigestCache | None = None) -> list[str]:
    return [r.run_id for r in expand(load_suite(path), cache)]


def test_expansion_order_and_labels(tmp_path: Path) -> None:
    runs = expand(load_suite(suite_file(tmp_path)))
    assert len(runs) == 2 * 2 * 2 * 2
    assert runs[0].label == "mae-T/soda/fine_tune/s0"
    assert runs[1].label == "mae-T/soda/fine_tune/s1"
    assert runs[2].label == "mae-T/soda/linear_probe/s0"
    assert runs[-1].label == "deit-S/mfnet_thermal/linear_probe/s1"
    assert len({r.run_id for r in runs}) == len(runs)
    ft = runs[0]
    assert ft.settings["iters"] == 10 and ft.settings["crop_size"] == 512  # paper default
    assert ft.dataset_root == str((Path.cwd() / "data/soda").resolve())
    assert ft.checkpoint is None and ft.size == "tiny"


def test_ids_are_stable_and_ignore_labels_paths_and_suite_name(tmp_path: Path) -> None:
    base = ids(suite_file(tmp_path))
    assert ids(suite_file(tmp_path)) == base
    renamed = ids(suite_file(tmp_path, name="other", label="deit_renamed", root="/elsewhere"))
    assert renamed == base


def test_ids_change_with_settings_seed_and_version(tmp_path: Path) -> None:
    base = ids(suite_file(tmp_path))
    changed = ids(suite_file(tmp_path, iters=11))
    # fine-tuning runs change, linear-probing runs do not
    assert [a != b for a, b in zip(base, changed, strict=True)][:4] == [True, True, False, False]


def test_bumping_one_protocols_version_changes_only_its_run_ids(tmp_path: Path) -> None:
    from dataclasses import replace

    from bench.protocols.registry import get_protocol, register_protocol

    base = expand(load_suite(suite_file(tmp_path)))
    original = get_protocol("fine_tune")
    register_protocol(replace(original, version="9.9"), overwrite=True)
    try:
        p = suite_file(tmp_path)
        with pytest.raises(SuiteError, match="fine_tune version '2.0', this .* implements '9.9'"):
            load_suite(p)
        p.write_text(p.read_text().replace(
            'protocol_versions: {fine_tune: "2.0", linear_probe: "2.1"}',
            'protocol_versions: {fine_tune: "9.9", linear_probe: "2.1"}'))
        bumped = expand(load_suite(p))
    finally:
        register_protocol(original, overwrite=True)
    assert [r.label for r in bumped] == [r.label for r in base]
    for old, new in zip(base, bumped, strict=True):
        if old.protocol == "fine_tune":
            assert new.run_id != old.run_id and new.protocol_version == "9.9"
        else:
            assert new.run_id == old.run_id and new.protocol_version == "2.1"


def test_ids_ignore_what_a_run_keeps_on_disk(tmp_path: Path) -> None:
    """keep_training_state / save_final_weights change files kept, not results."""
    base = expand(load_suite(suite_file(tmp_path)))
    p = suite_file(tmp_path)
    p.write_text(p.read_text().replace(
        "warmup_iters: 2}", "warmup_iters: 2, keep_training_state: true, "
        "save_final_weights: true}"
    ))
    kept = expand(load_suite(p))
    assert kept[0].settings["keep_training_state"] is True
    assert [r.run_id for r in kept] == [r.run_id for r in base]


def test_ids_follow_checkpoint_content_not_path(tmp_path: Path) -> None:
    ck = tmp_path / "w.pth"
    ck.write_bytes(b"weights-1")
    cache = DigestCache(tmp_path / "digests")
    first = ids(suite_file(tmp_path, ckpt=str(ck)), cache)
    moved = tmp_path / "moved.pth"
    moved.write_bytes(b"weights-1")
    assert ids(suite_file(tmp_path, ckpt=str(moved)), cache)[:8] == first[:8]
    ck.write_bytes(b"weights-2")
    os.utime(ck, ns=(1, 1))  # a new mtime: the cache must not serve the old hash
    assert ids(suite_file(tmp_path, ckpt=str(ck)), cache)[:8] != first[:8]
    random_init = ids(suite_file(tmp_path))
    assert random_init[:8] != first[:8]
    assert len(list((tmp_path / "digests").glob("*.json"))) == 2  # w.pth and moved.pth


def test_given_sha256_is_used_without_hashing(tmp_path: Path) -> None:
    digest = "ab" * 32
    p = suite_file(tmp_path, ckpt=f"missing.pth, sha256: {'AB' * 32}")
    runs = expand(load_suite(p))
    assert runs[0].checkpoint_sha256 == digest
    assert runs[0].identity["model"]["weights"] == digest


@pytest.mark.parametrize(
    ("pattern", "count"),
    [
        ("mae", 8),  # exact model name, not crossmae-like substrings
        ("deit-S/*", 8),
        ("*/soda/fine_tune/*", 4),
        ("linear_probe", 8),
        ("mae-T/soda/*/s1,deit-S/mfnet_thermal/fine_tune/s0", 3),
        ("ma", 0),
    ],
)
def test_only_patterns(tmp_path: Path, pattern: str, count: int) -> None:
    runs = expand(load_suite(suite_file(tmp_path)))
    assert sum(r.matches(pattern) for r in runs) == count


def test_only_by_run_id_prefix(tmp_path: Path) -> None:
    runs = expand(load_suite(suite_file(tmp_path)))
    assert [r for r in runs if r.matches(runs[3].run_id[:8])] == [runs[3]]
