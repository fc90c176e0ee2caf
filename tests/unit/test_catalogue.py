"""The checkpoint catalogue (bench/checkpoints/catalogue.yaml): schema, adapters, suites, sources.

The catalogue is data copied from the publishers' READMEs; these tests hold it to the
things that can be checked offline: every format is one its adapter declares, every paper
suite model is covered, torch.hub-style names carry the digest prefix recorded, the
release manifests (tests/golden/release, derived from the methods' own code) agree on
which format a published file is, and a bad catalogue file is refused with file, line and key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch.hub
import yaml

from bench.backbones.adapter import get_adapter
from bench.checkpoints.catalogue import (
    CATALOGUE_ENV,
    CATALOGUE_FILE,
    CatalogueError,
    get_entry,
    is_catalogue_id,
    load_catalogue,
    looks_like_id,
)

ROOT = Path(__file__).resolve().parents[2]
PAPER_SUITES = ("infrared_defaults.yaml", "layerwise_rgb_depth.yaml")
MANIFESTS = ROOT / "tests" / "golden" / "release"


def paper_models() -> list[dict]:
    out = []
    for name in PAPER_SUITES:
        out += yaml.safe_load((ROOT / "suites" / "paper" / name).read_text())["models"]
    return out


def test_shipped_catalogue_loads_and_is_package_data() -> None:
    entries = load_catalogue()
    assert len(entries) >= 40
    assert all(e.id == cid for cid, e in entries.items())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'bench = \[[^\]]*"checkpoints/catalogue\.yaml"', pyproject)
    assert CATALOGUE_FILE.parent == ROOT / "bench" / "checkpoints"


@pytest.mark.parametrize("cid", sorted(load_catalogue()))
def test_entry_names_a_real_adapter_size_and_format(cid: str) -> None:
    e = get_entry(cid)
    adapter = get_adapter(e.adapter)
    assert e.size in {adapter.letter(s) for s in adapter.published_sizes}
    assert cid.startswith(f"{e.adapter}/")
    if e.unavailable:
        assert e.download_url is None and e.format is None
        return
    assert adapter.format(e.format).name == e.format  # raises for a format it does not declare
    assert e.download_url.startswith("https://")
    assert e.file == e.download_url.rsplit("/", 1)[-1]
    assert e.source.startswith("https://")


def test_every_paper_suite_model_is_in_the_catalogue() -> None:
    entries = load_catalogue()
    used: set[str] = set()
    for m in paper_models():
        label = m.get("name") or m["adapter"]
        letter = get_adapter(m["adapter"]).letter(m["size"])
        fits = [e for e in entries.values()
                if (e.adapter, e.size, e.label) == (m["adapter"], letter, label) and e.paper]
        assert fits, f"no paper entry for {label}-{letter}"
        if is_catalogue_id(m["checkpoint"]):
            e = entries[m["checkpoint"]]
            assert (e.adapter, e.size, e.label) == (m["adapter"], letter, label)
            assert e.unavailable is None
            used.add(e.id)
        else:
            # A path only where the catalogue has no download for that model.
            assert all(e.unavailable for e in fits), (m["checkpoint"], [e.id for e in fits])
            used.update(e.id for e in fits)
    assert used == {cid for cid, e in entries.items() if e.paper}


def test_hash_prefixes_are_the_ones_torch_hub_reads_from_the_name() -> None:
    prefixed = 0
    for e in load_catalogue().values():
        m = torch.hub.HASH_REGEX.search(e.file or "")
        if e.url and "dl.fbaipublicfiles.com/deit/" in e.url and m:
            assert e.sha256_prefix == m.group(1), e.id
            prefixed += 1
        elif e.sha256_prefix:
            pytest.fail(f"{e.id}: sha256_prefix without a hash in the file name")
    assert prefixed == 6  # DeiT-T/S/B and their distilled versions (README_deit.md)


def test_md5_prefixes_are_maes_published_ones() -> None:
    # facebookresearch/mae README, "md5" row of the pre-trained checkpoint table.
    assert get_entry("mae/vit-base").md5_prefix == "8cad7c"
    assert get_entry("mae/vit-large").md5_prefix == "b8b06e"


def test_hub_entries_download_from_the_readme_links() -> None:
    # TonyLianLong/CrossMAE README, "pretrained checkpoint" row (without ?download=true).
    assert get_entry("crossmae/vit-small").download_url == (
        "https://huggingface.co/longlian/CrossMAE/resolve/main/vits-mr0.75-kmr0.75-dd12/"
        "imagenet-mae-cross-vits-pretrain-wfm-mr0.75-kmr0.75-dd12-ep800-ui.pth"
    )
    assert get_entry("mae/vit-base-timm").download_url == (
        "https://huggingface.co/timm/vit_base_patch16_224.mae/resolve/main/model.safetensors"
    )


def test_unip_entries_record_both_repository_spellings() -> None:
    for cid in ("unip/vit-small-mae-l18", "unip/vit-base-ibot-l21"):
        why = get_entry(cid).unavailable
        assert "huggingface.co/casaitao/UNIP" in why and "huggingface.co/casiatao/UNIP" in why


def _published(manifest: dict) -> tuple[str, str] | None:
    """(url or file name, size letter) of the file a release manifest describes."""
    letter = get_adapter(manifest["adapter"]).letter(manifest["size"])
    pub = manifest.get("published")
    if isinstance(pub, dict) and pub.get("url"):
        return pub["url"], letter
    source = manifest.get("source")
    hub = source.get("hub") if isinstance(source, dict) else None
    if hub:  # timm's Hub copies: the repository's model.safetensors
        return f"{hub}/resolve/main/model.safetensors", letter
    release = manifest.get("release") or ""
    m = re.search(r"\(([^()]*\.pth)\)", release)
    return (m.group(1), letter) if m else None


def test_formats_agree_with_the_release_manifests() -> None:
    checked = 0
    entries = [e for e in load_catalogue().values() if e.download_url]
    for path in sorted(MANIFESTS.glob("*.json")):
        manifest = json.loads(path.read_text())
        where = _published(manifest)
        if where is None:
            continue
        ref, letter = where
        fits = [e for e in entries if e.adapter == manifest["adapter"] and e.size == letter
                and (e.download_url == ref or e.download_url.endswith("/" + ref))]
        for e in fits:
            assert e.format == manifest["format"], (e.id, path.name)
            checked += 1
    # MAE-B, CrossMAE-S, DeiT-T (+ distilled), DeiT III-S, DINO-S (full, backbone), iBOT-S
    # (teacher, full) and timm's MAE-B, DeiT-T, DeiT III-S: every manifest of a published
    # file the catalogue lists.
    assert checked == 12


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("version: 1\ncheckpoints:\n  Bad Id: {}\n", r":3: checkpoints\.Bad Id: id 'Bad Id'"),
        ("version: 2\ncheckpoints: {}\n", r":1: version: unsupported catalogue version 2"),
        (
            "version: 1\ncheckpoints:\n  my/vit-s:\n    adapter: mae\n    size: S\n"
            "    licence: MIT\n    source: https://example.org\n    format: pretrain\n"
            "    file: a.pth\n    url: https://example.org/a.pth\n    sha256: abc\n",
            r":11: checkpoints\.my/vit-s\.sha256: a sha256 has 64 hexadecimal digits",
        ),
        (
            "version: 1\ncheckpoints:\n  my/vit-s:\n    adapter: mae\n    size: S\n"
            "    licence: MIT\n    source: https://example.org\n    format: pretrain\n"
            "    file: b.pth\n    url: https://example.org/a.pth\n",
            r":3: checkpoints\.my/vit-s: file 'b\.pth' is not the name in the download location",
        ),
        (
            "version: 1\ncheckpoints:\n  my/vit-s:\n    adapter: mae\n    size: S\n"
            "    licence: MIT\n    source: https://example.org\n    color: red\n",
            r":8: checkpoints\.my/vit-s\.color: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_catalogue_file_names_file_line_and_key(tmp_path, monkeypatch, body, message) -> None:
    extra = tmp_path / "mine.yaml"
    extra.write_text(body)
    monkeypatch.setenv(CATALOGUE_ENV, str(extra))
    with pytest.raises(CatalogueError, match=re.escape(str(extra)) + message):
        load_catalogue()


def test_extra_catalogue_adds_and_overrides_ids(tmp_path, monkeypatch) -> None:
    extra = tmp_path / "mine.yaml"
    extra.write_text(
        "version: 1\ncheckpoints:\n"
        "  mae/vit-base:\n    adapter: mae\n    size: B\n    licence: internal\n"
        "    source: https://example.org/models\n    format: pretrain\n    file: mine.pth\n"
        "    url: https://example.org/mine.pth\n"
        "  lab/vit-s:\n    adapter: dino\n    size: S\n    licence: internal\n"
        "    source: https://example.org/models\n    unavailable: not published\n"
    )
    monkeypatch.setenv(CATALOGUE_ENV, str(extra))
    assert get_entry("mae/vit-base").file == "mine.pth"
    assert is_catalogue_id("lab/vit-s")
    assert get_entry("mae/vit-large").file == "mae_pretrain_vit_large.pth"  # shipped, kept


def test_unknown_id_suggests_the_closest() -> None:
    with pytest.raises(CatalogueError, match=r"unknown checkpoint id 'mae/vit-bsae'.*"
                       r"Did you mean 'mae/vit-base'"):
        get_entry("mae/vit-bsae")


@pytest.mark.parametrize(
    ("spec", "is_id"),
    [("mae/vit-base", True), ("checkpoints/mae.pth", False), ("a/b/c", False),
     ("./mae/vit-base", False), ("/abs/x", False), ("mae/model.safetensors", False)],
)
def test_id_shape(spec: str, is_id: bool) -> None:
    assert looks_like_id(spec) is is_id
