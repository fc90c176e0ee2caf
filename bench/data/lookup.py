"""Looking datasets up by name: built-ins plus plug-ins from ``unipbench.datasets``."""

from __future__ import annotations

from bench.data.catalog import BUILTIN_DATASETS
from bench.data.spec import DatasetError, DatasetInfo
from bench.registry import DATASETS, RegistryError, unknown_name_message

_registered = False


class UnknownDatasetError(RegistryError, DatasetError):
    """A dataset name nobody registered (a KeyError for registries, a ValueError for users)."""


def _ensure_builtins() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    for info in BUILTIN_DATASETS:
        if info.name not in DATASETS:  # a plug-in registered under the same name wins
            DATASETS.register(info.name, info)


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    _ensure_builtins()
    return DATASETS.names()


def get_dataset_info(name: str) -> DatasetInfo:
    """The registered :class:`DatasetInfo` called ``name``."""
    _ensure_builtins()
    if name not in DATASETS:
        known = DATASETS.names()
        raise UnknownDatasetError(unknown_name_message("dataset", name, known))
    info = DATASETS.get(name)
    if not isinstance(info, DatasetInfo):
        raise DatasetError(
            f"dataset {name!r} is registered as {type(info).__name__}, not a DatasetInfo"
        )
    return info
