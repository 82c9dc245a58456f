"""Semantic-segmentation metrics (mIoU, accuracies) from a streaming confusion matrix.

The confusion matrix is the whole state: K x K int64 counts, rows = reference class, columns = predicted class.
Memory stays flat whatever the number or size of the images, and matrices from several batches (or processes) just
add up, so "several batches" and "one big batch" give exactly the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ConfusionMatrix",
    "StreamingSegmentationMetrics",
    "confusion_matrix",
    "metrics_from_confusion_matrix",
]

def confusion_matrix(
    predictions: torch.Tensor, references: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Counts of (reference, prediction) pairs over the valid pixels. Returns int64 (K, K) on the inputs' device.

    predictions, references: integer tensors of the same shape (any, e.g. (B, H, W)).
    A pixel is valid when its reference is not `ignore_index` and not negative (-100 is the padding the Trainer
    uses when it pads labels across processes). A valid reference >= K, or a prediction outside [0, K) at a valid
    pixel, is an error rather than silently dropped: it means the class count and the data disagree.
    """
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and references {tuple(references.shape)} differ")
    predictions = predictions.reshape(-1).long()
    references = references.reshape(-1).long()
    valid = (references != ignore_index) & (references >= 0)
    predictions = predictions[valid]
    references = references[valid]
    if references.numel():
        if int(references.max()) >= num_classes:
            raise ValueError(
                f"reference class {int(references.max())} >= num_classes={num_classes} "
                f"(and not ignore_index={ignore_index})"
            )
        low, high = int(predictions.min()), int(predictions.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"predicted classes must be in [0, {num_classes}), got range [{low}, {high}]")
    # One bincount over reference * K + prediction: int64 throughout, O(pixels) temporaries, no K x pixels one-hot.
    counts = torch.bincount(references * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def metrics_from_confusion_matrix(matrix: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """mIoU & co from a (K, K) confusion matrix (rows = reference, columns = prediction).

    Returns mean_iou, mean_accuracy, overall_accuracy (floats) and per_category_iou, per_category_accuracy (lists of
    K floats). A class absent from both reference and prediction has IoU NaN; a class absent from the reference has
    accuracy NaN; means are over the non-NaN entries (NaN when there are none).
    """
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    matrix = np.asarray(matrix, dtype=np.float64)
    intersection = np.diag(matrix)
    reference_area = matrix.sum(axis=1)
    predicted_area = matrix.sum(axis=0)
    union = reference_area + predicted_area - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        accuracy = np.where(reference_area > 0, intersection / reference_area, np.nan)
    total = matrix.sum()
    return {
        "mean_iou": _nanmean(iou),
        "mean_accuracy": _nanmean(accuracy),
        "overall_accuracy": float(intersection.sum() / total) if total > 0 else math.nan,
        "per_category_iou": [float(x) for x in iou],
        "per_category_accuracy": [float(x) for x in accuracy],
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan  # np.nanmean warns on all-NaN


class ConfusionMatrix:
    """Accumulates a (K, K) int64 confusion matrix on the CPU; see `confusion_matrix` for what counts."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, predictions: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Add one batch. predictions, references: integer tensors of one shape (...). Returns the batch's matrix."""
        batch = confusion_matrix(predictions, references, self.num_classes, self.ignore_index).cpu()
        self.matrix += batch
        return batch

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self) -> dict[str, Any]:
        """mean_iou, mean_accuracy, overall_accuracy, per_category_iou, per_category_accuracy."""
        return metrics_from_confusion_matrix(self.matrix)


def _metric_key(name: str) -> str:
    # "traffic light" -> "traffic_light": keys end up as "eval_iou_traffic_light" in logs and TensorBoard tags.
    return "_".join(str(name).split())


class StreamingSegmentationMetrics:
    """`compute_metrics` for `Trainer` with `TrainingArguments(batch_eval_metrics=True)`.

    transformers 5.x calls it once per evaluation batch as `compute_metrics(EvalPrediction, compute_result=bool)`:
    - `eval_pred.predictions`: the model outputs other than the loss, gathered across processes, on the
      accelerator device: a tensor (B, K, h, w) of logits when the model returns only logits, else a tuple whose
      first element is the logits (that element is used). Integer class maps (B, h, w), e.g. from a
      `preprocess_logits_for_metrics` that argmaxes, are accepted too.
    - `eval_pred.label_ids`: long (B, H, W), usually at a higher resolution than the logits; may hold -100 where the
      Trainer padded across processes (treated as ignored).
    - `compute_result` is True on the last batch: the accumulated metrics are returned and the state is reset.

    Logits are upsampled bilinearly to the label size (one sample at a time, to bound memory at full Cityscapes
    resolution), then argmaxed. Returns {} for intermediate batches and, on the last one,
    {"mean_iou", "mean_accuracy", "overall_accuracy", "iou_<class name>"...} (spaces in names become "_").
    """

    def __init__(self, id2label: Mapping[int, str], ignore_index: int = 255):
        self.id2label = {int(k): str(v) for k, v in id2label.items()}
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ValueError(f"id2label keys must be 0..K-1, got {sorted(self.id2label)}")
        self.ignore_index = ignore_index
        self.confusion = ConfusionMatrix(len(self.id2label), ignore_index)

    @staticmethod
    def _as_tensor(value: Any) -> torch.Tensor:
        if isinstance(value, (tuple, list)):
            value = value[0]
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        return value

    def _class_maps(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, h, w) or class ids (B, h, w) -> class ids (B, H, W) at the label size."""
        size = labels.shape[-2:]
        if predictions.ndim == labels.ndim + 1:  # logits
            maps = []
            for logits in predictions:
                logits = logits[None].float()  # interpolation in fp32: half precision is not supported everywhere
                if logits.shape[-2:] != size:
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                maps.append(logits.argmax(dim=1)[0])
            return torch.stack(maps)
        if predictions.ndim == labels.ndim:  # already class ids
            if predictions.shape[-2:] != size:
                predictions = F.interpolate(predictions[:, None].float(), size=size, mode="nearest")[:, 0]
            return predictions.long()
        raise ValueError(
            f"predictions {tuple(predictions.shape)} fit neither logits (B, K, h, w) nor class maps (B, h, w) for "
            f"labels {tuple(labels.shape)}"
        )

    def update(self, predictions: Any, labels: Any) -> None:
        predictions = self._as_tensor(predictions)
        labels = self._as_tensor(labels)
        self.confusion.update(self._class_maps(predictions, labels), labels.to(predictions.device))

    def compute(self) -> dict[str, float]:
        result = self.confusion.compute()
        metrics = {
            "mean_iou": result["mean_iou"],
            "mean_accuracy": result["mean_accuracy"],
            "overall_accuracy": result["overall_accuracy"],
        }
        for class_id, iou in enumerate(result["per_category_iou"]):
            metrics[f"iou_{_metric_key(self.id2label[class_id])}"] = iou
        return metrics

    def reset(self) -> None:
        self.confusion.reset()

    def __call__(self, eval_pred: Any, compute_result: bool = False) -> dict[str, float]:
        self.update(eval_pred.predictions, eval_pred.label_ids)
        if not compute_result:
            return {}
        metrics = self.compute()
        self.reset()
        return metrics
