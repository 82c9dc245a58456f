"""Evaluation metrics, streamed batch by batch through `Trainer(batch_eval_metrics=True)`: segmentation mIoU from a
confusion matrix (`segmentation`), COCO bbox mAP with pycocotools (`detection`)."""

from .detection import (
    COCO_METRIC_KEYS,
    CocoDetectionMetrics,
    coco_eval,
    detection_labels_for_metrics,
    load_coco_ground_truth,
)
from .segmentation import (
    ConfusionMatrix,
    StreamingSegmentationMetrics,
    confusion_matrix,
    metrics_from_confusion_matrix,
)

__all__ = [
    "COCO_METRIC_KEYS",
    "CocoDetectionMetrics",
    "ConfusionMatrix",
    "StreamingSegmentationMetrics",
    "coco_eval",
    "confusion_matrix",
    "detection_labels_for_metrics",
    "load_coco_ground_truth",
    "metrics_from_confusion_matrix",
]
