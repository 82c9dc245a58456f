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
