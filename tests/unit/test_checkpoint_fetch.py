"""Catalogue ids end to end, offline: fetch from a loopback server, resume, pin, verify, load.

The server (``http.server`` on 127.0.0.1) answers Range requests as a real one does (206
with Content-Range, 416 past the end) and can drop the connection part-way through a file.
Expected digests come from ``hashlib`` over the served bytes, never from our own code.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback_http import RangeServer, checkpoint_bytes

from bench.backbones.adapter import load_backbone
from bench.checkpoints.cache import cached_file, fetch, verify_file, verify_id
from bench.checkpoints.catalogue import CATALOGUE_ENV, CatalogueError, get_entry
from bench.checkpoints.download import DownloadError
from bench.checkpoints.lock import LOCK_ENV, LockFileError, read_lock
from bench.checkpoints.reader import CheckpointError
from bench.checkpoints.resolve import resolve_checkpoint
from bench.cli import main
from bench.progress import ByteProgress

BODY = checkpoint_bytes()
SHA = hashlib.sha256(BODY).hexdigest()
MD5 = hashlib.md5(BODY).hexdigest()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def server(monkeypatch, tmp_path) -> Iterator[RangeServer]:
    """A server, a catalogue of test ids pointing at it, a fresh cache and lock file."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    prefixed = f"/ckpt/mae_tiny-{SHA[:8]}.pth"
    srv = RangeServer({
        "/ckpt/mae_tiny.pth": BODY,
        prefixed: BODY,
        "/ckpt/mae_tiny-00000000.pth": BODY,
    })
    srv.thread.start()

    def entry(file: str, url: str, **extra: str) -> dict:
        return {"adapter": "mae", "size": "T", "format": "pretrain", "file": file, "url": url,
                "licence": "CC-BY-NC-4.0", "source": "https://example.org/readme", **extra}

    catalogue = {"version": 1, "checkpoints": {
        "test/vit-tiny": entry("mae_tiny.pth", srv.url("/ckpt/mae_tiny.pth")),
        "test/vit-tiny-hashed": entry(prefixed.rsplit("/", 1)[1], srv.url(prefixed),
                                      sha256_prefix=SHA[:8], md5_prefix=MD5[:6]),
        "test/vit-tiny-wrong": entry("mae_tiny-00000000.pth",
                                     srv.url("/ckpt/mae_tiny-00000000.pth"),
                                     sha256_prefix="00000000"),
        "test/vit-tiny-md5": entry("mae_tiny.pth", srv.url("/ckpt/mae_tiny.pth"),
                                   md5_prefix="000000" if MD5.startswith("f") else "ffffff"),
        "test/vit-tiny-full": entry("mae_tiny.pth", srv.url("/ckpt/mae_tiny.pth"), sha256=SHA),
        "test/missing": entry("gone.pth", srv.url("/ckpt/gone.pth")),
        "test/offline": entry("x.pth", f"http://127.0.0.1:{_closed_port()}/x.pth"),
        "test/unreleased": {"adapter": "mae", "size": "T", "licence": "unknown",
                            "source": "https://example.org/readme",
                            "unavailable": "no public release; train one"},
    }}
    path = tmp_path / "catalogue.yaml"
    path.write_text(json.dumps(catalogue))  # JSON is YAML
    monkeypatch.setenv(CATALOGUE_ENV, str(path))
    monkeypatch.setenv("UNIPBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "checkpoints.lock"))
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def lock_json(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "checkpoints.lock").read_text())


def test_fetch_pins_and_loads_by_id(server, tmp_path) -> None:
    got = fetch("test/vit-tiny", terminal=False, stream=io.StringIO())
    assert got.how == "downloaded" and got.pinned_now and got.sha256 == SHA
    assert got.path == tmp_path / "cache" / "checkpoints" / "test" / "vit-tiny" / "mae_tiny.pth"
    assert got.path.read_bytes() == BODY
    assert not got.path.with_name("mae_tiny.pth.part").exists()
    assert lock_json(tmp_path) == {"version": 1, "checkpoints": {"test/vit-tiny": {
        "sha256": SHA, "size": len(BODY), "url": server.url("/ckpt/mae_tiny.pth"),
        "file": "mae_tiny.pth"}}}

    bb = load_backbone("mae", "tiny", "test/vit-tiny", depth=2)
    assert bb.meta.checkpoint == "test/vit-tiny" and bb.meta.checkpoint_sha256 == SHA
    assert bb.meta.checkpoint_format == "pretrain"

    again = fetch("test/vit-tiny")
    assert again.how == "cached" and not again.pinned_now
    assert len(server.requests) == 1  # nothing downloaded twice


