"""Evaluation metrics: streaming segmentation mIoU (+ its offline `evaluate` module)."""

from .segmentation import (
    MEAN_IOU_METRIC_PATH,
    ConfusionMatrix,
    StreamingSegmentationMetrics,
    confusion_matrix,
    metrics_from_confusion_matrix,
)

__all__ = [
    "MEAN_IOU_METRIC_PATH",
    "ConfusionMatrix",
    "StreamingSegmentationMetrics",
    "confusion_matrix",
    "metrics_from_confusion_matrix",
]

# Detection: COCO mAP (pycocotools) streamed through Trainer, + its offline `evaluate` module.
from .detection import (
    COCO_MAP_METRIC_PATH,
    COCO_METRIC_KEYS,
    CocoDetectionMetrics,
    coco_eval,
    detection_labels_for_metrics,
    load_coco_ground_truth,
)

__all__ += [
    "COCO_MAP_METRIC_PATH",
    "COCO_METRIC_KEYS",
    "CocoDetectionMetrics",
    "coco_eval",
    "detection_labels_for_metrics",
    "load_coco_ground_truth",
]
