"""What a dataset is: its classes, label convention, modality, statistics and disk layouts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

Modality = Literal["infrared", "rgb", "depth"]
# How the model-facing image is made from the file on disk.
ImageMode = Literal["grey", "rgb", "thermal_of_rgbt"]
# How a split-file line names a sample: the whole stripped line is the file stem (mmseg), or
# the stem of the first whitespace-separated path (pair lists such as "img/a.jpg lbl/a.png").
SplitLine = Literal["stem", "first_path_stem"]


class DatasetError(ValueError):
    """A dataset folder that does not hold what its layout promises; the message says where."""


@dataclass(frozen=True)
class Layout:
    """One on-disk arrangement of a dataset's files, relative to the dataset root.

    ``splits`` maps a split name to a split file (``by_dir=False``: one sample per line) or
    to a sub-folder of both ``img_dir`` and ``ann_dir`` (``by_dir=True``, as ADE20K).
    """

    name: str
    description: str
    img_dir: str
    ann_dir: str
    img_suffix: str
    ann_suffix: str
    splits: Mapping[str, str]
    image_mode: ImageMode = "grey"
    by_dir: bool = False
    split_line: SplitLine = "stem"
    # Sub-folders a root may hold the layout in (the archive's top folder), tried in order.
    nested: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", MappingProxyType(dict(self.splits)))

    def markers(self) -> tuple[str, ...]:
        """Folders whose presence identifies this layout."""
        if self.by_dir:
            first = next(iter(self.splits.values()))
            return (f"{self.img_dir}/{first}", f"{self.ann_dir}/{first}")
        return (self.img_dir, self.ann_dir)

    def expected(self) -> str:
        """A one-line picture of the layout for error messages."""
        if self.by_dir:
            subs = ",".join(self.splits.values())
            return (
                f"{self.img_dir}/{{{subs}}}/*{self.img_suffix} + "
                f"{self.ann_dir}/{{{subs}}}/*{self.ann_suffix}"
            )
        files = ", ".join(dict.fromkeys(self.splits.values()))
        return (
            f"{self.img_dir}/*{self.img_suffix} + {self.ann_dir}/*{self.ann_suffix} "
            f"+ split files {files}"
        )


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: everything a protocol needs to know besides the files."""

    name: str
    title: str
    classes: tuple[str, ...]
    modality: Modality
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layouts: tuple[Layout, ...]
    splits: tuple[str, ...]
    default_eval_split: str
    train_split: str = "train"
    reduce_zero_label: bool = False
    ignore_index: int = 255
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)
    published_counts: Mapping[str, int] = field(default_factory=dict)
    notes: str = ""
    # Protocol settings for this dataset (schedule, evaluation interval, crops), keyed by
    # protocol name, or "*" for every protocol; a protocol's own entry wins over "*".
    protocol_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    num_classes: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "num_classes", len(self.classes))
        object.__setattr__(self, "published_counts", MappingProxyType(dict(self.published_counts)))
        if not 0 < self.num_classes <= self.ignore_index:
            raise ValueError(f"{self.name}: {self.num_classes} classes do not fit below ignore")
        for s in (self.train_split, self.default_eval_split):
            if s not in self.splits:
                raise ValueError(f"{self.name}: split {s!r} is not one of {self.splits}")
        for lay in self.layouts:
            if not set(lay.splits) <= set(self.splits):
                raise ValueError(f"{self.name}: layout {lay.name!r} names unknown splits")

    def protocol_defaults_for(self, protocol: str) -> dict[str, Any]:
        """The settings this dataset gives ``protocol``: the "*" entry, then its own."""
        return {**self.protocol_defaults.get("*", {}),
                **self.protocol_defaults.get(protocol, {})}

    @property
    def required_splits(self) -> tuple[str, ...]:
        """Splits a usable copy must have: the training and the default evaluation split."""
        return tuple(dict.fromkeys((self.train_split, self.default_eval_split)))

    def layout(self, name: str) -> Layout:
        for lay in self.layouts:
            if lay.name == name:
                return lay
        from bench.registry import unknown_name_message

        names = [lay.name for lay in self.layouts]
        raise DatasetError(
            unknown_name_message("layout", name, names, owner=f"dataset {self.name!r}")
        )

    def summary(self) -> dict:
        """A JSON-friendly description (for ``data list`` and run records)."""
        return {
            "name": self.name,
            "title": self.title,
            "modality": self.modality,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "reduce_zero_label": self.reduce_zero_label,
            "mean": list(self.mean),
            "std": list(self.std),
            "splits": list(self.splits),
            "default_eval_split": self.default_eval_split,
            "crop_size": self.crop_size,
            "scale": list(self.scale),
            "layouts": [lay.name for lay in self.layouts],
        }
