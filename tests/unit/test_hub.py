"""``hf://`` checkpoints, offline against a Hub cache laid out as ``huggingface_hub`` writes
it, and online against a loopback server that answers as the Hub does.

The cache layout (models--owner--repo/{blobs/<etag>, snapshots/<commit>/<path> -> relative
symlink to the blob, refs/<branch> = commit without newline}) is checked against the
client's own cache scanner, and was compared with what ``hf_hub_download`` writes when it
fetches from the loopback server (the last tests do exactly that).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, scan_cache_dir
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from transformers import ViTConfig, ViTModel

from bench.backbones.adapter import load_backbone
from bench.checkpoints.hub import HubError, hub_cached, hub_download, parse_hub_path
from bench.checkpoints.resolve import resolve_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def lfs_etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()  # what the Hub reports for LFS files


def git_etag(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # small git files


def write_hub_cache(
    cache: Path, repo_id: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = ()
) -> Path:
    """A cached snapshot of ``repo_id`` at ``commit``, in the client's layout."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, data in files.items():
        etag = lfs_etag(data) if name.endswith((".pth", ".safetensors", ".bin")) else git_etag(data)
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as the client writes it
    return repo


def tiny_vit_bytes(tmp_path: Path, seed: int = 0) -> tuple[bytes, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    state = VisionTransformer(embed_dim=192, depth=2, num_heads=3, num_classes=0).state_dict()
    path = tmp_path / f"weights-{seed}.pth"
    torch.save({"model": state}, path)
    return path.read_bytes(), state


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_the_cache_layout_is_the_clients(offline: Path, tmp_path: Path) -> None:
    data, _ = tiny_vit_bytes(tmp_path)
    write_hub_cache(offline, "owner/repo", COMMIT, {"mae/vit-t.pth": data}, refs=("main",))
    info = scan_cache_dir(offline)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == "owner/repo" and repo.repo_type == "model"
    (rev,) = repo.revisions
    assert rev.commit_hash == COMMIT and rev.refs == frozenset({"main"})
    (f,) = rev.files
    assert f.file_name == "vit-t.pth" and f.blob_path.name == lfs_etag(data)


def test_offline_hub_file_loads_like_the_plain_file(offline: Path, tmp_path: Path) -> None:
    data, state = tiny_vit_bytes(tmp_path)
    write_hub_cache(offline, "owner/repo", COMMIT, {"mae/vit-t.pth": data}, refs=("main",))
    spec = "hf://owner/repo/mae/vit-t.pth"
    bb = load_backbone("mae", "tiny", spec, depth=2, cache_dir=tmp_path / "digests")
    plain = load_backbone("mae", "tiny", tmp_path / "weights-0.pth", depth=2,
                          cache_dir=tmp_path / "digests")
    assert bb.meta.checkpoint == spec
    assert bb.meta.checkpoint_sha256 == plain.meta.checkpoint_sha256 == lfs_etag(data)
    assert torch.equal(bb.vit.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    path, digest = resolve_checkpoint(spec, sha256=lfs_etag(data), cache_dir=tmp_path / "d")
    assert path.parent == offline / "models--owner--repo" / "snapshots" / COMMIT / "mae"
    assert hub_cached(spec)


def test_revision_picks_the_snapshot(offline: Path, tmp_path: Path) -> None:
    old, _ = tiny_vit_bytes(tmp_path, seed=1)
    new, _ = tiny_vit_bytes(tmp_path, seed=2)
    write_hub_cache(offline, "owner/repo", OTHER_COMMIT, {"w.pth": old}, refs=("v1",))
    write_hub_cache(offline, "owner/repo", COMMIT, {"w.pth": new}, refs=("main",))
    assert hub_download("hf://owner/repo/w.pth").read_bytes() == new
    assert hub_download("hf://owner/repo/w.pth@v1").read_bytes() == old
    assert hub_download(f"hf://owner/repo/w.pth@{OTHER_COMMIT}").read_bytes() == old


def test_offline_and_not_cached_says_how_to_fetch(offline: Path) -> None:
    with pytest.raises(HubError) as err:
        hub_download("hf://owner/repo/mae/vit-t.pth@v2")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("hf://owner/repo/mae/vit-t.pth@v2: not in the Hugging Face cache")
    assert str(offline) in msg and "HF_HUB_OFFLINE" in msg
    assert "`hf download owner/repo mae/vit-t.pth --revision v2`" in msg
    assert not hub_cached("hf://owner/repo/mae/vit-t.pth@v2")


def test_damaged_cached_blob_is_refused(offline: Path, tmp_path: Path) -> None:
    data, _ = tiny_vit_bytes(tmp_path)
    repo = write_hub_cache(offline, "owner/repo", COMMIT, {"w.pth": data}, refs=("main",))
    blob = repo / "blobs" / lfs_etag(data)
    blob.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(HubError, match=r"^hf://owner/repo/w\.pth: the cached file .* has sha256"):
        hub_download("hf://owner/repo/w.pth", cache_dir=tmp_path / "digests")


def test_repository_root_is_an_export_folder(offline: Path, tmp_path: Path) -> None:
    model = ViTModel(ViTConfig(hidden_size=192, num_attention_heads=3, intermediate_size=768,
                               num_hidden_layers=2))
    model.save_pretrained(tmp_path / "export")
    names = ("config.json", "model.safetensors")
    files = {n: (tmp_path / "export" / n).read_bytes() for n in names}
    write_hub_cache(offline, "owner/dino-t", COMMIT, files, refs=("main",))
    bb = load_backbone("dino", "tiny", "hf://owner/dino-t", cache_dir=tmp_path / "digests")
    assert torch.equal(bb.vit.cls_token, model.embeddings.cls_token)
    assert bb.meta.checkpoint_sha256 == lfs_etag(files["model.safetensors"])
    assert hub_cached("hf://owner/dino-t")


def test_export_without_weights_offline_is_named(offline: Path, tmp_path: Path) -> None:
    write_hub_cache(offline, "owner/dino-t", COMMIT, {"config.json": b"{}"}, refs=("main",))
    with pytest.raises(HubError, match=r"^hf://owner/dino-t: not in the Hugging Face cache.*"
                                       r"hf download owner/dino-t model\.safetensors"):
        hub_download("hf://owner/dino-t")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("hf://owner", "expected hf://owner/repo/path/in/repo"),
        ("hf://owner/repo/w.pth@", "empty revision"),
        ("hf://datasets/owner/repo/x", "only model repositories"),
        ("hf://owner/re..po/w.pth", "is not a Hub repository name"),
        ("hf://owner/repo//w.pth", "empty path component"),
    ],
)
def test_malformed_locations_are_one_line(offline: Path, spec: str, fragment: str) -> None:
    with pytest.raises(HubError) as err:
        hub_download(spec)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_parse_keeps_path_and_revision() -> None:
    hp = parse_hub_path("hf://casiatao/UNIP/unip_s/model.pth@refs/pr/1")
    assert (hp.repo_id, hp.filename, hp.revision) == ("casiatao/UNIP", "unip_s/model.pth",
                                                      "refs/pr/1")
    assert str(hp) == "hf://casiatao/UNIP/unip_s/model.pth@refs/pr/1"
    assert parse_hub_path("hf://owner/repo").is_folder


