"""Run identity: the data fingerprint, ids that follow the data, a done record written once."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from bench.cli import main
from bench.data import dataset_fingerprint
from bench.data.dataset import CONTENT_SAMPLE
from bench.identity import data_content, differences, matched_on
from bench.results.store import append_record, read_records
from bench.suites.load import load_suite
from bench.suites.matrix import expand

SUITE = """\
suite: ident
protocol_version: "2.1"
models:
  - {{adapter: mae, size: T, options: {{depth: 2}}}}
datasets:
  - {{name: soda, root: {root}}}
protocols:
  linear_probe: {{iters: 2, warmup_iters: 1, crop_size: 32, layers: [0, 1, 1, 1]}}
seeds: [0]
"""


def synth(root: Path, seed: int = 0, train: int = 4) -> Path:
    """A synthetic SODA written by the command users run, ``unipbench data synth``."""
    rc = main(["data", "synth", "--like", "soda", "--root", str(root), "--train", str(train),
               "--test", "2", "--size", "32", "--seed", str(seed)])
    assert rc == 0
    return root


def same_size_edit(path: Path) -> bytes:
    """Change the file's bytes, not its size; returns the original bytes."""
    data = path.read_bytes()
    path.write_bytes(bytes(255 - b for b in data))
    return data


def ids_at(tmp_path: Path, root: Path) -> list[str]:
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(SUITE.format(root=root)))
    return [r.run_id for r in expand(load_suite(p))]


def test_fingerprint_stays_when_moved_copied_or_touched(tmp_path: Path) -> None:
    a = synth(tmp_path / "a")
    fp = dataset_fingerprint("soda", a, "train")
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)  # new mtimes: a copy is the same data
    for f in copy.rglob("*"):
        os.utime(f, ns=(1, 1))
    assert dataset_fingerprint("soda", copy, "train") == fp
    moved = tmp_path / "moved" / "soda"
    moved.parent.mkdir()
    shutil.move(str(copy), moved)
    assert dataset_fingerprint("soda", moved, "train") == fp
    # The same command and seed writes the same data elsewhere: the same fingerprint.
    assert dataset_fingerprint("soda", synth(tmp_path / "again"), "train") == fp


def test_fingerprint_sees_other_images_of_the_same_names_and_sizes(tmp_path: Path) -> None:
    a = synth(tmp_path / "a")
    fps = {s: dataset_fingerprint("soda", a, s) for s in ("train", "test")}
    img = sorted((a / "JPEGImages").glob("train_*"))[1]
    same_size_edit(img)
    assert dataset_fingerprint("soda", a, "train") != fps["train"]
    assert dataset_fingerprint("soda", a, "test") == fps["test"]  # other split untouched
    # Another seed's images: different data under the same file names.
    b = synth(tmp_path / "b", seed=1)
    assert sorted(p.name for p in (b / "JPEGImages").iterdir()) == sorted(
        p.name for p in (a / "JPEGImages").iterdir())
    assert dataset_fingerprint("soda", b, "test") != fps["test"]


def test_fingerprint_samples_content_of_a_large_split(tmp_path: Path) -> None:
    """Names and sizes of every file, bytes of CONTENT_SAMPLE evenly spaced pairs: in a
    split of 20, a same-size edit of 16 images is seen and of 4 is not (the bounded cost's
    price, documented in docs/suites.md); a size change of any file is always seen."""
    n = CONTENT_SAMPLE + 4
    a = synth(tmp_path / "a", train=n)
    fp = dataset_fingerprint("soda", a, "train")
    images = sorted((a / "JPEGImages").glob("train_*"))
    assert len(images) == n
    unseen = []
    for img in images:
        original = same_size_edit(img)
        if dataset_fingerprint("soda", a, "train") == fp:
            unseen.append(img)
        img.write_bytes(original)
    assert len(unseen) == n - CONTENT_SAMPLE
    assert images[0] not in unseen and images[-1] not in unseen  # both ends are sampled
    assert dataset_fingerprint("soda", a, "train") == fp
    with open(unseen[0], "ab") as f:
        f.write(b"\0")
    assert dataset_fingerprint("soda", a, "train") != fp


