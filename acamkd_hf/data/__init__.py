"""Segmentation data: Cityscapes (real layout) / `datasets` loading, synthetic generator, transforms."""

from .cityscapes import (
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_TRAIN_CLASSES,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    SegmentationData,
    is_cityscapes_layout,
    load_cityscapes,
    load_segmentation_data,
    reduce_labels_lookup,
)
from .synthetic import make_synthetic_cityscapes
from .transforms import SegmentationTransforms, collate_segmentation

__all__ = [
    "CITYSCAPES_LABEL_IDS",
    "CITYSCAPES_TRAIN_CLASSES",
    "IGNORE_INDEX",
    "LABEL_ID_TO_TRAIN_ID",
    "SegmentationData",
    "SegmentationTransforms",
    "collate_segmentation",
    "is_cityscapes_layout",
    "load_cityscapes",
    "load_segmentation_data",
    "make_synthetic_cityscapes",
    "reduce_labels_lookup",
]