# ------------------------------------------------------------------ a loopback "Hub"
class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers ``/{repo}/resolve/{revision}/{file}`` with the headers the client reads."""

    files: dict[str, bytes] = {}

    def _answer(self, body: bool) -> None:
        repo, sep, rest = self.path.lstrip("/").partition("/resolve/")
        revision, _, name = rest.partition("/")
        if not sep or repo != "owner/repo":
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            return
        if revision not in ("main", COMMIT):
            self.send_response(404)
            self.send_header("X-Error-Code", "RevisionNotFound")
            self.end_headers()
            return
        if name not in self.files:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        data = self.files[name]
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{lfs_etag(data)}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read by the client per request
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield cache
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf://owner/nope/w.pth",
         "hf://owner/nope/w.pth: Hub repository owner/nope does not exist"),
        ("hf://owner/repo/missing.pth",
         "hf://owner/repo/missing.pth: owner/repo has no file 'missing.pth' at revision 'main'"),
        ("hf://owner/repo/w.pth@v9",
         "hf://owner/repo/w.pth@v9: revision 'v9' does not exist in owner/repo"),
    ],
)
def test_missing_hub_path_is_one_line_naming_it(online: Path, spec: str, expected: str) -> None:
    FakeHub.files = {"w.pth": b"weights"}
    with pytest.raises(HubError) as err:
        hub_download(spec)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_download_fills_the_cache_then_offline_reads_it(
    online: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = tiny_vit_bytes(tmp_path)
    FakeHub.files = {"mae/vit-t.pth": data}
    with redirect_stderr(io.StringIO()):  # the client's progress bar
        path = hub_download("hf://owner/repo/mae/vit-t.pth")
    assert path == online / "models--owner--repo" / "snapshots" / COMMIT / "mae" / "vit-t.pth"
    assert path.is_symlink() and path.resolve().name == lfs_etag(data)
    assert (online / "models--owner--repo" / "refs" / "main").read_text() == COMMIT
    # The same layout the offline tests build by hand.
    mirror = tmp_path / "by-hand"
    write_hub_cache(mirror, "owner/repo", COMMIT, {"mae/vit-t.pth": data}, refs=("main",))
    for rel in ("refs/main", f"snapshots/{COMMIT}/mae/vit-t.pth", f"blobs/{lfs_etag(data)}"):
        assert (online / "models--owner--repo" / rel).exists()
        assert (mirror / "models--owner--repo" / rel).exists()
    assert os.readlink(path) == os.readlink(
        mirror / "models--owner--repo" / "snapshots" / COMMIT / "mae" / "vit-t.pth"
    )
    FakeHub.files = {}  # the server forgets it; offline, the cache still serves it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_download("hf://owner/repo/mae/vit-t.pth").read_bytes() == data


def test_export_folder_downloads_config_and_weights(online: Path, tmp_path: Path) -> None:
    state = {"w": torch.zeros(2)}
    save_file(state, tmp_path / "model.safetensors")
    FakeHub.files = {"config.json": b'{"model_type": "vit"}',
                     "model.safetensors": (tmp_path / "model.safetensors").read_bytes()}
    with redirect_stderr(io.StringIO()):
        folder = hub_download("hf://owner/repo")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


# ------------------------------------------------------------------ suites and run ids
SUITE = """\
suite: hub
protocol_version: "2.1"
models:
  - {adapter: mae, size: T, checkpoint: "CKPT", options: {depth: 2}}
