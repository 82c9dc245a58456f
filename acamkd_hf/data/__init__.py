"""Segmentation and detection data: loaders for the real on-disk layouts (Cityscapes, COCO) and for `datasets`
datasets (Hub id or local folder), synthetic generators in both layouts, transforms and collators.

Modules, leaves first (each imports only those above it): `labels` (ignore index, label lookup tables, label-value
checks), `hub_datasets` (what both tasks share for `datasets` datasets), `checks` (image files, decoding, load-time
label checks), `cityscapes` (segmentation loaders), `coco` (the detection layout and the COCO-folder loader),
`hub_detection` (Hub / local detection datasets, `load_detection_data`), `transforms` / `detection_transforms`,
`synthetic` / `synthetic_coco`.
"""

from .cityscapes import SegmentationData, is_cityscapes_layout, load_cityscapes, load_segmentation_data
from .labels import (
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_TRAIN_CLASSES,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    reduce_labels_lookup,
)
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
from .coco import DetectionData, detection_features, is_coco_layout, load_coco, write_coco_ground_truth
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