def test_broken_connection_keeps_part_then_resumes(server, tmp_path) -> None:
    cut = len(BODY) * 2 // 5
    server.break_after["/ckpt/mae_tiny.pth"] = cut
    with pytest.raises(DownloadError) as info:
        fetch("test/vit-tiny", terminal=False, stream=io.StringIO())
    msg = str(info.value)
    assert "\n" not in msg and "broke off" in msg
    assert "mae_tiny.pth.part is kept" in msg and "resumes it" in msg
    target = cached_file(get_entry("test/vit-tiny"))
    part = target.with_name("mae_tiny.pth.part")
    assert part.read_bytes() == BODY[:cut] and not target.exists()
    assert read_lock() == {}

    # The partial file is never a checkpoint: loading says what to run.
    with pytest.raises(CatalogueError, match=r"test/vit-tiny is not downloaded yet: run "
                       r"`unipbench checkpoints fetch test/vit-tiny` \(the interrupted "
                       r"download .*\.part is resumed\)"):
        resolve_checkpoint("test/vit-tiny")

    log = io.StringIO()
    got = fetch("test/vit-tiny", terminal=False, stream=log)
    assert server.requests[-1] == ("/ckpt/mae_tiny.pth", f"bytes={cut}-")
    assert got.how == "resumed" and got.sha256 == SHA and target.read_bytes() == BODY
    assert not part.exists()
    assert "test/vit-tiny: resuming at" in log.getvalue()
    assert read_lock()["test/vit-tiny"].sha256 == SHA


def test_server_ignoring_range_restarts_the_file(server, tmp_path) -> None:
    server.break_after["/ckpt/mae_tiny.pth"] = 1000
    with pytest.raises(DownloadError):
        fetch("test/vit-tiny", terminal=False, stream=io.StringIO())
    server.ignore_range = True  # answers 200 with the whole file
    got = fetch("test/vit-tiny", terminal=False, stream=io.StringIO())
    assert got.how == "downloaded" and got.sha256 == SHA and got.path.read_bytes() == BODY


def test_complete_part_file_is_finished_on_416(server, tmp_path) -> None:
    target = cached_file(get_entry("test/vit-tiny"))
    target.parent.mkdir(parents=True)
    target.with_name("mae_tiny.pth.part").write_bytes(BODY)  # all there, not renamed yet
    got = fetch("test/vit-tiny")
    assert server.requests == [("/ckpt/mae_tiny.pth", f"bytes={len(BODY)}-")]
    assert got.sha256 == SHA and target.read_bytes() == BODY


def test_published_digests_are_checked(server) -> None:
    got = fetch("test/vit-tiny-hashed", terminal=False, stream=io.StringIO())
    assert got.sha256 == SHA  # sha256 prefix from the name and md5 prefix both hold
    assert fetch("test/vit-tiny-full").sha256 == SHA


@pytest.mark.parametrize(
    ("cid", "says"),
    [
        ("test/vit-tiny-wrong", r"has sha256 [0-9a-f]{64}, but its published name says it "
                                r"starts with 00000000"),
        ("test/vit-tiny-md5", r"has md5 [0-9a-f]{32}, the publisher lists md5 starting "
                              r"[0f]{6}"),
    ],
)
def test_digest_mismatch_discards_the_download(server, cid, says) -> None:
    with pytest.raises(DownloadError) as info:
        fetch(cid, terminal=False, stream=io.StringIO())
    msg = str(info.value)
    assert "\n" not in msg
    assert re.search(f"^download of {cid} from http://127.0.0.1:\\d+/ckpt/\\S+ {says}; the "
                     "file was discarded", msg), msg
    target = cached_file(get_entry(cid))
    assert not target.exists() and not target.with_name(target.name + ".part").exists()
    assert read_lock() == {}


def test_changed_file_is_refused_naming_both_digests(server, tmp_path) -> None:
    got = fetch("test/vit-tiny")
    got.path.write_bytes(BODY + b"tampered")
    found = hashlib.sha256(BODY + b"tampered").hexdigest()
    want = (f"checkpoint test/vit-tiny ({got.path}) has sha256 {found}, but "
            f"{tmp_path / 'checkpoints.lock'} pins {SHA}: the file changed since it was "
            "fetched; run `unipbench checkpoints fetch --force test/vit-tiny`")
    with pytest.raises(CatalogueError, match=re.escape(want)):
        resolve_checkpoint("test/vit-tiny")
    with pytest.raises(CatalogueError, match=re.escape(want)):
        load_backbone("mae", "tiny", "test/vit-tiny", depth=2)
    verdict = verify_id("test/vit-tiny")
    assert not verdict.ok and found in verdict.message and SHA in verdict.message

    # fetch (without --force) sees the cached copy is wrong and downloads it again.
    again = fetch("test/vit-tiny")
    assert again.how == "downloaded" and again.path.read_bytes() == BODY
    assert verify_id("test/vit-tiny").ok


