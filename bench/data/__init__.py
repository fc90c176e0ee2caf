"""Data: dataset registry and on-disk layouts, transforms, synthetic data, checks.

Public API: :func:`get_dataset_info`, :func:`list_datasets`, :func:`build_dataset`,
:func:`dataset_fingerprint`; checks in :mod:`bench.data.check`, transforms in
:mod:`bench.data.transforms`, loaders in :mod:`bench.data.loader`, synthetic data in
:mod:`bench.data.synth`.
"""

from bench.data.dataset import (
    SampleKey,
    SegmentationDataset,
    build_dataset,
    dataset_fingerprint,
)
from bench.data.lookup import UnknownDatasetError, get_dataset_info, list_datasets
from bench.data.spec import DatasetError, DatasetInfo, Layout

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "Layout",
    "SampleKey",
    "SegmentationDataset",
    "UnknownDatasetError",
    "build_dataset",
    "dataset_fingerprint",
    "get_dataset_info",
    "list_datasets",
]