datasets:
  - {name: soda, root: data/soda, synthetic: {train: 2, test: 1, size: 32}}
protocols:
  linear_probe: {layers: [0, 1]}
"""


def hub_suite(tmp_path: Path, ckpt: str):
    from bench.suites.load import load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.replace("CKPT", ckpt))
    return load_suite(path)


def test_validate_reports_an_uncached_hub_checkpoint_offline(offline: Path, tmp_path: Path):
    from bench.suites.checks import check_files

    suite = hub_suite(tmp_path, "hf://owner/repo/w.pth")
    (problem,) = check_files(suite, load_checkpoints=False)
    assert "models[0].checkpoint" in str(problem)
    assert "hf://owner/repo/w.pth is not in the Hugging Face cache" in str(problem)
    assert "`hf download owner/repo w.pth`" in str(problem)
    data, _ = tiny_vit_bytes(tmp_path)
    write_hub_cache(offline, "owner/repo", COMMIT, {"w.pth": data}, refs=("main",))
    assert check_files(suite, load_checkpoints=False) == []
    assert check_files(suite, load_checkpoints=True) == []  # fetched and loaded


def test_validate_reports_a_malformed_hub_location(offline: Path, tmp_path: Path) -> None:
    from bench.suites.checks import check_files

    (problem,) = check_files(hub_suite(tmp_path, "hf://owner"), load_checkpoints=False)
    assert "expected hf://owner/repo/path/in/repo" in str(problem)


def test_run_loads_the_hub_location_not_a_local_path(offline: Path, tmp_path: Path) -> None:
    from bench.suites.matrix import expand

    (run,) = expand(hub_suite(tmp_path, "hf://owner/repo/w.pth@v1"))
    assert run.checkpoint == "hf://owner/repo/w.pth@v1"
    (pinned,) = expand(hub_suite(tmp_path, f"hf://owner/repo/w.pth@{COMMIT}"))
    assert pinned.run_id != run.run_id
