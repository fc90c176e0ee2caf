"""A training-free k-NN segmentation probe, registered as the protocol ``knn_probe``.

Dense nearest-neighbour retrieval in the manner of Hummingbird (Balažević et al.,
"Towards In-context Scene Understanding", NeurIPS 2023) and DINOv2's k-NN evaluation:
frozen patch features of the training split, labelled by their pixels, form a memory
bank; each test patch takes the softmax(cosine / temperature)-weighted vote of its k
nearest bank patches. Not one of the UNIP paper's protocols.

This module only declares the protocol (no torch import): the run and the FLOP model are
named as ``module:function`` and imported when used.
"""

from __future__ import annotations

from bench.protocols.registry import MIOU, Metric, Protocol
from plugins.knn_probe.settings import KnnProbeSettings

__all__ = ["PROTOCOL", "KnnProbeSettings"]

PROTOCOL = Protocol(
    name="knn_probe",
    version="1.0",
    settings=KnnProbeSettings,
    run="plugins.knn_probe.probe:run",
    evaluated_model="plugins.knn_probe.probe:evaluated_model",
    short="kNN",
    title="k-NN retrieval",
    description="Frozen backbone, no training: each test patch votes with its k nearest "
    "labelled training patches (cosine, softmax temperature).",
    aliases=("knn", "knn-probe"),
    metrics=(MIOU, Metric("aAcc", "pixel acc. (%)"), Metric("mAcc", "mAcc (%)")),
    # One pass of the training split's views through the frozen backbone fills the bank.
    trains_backbone=False,
    training_free=True,
    result_fields=("layer", "bank", "retrieval_gmacs_per_crop"),
    blocks_setting="layer",  # one block; the inherited `layers` is unused
)
