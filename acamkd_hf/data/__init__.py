"""Segmentation and detection data: loaders for the real on-disk layouts (Cityscapes, COCO) and for `datasets`
datasets (Hub id or local folder), synthetic generators in both layouts, transforms and collators.

Modules, leaves first (each imports only those above it): `labels` (ignore index, label lookup tables, label-value
checks, `normalize_id2label`), `hub_datasets` (what both tasks share for `datasets` datasets: loading, splits,
columns, id2label.json), `checks` (image files, decoding, load-time label checks), `segmentation` / `detection` (what
every loader of the task returns: `SegmentationData`, `DetectionData`), `cityscapes` / `coco` (the two folder
layouts; `coco` also writes the COCO-format ground truth), `hub_segmentation` / `hub_detection` (Hub / local
`datasets` datasets, and `load_segmentation_data` / `load_detection_data`, the loaders for any source),
`transforms` / `detection_transforms`, `synthetic` / `synthetic_coco`.
"""

from .cityscapes import is_cityscapes_layout, load_cityscapes
from .hub_segmentation import load_segmentation_data
from .labels import (
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_TRAIN_CLASSES,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    reduce_labels_lookup,
)
from .segmentation import SegmentationData
from .synthetic import SYNTHETIC_CITYSCAPES_VERSION, make_synthetic_cityscapes
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
    "SYNTHETIC_CITYSCAPES_VERSION",
    "make_synthetic_cityscapes",
    "reduce_labels_lookup",
]

# Detection: COCO layout / `datasets` loading, synthetic COCO-layout generator, transforms + collate.
from .coco import is_coco_layout, load_coco, write_coco_ground_truth
from .detection import DetectionData, detection_features
from .detection_transforms import DetectionTransforms, coco_annotation, collate_detection
from .hub_detection import load_detection_data
from .synthetic_coco import SYNTHETIC_COCO_CLASSES, make_synthetic_coco, synthetic_category_ids

__all__ += [
    "DetectionData",
    "DetectionTransforms",
    "SYNTHETIC_COCO_CLASSES",
    "coco_annotation",
    "collate_detection",
    "detection_features",
    "is_coco_layout",
    "load_coco",
    "load_detection_data",
    "make_synthetic_coco",
    "synthetic_category_ids",
    "write_coco_ground_truth",
]
