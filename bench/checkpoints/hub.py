"""Checkpoints on the Hugging Face Hub: ``hf://owner/repo/path/in/repo[@revision]``.

Files come through ``huggingface_hub`` into its own cache (``HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``), so a file fetched by ``hf download`` or by ``transformers``
is not fetched again, and ``HF_HUB_OFFLINE=1`` reads the cache only. ``hf://owner/repo``
without a path is the repository's Hugging Face export folder (config.json + weights).

Every failure is one line that names the ``hf://`` location and says what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from bench.checkpoints.reader import CheckpointError

SCHEME = "hf://"
DEFAULT_REVISION = "main"
# What an export folder needs, in the order bench.checkpoints.hf_export looks for the weights.
EXPORT_CONFIG = "config.json"
EXPORT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NON_MODEL = ("datasets", "spaces", "buckets")


class HubError(CheckpointError):
    """An ``hf://`` checkpoint that is malformed, missing or cannot be fetched."""


@dataclass(frozen=True)
class HubPath:
    """A parsed ``hf://`` location; ``filename`` is empty for a repository's export folder."""

    repo_id: str
    filename: str
    revision: str | None

    def __str__(self) -> str:
        path = f"/{self.filename}" if self.filename else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{SCHEME}{self.repo_id}{path}{rev}"

    @property
    def is_folder(self) -> bool:
        return not self.filename

    def fetch_command(self, filename: str | None = None) -> str:
        """The ``hf`` command line that puts this file in the cache."""
        name = self.filename if filename is None else filename
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id}{' ' + name if name else ''}{rev}"