def test_publisher_replacing_the_file_does_not_move_the_pin(server, tmp_path) -> None:
    fetch("test/vit-tiny")
    server.files["/ckpt/mae_tiny.pth"] = checkpoint_bytes(seed=1)
    with pytest.raises(DownloadError, match=r"but .*checkpoints\.lock pins " + SHA +
                       r"; the file was discarded\. If the publisher replaced the file on "
                       r"purpose, remove 'test/vit-tiny' from .*checkpoints\.lock and fetch"):
        fetch("test/vit-tiny", force=True)
    assert read_lock()["test/vit-tiny"].sha256 == SHA
    assert cached_file(get_entry("test/vit-tiny")).read_bytes() == BODY  # the old one is kept


def test_unpinned_cached_file_is_not_loaded(server, tmp_path) -> None:
    fetch("test/vit-tiny")
    lock = tmp_path / "checkpoints.lock"
    lock.unlink()
    with pytest.raises(CatalogueError, match=r"in the cache .* but not pinned in .*"
                       r"checkpoints\.lock: run `unipbench checkpoints fetch test/vit-tiny` "
                       r"to verify and pin it"):
        resolve_checkpoint("test/vit-tiny")
    # An entry whose publisher states the full sha256 needs no pin.
    fetch("test/vit-tiny-full")
    lock.unlink()
    assert resolve_checkpoint("test/vit-tiny-full")[1] == SHA


def test_url_failures_are_one_line_with_what_to_do(server) -> None:
    with pytest.raises(DownloadError, match=r"^cannot download http://127.0.0.1:\d+/ckpt/"
                       r"gone\.pth: HTTP 404 .*; the file is not there \(any more\): check "
                       r"the URL"):
        fetch("test/missing")
    with pytest.raises(DownloadError, match=r"^cannot download http://127.0.0.1:\d+/x\.pth: "
                       r".*; check the network connection"):
        fetch("test/offline")


def test_ids_without_download_and_unknown_ids(server) -> None:
    with pytest.raises(CatalogueError, match=r"test/unreleased has no download: no public "
                       r"release; train one"):
        fetch("test/unreleased")
    with pytest.raises(CatalogueError, match=r"'test/vit-tin' is neither a catalogue id nor "
                       r"an existing file or folder.*Did you mean 'test/vit-tiny'"):
        load_backbone("mae", "tiny", "test/vit-tin", depth=2)


def test_path_objects_and_dot_paths_are_never_ids(server, tmp_path, monkeypatch) -> None:
    fetch("test/vit-tiny")
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "test" / "vit-tiny"
    with pytest.raises(CheckpointError, match=r"checkpoint test/vit-tiny does not exist"):
        resolve_checkpoint(Path("test/vit-tiny"))  # a Path is a path
    local.parent.mkdir()
    local.write_bytes(BODY + b"local")
    assert resolve_checkpoint("./test/vit-tiny")[0] == Path("./test/vit-tiny")
    assert resolve_checkpoint("test/vit-tiny")[1] == SHA  # the id wins over the file


def test_verify_a_file_downloaded_by_hand(server, tmp_path) -> None:
    by_hand = tmp_path / f"mae_tiny-{SHA[:8]}.pth"
    by_hand.write_bytes(BODY)
    verdict = verify_file(by_hand)
    assert verdict.ok and "matches the published digest of test/vit-tiny-hashed" in verdict.message
    bad = tmp_path / "mae_tiny-00000000.pth"
    bad.write_bytes(BODY)
    verdict = verify_file(bad)
    assert not verdict.ok and "starts with 00000000" in verdict.message


def test_bad_lock_file_is_one_line(server, tmp_path) -> None:
    lock = tmp_path / "checkpoints.lock"
    lock.write_text('{"version": 1, "checkpoints": {"a/b": {"sha256": "xyz"}}')
    with pytest.raises(LockFileError, match=r"checkpoints\.lock is not valid JSON \(line 1"):
        read_lock()
    lock.write_text('{"version": 1, "checkpoints": {"a/b": {"sha256": "xyz"}}}')
    with pytest.raises(LockFileError, match=r"checkpoints\.lock: checkpoints\.a/b: .*'xyz' is "
                       r"not a sha256 digest"):
        read_lock()


