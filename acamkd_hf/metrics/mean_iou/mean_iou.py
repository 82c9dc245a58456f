# Copyright the acamkd-hf contributors. Apache-2.0.
#
# An `evaluate` module for mean IoU that is fed confusion matrices, not pixel maps, so its memory (and its arrow
# cache) stays flat: each add_batch stores K x K counts. Loads offline by path:
#     evaluate.load(acamkd_hf.metrics.MEAN_IOU_METRIC_PATH)
# Keep one import per line (evaluate's dependency scan misreads comma imports) and do not import acamkd_hf here:
# evaluate copies this file into its module cache and imports it standalone.
"""Mean IoU from summed confusion matrices."""

import math

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Mean Intersection-over-Union for semantic segmentation, computed from per-batch confusion matrices.

Each prediction/reference pair contributes a K x K matrix of pixel counts (rows = reference class, columns =
predicted class, ignored pixels already left out), e.g. from `acamkd_hf.metrics.confusion_matrix`. The matrices are
summed, then for each class IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN). A class absent from both the
reference and the prediction has IoU NaN; absent from the reference, accuracy NaN. Means skip NaN.
"""

_KWARGS_DESCRIPTION = """
Args:
    confusion_matrix (`list` of K x K `int` matrices): one per batch (or per image), rows = reference class,
        columns = predicted class.
    num_labels (`int`): K; every matrix must be K x K.
Returns:
    mean_iou (`float`), mean_accuracy (`float`), overall_accuracy (`float`, pixel accuracy),
    per_category_iou (`list` of K `float`), per_category_accuracy (`list` of K `float`).
Examples:
    >>> metric = evaluate.load(MEAN_IOU_METRIC_PATH)
    >>> metric.add_batch(confusion_matrix=[[[3, 1], [0, 4]]])
    >>> round(metric.compute(num_labels=2)["mean_iou"], 4)
    0.775
"""

_CITATION = """
@article{everingham2010pascal,
  title={The Pascal Visual Object Classes (VOC) Challenge},
  author={Everingham, Mark and Van Gool, Luc and Williams, Christopher K. I. and Winn, John and Zisserman, Andrew},
  journal={International Journal of Computer Vision},
  volume={88}, number={2}, pages={303--338}, year={2010}
}
"""


def _nanmean(values):
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return math.nan
    return float(finite.mean())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"confusion_matrix": datasets.Sequence(datasets.Sequence(datasets.Value("int64")))}
            ),
            reference_urls=["https://www.cityscapes-dataset.com/benchmarks/"],
        )

    def _compute(self, confusion_matrix, num_labels):
        total_matrix = np.zeros((num_labels, num_labels), dtype=np.float64)
        for matrix in confusion_matrix:
            matrix = np.asarray(matrix, dtype=np.float64)
            if matrix.shape != (num_labels, num_labels):
                raise ValueError(f"expected {num_labels}x{num_labels} confusion matrices, got {matrix.shape}")
            total_matrix += matrix
        intersection = np.diag(total_matrix)
        reference_area = total_matrix.sum(axis=1)
        predicted_area = total_matrix.sum(axis=0)
        union = reference_area + predicted_area - intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, intersection / union, np.nan)
            accuracy = np.where(reference_area > 0, intersection / reference_area, np.nan)
        total = total_matrix.sum()
        overall = float(intersection.sum() / total) if total > 0 else math.nan
        return {
            "mean_iou": _nanmean(iou),
            "mean_accuracy": _nanmean(accuracy),
            "overall_accuracy": overall,
            "per_category_iou": [float(x) for x in iou],
            "per_category_accuracy": [float(x) for x in accuracy],
        }