def is_hub_path(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(SCHEME)


def parse_hub_path(spec: str) -> HubPath:
    """``hf://owner/repo[/path/in/repo][@revision]`` -> HubPath; HubError when malformed."""
    if not is_hub_path(spec):
        raise HubError(f"{spec!r} is not a Hugging Face Hub location (hf://owner/repo/FILE)")
    rest = spec[len(SCHEME) :]
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
        if not revision:
            raise HubError(f"{spec}: empty revision after '@' (give a branch, tag or commit)")
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise HubError(
            f"{spec}: expected hf://owner/repo/path/in/repo[@revision], e.g. "
            "hf://facebook/dinov2-small/model.safetensors"
        )
    if parts[0] in _NON_MODEL:
        raise HubError(f"{spec}: only model repositories hold checkpoints, not {parts[0]}")
    if "" in parts[2:]:
        raise HubError(f"{spec}: empty path component in the file path (a doubled or final '/')")
    repo_id = f"{parts[0]}/{parts[1]}"
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(f"{spec}: {repo_id!r} is not a Hub repository name ({exc})") from None
    return HubPath(repo_id, "/".join(parts[2:]), revision)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now, not at
    import, so a setting made after start-up counts."""
    from huggingface_hub import constants

    raw = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return raw.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The Hub cache the client uses, read from the environment now (HF_HUB_CACHE, then
    HF_HOME/hub), as ``huggingface_hub`` would at start-up."""
    from huggingface_hub import constants

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _download(hp: HubPath, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    path = hf_hub_download(
        hp.repo_id,
        filename,
        revision=hp.revision,
        cache_dir=hub_cache_dir(),
        local_files_only=hub_offline(),
        endpoint=endpoint,
    )
    return Path(path)


def _explain(hp: HubPath, filename: str, exc: Exception) -> HubError:
    """One line for a failed fetch: what is missing, and the way out."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = str(hp)
    rev = hp.revision or DEFAULT_REVISION
    if isinstance(exc, GatedRepoError):
        return HubError(
            f"{where}: {hp.repo_id} is a gated repository; accept its terms on "
            f"https://huggingface.co/{hp.repo_id} and log in with `hf auth login`"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(
            f"{where}: Hub repository {hp.repo_id} does not exist (or is private: log in "
            "with `hf auth login`); check the owner/repo spelling"
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{where}: revision {rev!r} does not exist in {hp.repo_id}")
    if isinstance(exc, LocalEntryNotFoundError):
        cache = hub_cache_dir()
        if hub_offline():
            return HubError(
                f"{where}: not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set; "
                f"fetch it once online with `{hp.fetch_command(filename)}` (same HF_HUB_CACHE)"
            )
        return HubError(
            f"{where}: cannot reach the Hugging Face Hub and the file is not in the cache "
            f"{cache}; check the connection (or HF_ENDPOINT), then retry"
        )
    if isinstance(exc, EntryNotFoundError):
        return HubError(
            f"{where}: {hp.repo_id} has no file {filename!r} at revision {rev!r}; see "
            f"https://huggingface.co/{hp.repo_id}/tree/{rev}"
        )
    if isinstance(exc, HfHubHTTPError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return HubError(f"{where}: the Hub refused the download ({first})")
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return HubError(f"{where}: cannot fetch {filename} ({type(exc).__name__}: {detail})")


def _fetch(hp: HubPath, filename: str) -> Path:
    try:
        return _download(hp, filename)
    except HubError:
        raise
    except Exception as exc:  # every client failure becomes one line naming the location
        raise _explain(hp, filename, exc) from None


def _fetch_export(hp: HubPath) -> Path:
    """The snapshot folder holding the repository's config.json and weights file."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    config = _fetch(hp, EXPORT_CONFIG)
    missing: Exception | None = None
    for name in EXPORT_WEIGHTS:
        try:
            _download(hp, name)
            return config.parent
        except LocalEntryNotFoundError as exc:  # before its base class, EntryNotFoundError
            if not hub_offline():
                raise _explain(hp, name, exc) from None
            missing = missing or exc  # offline: the other weights file may be the cached one
        except EntryNotFoundError:
            continue
        except Exception as exc:
            raise _explain(hp, name, exc) from None
    if missing is not None:
        raise _explain(hp, EXPORT_WEIGHTS[0], missing)
    raise HubError(
        f"{hp}: {hp.repo_id} is not a Hugging Face export: it has {EXPORT_CONFIG} but none of "
        f"{', '.join(EXPORT_WEIGHTS)}; name the weights file, hf://{hp.repo_id}/FILE"
    )


def _check_blob(hp: HubPath, path: Path, cache_dir: str | Path | None) -> None:
    """A cached LFS file is stored under its sha256: a file that no longer hashes to its
    name was damaged after download, and is refused rather than loaded."""
    from bench.checkpoints.reader import cached_sha256

    blob = path.resolve()
    if not _SHA256.fullmatch(blob.name):
        return  # a small git file (named by its git hash) or a cache without symlinks
    digest = cached_sha256(blob, cache_dir)
    if digest != blob.name:
        raise HubError(
            f"{hp}: the cached file {blob} has sha256 {digest}, not the {blob.name} the Hub "
            f"listed; delete it and fetch again (`{hp.fetch_command()}`)"
        )


def hub_download(spec: str, cache_dir: str | Path | None = None) -> Path:
    """Local path of an ``hf://`` checkpoint: a file in the Hub cache's snapshot, or the
    snapshot folder of an export. ``cache_dir`` is where digests are remembered."""
    hp = parse_hub_path(spec)
    if hp.is_folder:
        folder = _fetch_export(hp)
        for name in EXPORT_WEIGHTS:
            if (folder / name).exists():
                _check_blob(hp, folder / name, cache_dir)
                break
        return folder
    path = _fetch(hp, hp.filename)
    _check_blob(hp, path, cache_dir)
    return path


def hub_cached(spec: str) -> bool:
    """Whether ``spec`` can be read without the network (its files are in the cache)."""
    from huggingface_hub import try_to_load_from_cache

    hp = parse_hub_path(spec)

    def cached(name: str) -> bool:
        found = try_to_load_from_cache(
            hp.repo_id, name, cache_dir=hub_cache_dir(), revision=hp.revision
        )
        return isinstance(found, str)  # None: unknown; a sentinel: known not to exist

    if hp.is_folder:
        return cached(EXPORT_CONFIG) and any(cached(w) for w in EXPORT_WEIGHTS)
    return cached(hp.filename)
