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

# Detection: COCO layout / `datasets` loading, synthetic COCO-layout generator, transforms + collate.
from .coco import (
    DetectionData,
    detection_features,
    is_coco_layout,
    load_coco,
    load_detection_data,
    write_coco_ground_truth,
)
from .detection_transforms import DetectionTransforms, coco_annotation, collate_detection
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