def test_cli_fetch_list_verify(server, tmp_path, capsys) -> None:
    assert main(["checkpoints", "fetch", "test/vit-tiny", "test/vit-tiny-hashed"]) == 0
    out = capsys.readouterr().out
    assert "test/vit-tiny: downloaded " in out and f"sha256 {SHA} (pinned in " in out

    assert main(["checkpoints", "list", "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["test/vit-tiny"]["status"] == "pinned"
    assert rows["test/missing"]["status"] == "not fetched"
    assert rows["test/unreleased"]["status"] == "no download"
    assert rows["mae/vit-base"]["url"].endswith("/mae_pretrain_vit_base.pth")  # shipped ones too

    assert main(["checkpoints", "verify"]) == 0
    out = capsys.readouterr().out
    assert "ok   test/vit-tiny:" in out and "ok   test/vit-tiny-hashed:" in out

    cached_file(get_entry("test/vit-tiny")).write_bytes(b"x")
    assert main(["checkpoints", "verify", "test/vit-tiny"]) == 1
    assert "FAIL test/vit-tiny:" in capsys.readouterr().err

    assert main(["checkpoints", "fetch", "mae/vit-bsae"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean 'mae/vit-base'" in err

    # One failing id does not stop the others; the exit code says something failed.
    assert main(["checkpoints", "fetch", "test/missing", "test/vit-tiny-full"]) == 2
    captured = capsys.readouterr()
    assert "HTTP 404" in captured.err and "test/vit-tiny-full: downloaded" in captured.out


def test_byte_progress_off_a_terminal_prints_plain_lines() -> None:
    stream = io.StringIO()
    p = ByteProgress(4 << 20, desc="mae/vit-base", stream=stream, terminal=False, every_s=3600)
    for _ in range(4):
        p.update(1 << 20)
    p.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("mae/vit-base: 1.0 MiB of 4.0 MiB (25.0%) ")
    assert lines[-1].startswith("mae/vit-base: 4.0 MiB of 4.0 MiB (100.0%) ")
    assert len(lines) == 2  # the first and the last step; the rest within every_s


SUITE = """\
suite: ids
protocol_version: "2.1"
models:
  - {{adapter: {adapter}, size: T, checkpoint: {ckpt}, options: {{depth: 2}}}}
datasets:
  - {{name: soda, root: data/soda, synthetic: {{train: 2, test: 2, size: 32}}}}
protocols:
  linear_probe: {{iters: 2, warmup_iters: 1, layers: [1]}}
"""


def _suite(tmp_path: Path, ckpt: str, adapter: str = "mae"):
    from bench.suites.load import load_suite

    path = tmp_path / f"suite-{abs(hash((ckpt, adapter)))}.yaml"
    path.write_text(SUITE.format(ckpt=ckpt, adapter=adapter))
    return load_suite(path)


def test_suite_naming_an_id_validates_and_runs_by_its_pinned_digest(server, tmp_path) -> None:
    from bench.suites.checks import check_files
    from bench.suites.matrix import expand

    suite = _suite(tmp_path, "test/vit-tiny")
    problems = [p.message for p in check_files(suite, full_data_check=False)]
    assert problems == ["checkpoint test/vit-tiny is not downloaded yet: run "
                        "`unipbench checkpoints fetch test/vit-tiny`"]
    before = expand(suite)[0]
    assert before.checkpoint == "test/vit-tiny" and before.checkpoint_sha256 is None

    got = fetch("test/vit-tiny")
    assert check_files(suite, full_data_check=False) == []  # found, pinned and loads
    run = expand(suite)[0]
    assert run.checkpoint == "test/vit-tiny" and run.checkpoint_sha256 == SHA
    # The run id hashes the weights, not how they are named: the same file by path agrees.
    assert expand(_suite(tmp_path, str(got.path)))[0].run_id == run.run_id

    wrong = _suite(tmp_path, "test/vit-tiny", adapter="dino")
    assert [p.message for p in check_files(wrong, full_data_check=False)] == [
        "checkpoint test/vit-tiny is a 'mae' checkpoint (catalogue), but the model's adapter "
        "is 'dino'"]
    typo = _suite(tmp_path, "test/vit-tinyy")
    [problem] = check_files(typo, full_data_check=False)
    assert "Did you mean 'test/vit-tiny'" in problem.message


def test_missing_path_says_where_the_catalogue_gets_the_model(tmp_path) -> None:
    from bench.checkpoints.hints import missing_path_hint

    assert missing_path_hint("mae", "S", "mae").startswith(" (catalogue mae/vit-small: no "
                                                             "public release")
    assert missing_path_hint("deit", "tiny", "deit") == (
        " (the catalogue has it: `checkpoint: deit/vit-tiny`, fetched with "
        "`unipbench checkpoints fetch deit/vit-tiny`)")
    assert missing_path_hint("dino", "T", "dino") == ""
