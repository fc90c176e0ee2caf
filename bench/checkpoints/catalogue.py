"""The checkpoint catalogue (``bench/checkpoints/catalogue.yaml``): published checkpoints by id.

An id such as ``mae/vit-base`` names one publisher's file: where to download it, which
adapter, size and format it is, its licence and whatever digest the publisher states.
Suites and ``load_backbone`` accept an id wherever they accept a path; the file itself is
fetched into the cache by ``unipbench checkpoints fetch`` (:mod:`bench.checkpoints.cache`).

``UNIPBENCH_CATALOGUE`` adds catalogue files of one's own (``os.pathsep``-separated), in
the same format; their ids override the shipped ones.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.checkpoints.reader import CheckpointError
from bench.registry import did_you_mean
from bench.suites.yaml_source import YamlSourceError, format_path, load_yaml

CATALOGUE_FILE = Path(__file__).with_name("catalogue.yaml")
CATALOGUE_ENV = "UNIPBENCH_CATALOGUE"
HUB_URL = "https://huggingface.co"

# method/name: lower-case words; no file suffix, so that it cannot be mistaken for a file.
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]*/[a-z0-9][a-z0-9_.+-]*$")
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar", ".pkl", ".npz")
_HEX = re.compile(r"^[0-9a-f]+$")


class CatalogueError(CheckpointError):
    """A bad catalogue file, or an id that is not in the catalogue."""


class HubFile(BaseModel):
    """A file in a Hugging Face Hub model repository."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    path: str = Field(min_length=1)
    revision: str = "main"

    @property
    def url(self) -> str:
        """The Hub's download URL (``resolve``), which also answers HTTP Range requests."""
        return f"{HUB_URL}/{self.repo}/resolve/{quote(self.revision, safe='')}/{quote(self.path)}"


class Entry(BaseModel):
    """One catalogue entry; ``id`` is its key in the file."""

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    adapter: str
    size: Literal["T", "S", "B", "L"]
    name: str | None = None
    format: str | None = None
    file: str | None = None
    url: str | None = None
    hub: HubFile | None = None
    licence: str = Field(min_length=1)
    source: str = Field(pattern=r"^https://")
    sha256: str | None = None
    sha256_prefix: str | None = Field(None, min_length=6, max_length=63)
    md5_prefix: str | None = Field(None, min_length=4, max_length=31)
    unavailable: str | None = None
    paper: bool = False
    notes: str | None = None

    @field_validator("sha256", "sha256_prefix", "md5_prefix")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not _HEX.match(v):
            raise ValueError(f"{v!r} is not lower-case hexadecimal")
        return v

    @field_validator("sha256")
    @classmethod
    def _full(cls, v: str | None) -> str | None:
        if v is not None and len(v) != 64:
            raise ValueError("a sha256 has 64 hexadecimal digits (use sha256_prefix for fewer)")
        return v

    @field_validator("url")
    @classmethod
    def _https(cls, v: str | None) -> str | None:
        if v is not None and urlparse(v).scheme not in ("http", "https"):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v

    @model_validator(mode="after")
    def _where(self) -> Entry:
        sources = [k for k in ("url", "hub") if getattr(self, k) is not None]
        if self.unavailable is not None:
            if sources:
                raise ValueError(f"an unavailable entry has no {sources[0]}")
            return self
        if len(sources) != 1:
            raise ValueError("give exactly one of url, hub or unavailable")
        if not self.format or not self.file:
            raise ValueError("a downloadable entry needs format and file")
        if self.file != self.remote_name:
            raise ValueError(
                f"file {self.file!r} is not the name in the download location "
                f"({self.remote_name!r})"
            )
        return self

    @property
    def download_url(self) -> str | None:
        if self.hub is not None:
            return self.hub.url
        return self.url

    @property
    def remote_name(self) -> str:
        if self.hub is not None:
            return self.hub.path.rsplit("/", 1)[-1]
        return Path(unquote(urlparse(self.url or "").path)).name

    @property
    def label(self) -> str:
        """The table label of the model's rows (the suite's ``name``)."""
        return self.name or self.adapter

    @property
    def digest_claims(self) -> list[str]:
        """The publisher's digests, as words for messages."""
        out = []
        if self.sha256:
            out.append(f"sha256 {self.sha256}")
        if self.sha256_prefix:
            out.append(f"sha256 starting {self.sha256_prefix}")
        if self.md5_prefix:
            out.append(f"md5 starting {self.md5_prefix}")
        return out