def test_run_ids_follow_the_data_not_its_path(tmp_path: Path) -> None:
    a = synth(tmp_path / "a")
    base = ids_at(tmp_path, a)
    shutil.copytree(a, tmp_path / "elsewhere")
    assert ids_at(tmp_path, tmp_path / "elsewhere") == base
    other = synth(tmp_path / "b", seed=1)
    assert not set(ids_at(tmp_path, other)) & set(base)
    # Missing data: an id that names no path, and none of a present dataset's.
    missing = ids_at(tmp_path, tmp_path / "nowhere")
    assert missing == ids_at(tmp_path, tmp_path / "nowhere-else")
    assert not set(missing) & set(base)


def test_identity_says_what_it_matched_on_and_what_changed(tmp_path: Path) -> None:
    a, b = synth(tmp_path / "a"), synth(tmp_path / "b", seed=1)
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(SUITE.format(root=a)))
    (run_a,) = expand(load_suite(p))
    p.write_text(textwrap.dedent(SUITE.format(root=b)))
    (run_b,) = expand(load_suite(p))
    content_a = data_content("soda", a, ["train", "test"])
    assert run_a.identity["dataset"]["content"] == content_a
    line = matched_on(run_a.identity)
    assert line.startswith("random init, data train " + content_a["train"][:12])
    assert "protocol 2.1" in line and "seed 0" in line
    diff = differences(run_a.identity, run_b.identity)
    assert [d.split(":")[0] for d in diff] == ["dataset.content.test", "dataset.content.train"]
    assert diff[1] == (f"dataset.content.train: {content_a['train'][:12]} -> "
                       f"{run_b.identity['dataset']['content']['train'][:12]}")


def record(run_id: str, status: str = "done") -> dict:
    return {"run_id": run_id, "suite": "u", "protocol": "fine_tune", "protocol_version": "2.0",
            "status": status, "config": {}, "model_name": "mae", "adapter": "mae",
            "size": "tiny", "random_init": True, "dataset": "soda", "seed": 0,
            "error": None if status == "done" else "boom"}


def test_a_done_record_is_written_once_per_run_id(tmp_path: Path) -> None:
    store = tmp_path / "results.jsonl"
    assert append_record(store, record("a", "failed"))
    assert append_record(store, record("a"))
    assert not append_record(store, record("a"))  # a second result of the same run
    assert append_record(store, record("a", "failed"))  # a later failure is history
    assert append_record(store, record("b"))
    assert [(r.run_id, r.status) for r in read_records(store)] == [
        ("a", "failed"), ("a", "done"), ("a", "failed"), ("b", "done")]


def test_an_unreadable_done_line_does_not_count(tmp_path: Path) -> None:
    store = tmp_path / "results.jsonl"
    store.write_text('{"run_id": "a", "status": "done", "schema_version": 1}\n')
    assert append_record(store, record("a"))
    with pytest.warns(UserWarning, match="invalid record"):
        assert [r.run_id for r in read_records(store)] == ["a"]


def test_added_options_leave_the_identity_only_at_their_default() -> None:
    """The lr-sweep options came after linear_probe 2.0: at their defaults the identity is
    the one stored results were written with; set, they are part of it."""
    from bench.protocols.config import LinearProbeSettings, identity_settings

    base = {"iters": 10, "warmup_iters": 1}
    plain = LinearProbeSettings(**base).model_dump(mode="json")
    kept = identity_settings(plain, LinearProbeSettings)
    assert not {"sweep", "sweep_heads", "select", "keep_training_state"} & set(kept)
    assert kept["sweep_lrs"] == [1e-4, 3e-4, 1e-3, 3e-3]  # an original setting stays
    swept = LinearProbeSettings(**base, sweep=True, select="best_on_eval").model_dump(mode="json")
    assert {"sweep": True, "select": "best_on_eval"}.items() <= identity_settings(
        swept, LinearProbeSettings).items()