def looks_like_id(spec: str) -> bool:
    """``method/name`` without a file suffix or a path-like start: meant as an id."""
    return bool(ID_RE.match(spec)) and not spec.lower().endswith(FILE_SUFFIXES)


def catalogue_files() -> list[Path]:
    extra = os.environ.get(CATALOGUE_ENV, "")
    return [CATALOGUE_FILE] + [Path(p).expanduser() for p in extra.split(os.pathsep) if p]


def load_catalogue() -> dict[str, Entry]:
    """Every entry by id: the shipped catalogue, then ``UNIPBENCH_CATALOGUE``'s files."""
    entries: dict[str, Entry] = {}
    for path in catalogue_files():
        try:
            st = path.stat()
        except OSError as exc:
            raise CatalogueError(
                f"checkpoint catalogue {path} cannot be read ({exc.strerror or exc}); "
                f"check {CATALOGUE_ENV}"
            ) from None
        entries.update(_load_file(str(path), st.st_mtime_ns, st.st_size))
    return entries


@lru_cache(maxsize=16)
def _load_file(path: str, mtime_ns: int, size: int) -> dict[str, Entry]:
    """One catalogue file; cached per file state, so a lookup costs a ``stat``."""
    try:
        src = load_yaml(path)
    except YamlSourceError as exc:
        raise CatalogueError(str(exc)) from None
    data = src.data

    def fail(key_path: tuple, message: str) -> CatalogueError:
        line = src.line_of(key_path)
        where = f"{path}:{line}" if line else path
        return CatalogueError(f"{where}: {format_path(key_path)}: {message}")

    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
        raise fail((), "a catalogue is a mapping with 'version: 1' and 'checkpoints: {id: entry}'")
    if data.get("version") != 1:
        raise fail(("version",), f"unsupported catalogue version {data.get('version')!r}; "
                   "this unipbench reads version 1")
    unknown = sorted(set(data) - {"version", "checkpoints"})
    if unknown:
        raise fail((unknown[0],), "unknown key; a catalogue has 'version' and 'checkpoints'")
    out: dict[str, Entry] = {}
    for cid, raw in data["checkpoints"].items():
        where = ("checkpoints", cid)
        if not isinstance(cid, str) or not looks_like_id(cid):
            raise fail(where, f"id {cid!r} is not of the form method/name (lower case, no "
                       "file suffix), e.g. 'mae/vit-base'")
        if not isinstance(raw, dict):
            raise fail(where, "an entry is a mapping (adapter, size, url or hub, ...)")
        try:
            entry = Entry.model_validate({**raw, "id": cid})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = tuple(err.get("loc", ()))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            raise fail(where + key, msg) from None
        out[cid] = entry
    return out


def catalogue_ids() -> list[str]:
    return sorted(load_catalogue())


def is_catalogue_id(spec: object) -> bool:
    """True when ``spec`` is a catalogue id (ids win over a same-named relative path;
    write ``./mae/vit-base`` for such a folder)."""
    return isinstance(spec, str) and looks_like_id(spec) and spec in load_catalogue()


def get_entry(cid: str) -> Entry:
    """The entry of ``cid``, or a one-line error with the closest ids."""
    entries = load_catalogue()
    if cid in entries:
        return entries[cid]
    raise CatalogueError(
        f"unknown checkpoint id {cid!r}; `unipbench checkpoints list` shows the catalogue."
        + did_you_mean(cid, list(entries))
    )


def unknown_id_message(spec: str) -> str | None:
    """For an id-shaped name that is neither in the catalogue nor an existing path: the
    error to show (did-you-mean); None otherwise."""
    if not looks_like_id(spec) or spec in load_catalogue() or Path(spec).exists():
        return None
    return (
        f"checkpoint {spec!r} is neither a catalogue id nor an existing file or folder; "
        "`unipbench checkpoints list` shows the ids." + did_you_mean(spec, catalogue_ids())
    )
