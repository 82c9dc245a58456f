"""Object-detection metrics: COCO mAP (pycocotools COCOeval) fed batch by batch.

The state is compact: per image at most `max_detections` detections, stored as one float64 row
[image_id, x, y, w, h, score, category_id] each (56 bytes), in original-image pixels and original category ids.
COCOeval runs once, at the end, against the split's ground-truth json.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_METRIC_KEYS",
    "CocoDetectionMetrics",
    "coco_eval",
    "detection_labels_for_metrics",
    "load_coco_ground_truth",
]

#: The keys every COCO evaluation here returns (floats).
COCO_METRIC_KEYS: tuple[str, ...] = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")
# Where each key is in `COCOeval.stats` (bbox): AP, AP50, AP75, AP_S, AP_M, AP_L, AR@1, AR@10, AR@100, AR_S, AR_M, AR_L.
_STATS_INDEX: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 8)


def load_coco_ground_truth(ground_truth: Any):
    """A `pycocotools.coco.COCO` from a json path, a COCO-format dict, or a COCO (returned as is)."""
    from pycocotools.coco import COCO

    if isinstance(ground_truth, COCO):
        return ground_truth
    if isinstance(ground_truth, (str, os.PathLike)):
        path = Path(ground_truth)
        if not path.is_file():
            raise FileNotFoundError(f"COCO ground-truth json not found: {path}")
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
            return COCO(str(path))
    if isinstance(ground_truth, Mapping):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(ground_truth))  # a private deep copy (loadRes reads it later)
        coco.dataset.setdefault("annotations", [])
        coco.dataset.setdefault("categories", [])
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    raise TypeError(
        f"ground_truth must be a json path, a COCO-format dict or a COCO, got {type(ground_truth).__name__}"
    )


def coco_eval(
    ground_truth: Any,
    detections: Any,
    *,
    image_ids: Any = None,
    max_detections: int = 100,
) -> dict[str, float]:
    """COCO bbox mAP of `detections` against `ground_truth` with pycocotools.

    ground_truth: json path, COCO-format dict, or `pycocotools.coco.COCO`.
    detections: COCO results (a list of {"image_id", "category_id", "bbox": [x, y, w, h], "score"}) or a float
        array (N, 7) of [image_id, x, y, w, h, score, category_id] rows; boxes in original-image pixels,
        categories as in the ground truth.
    image_ids: the images to evaluate (default: every image of the ground truth). Images listed here without
        detections count as misses; ground-truth images not listed are left out.
    max_detections: COCOeval's `maxDets` become [1, 10, max_detections]; `mar_100` is the recall at that last value
        (COCO's AR@100 with the default).

    Returns {"map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"}: `COCOeval.stats` 0-5
    and 8, the numbers `COCOeval.summarize()` prints (-1 where undefined), all at `max_detections` detections per
    image. With no detections at all: every value 0.0 and a warning (pycocotools' `loadRes` cannot take an empty
    result list).
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = load_coco_ground_truth(ground_truth)
    if isinstance(detections, np.ndarray):
        if detections.ndim != 2 or detections.shape[1] != 7:
            raise ValueError(f"detections array must be (N, 7), got {detections.shape}")
        num = len(detections)
        det_image_ids = {int(i) for i in detections[:, 0]} if num else set()
        results: Any = detections.astype(np.float64)
    else:
        results = [dict(d) for d in detections]  # loadRes adds keys to the dicts it gets
        num = len(results)
        det_image_ids = {int(d["image_id"]) for d in results}
    if num == 0:
        logger.warning("COCO evaluation: no detections at all; every metric is 0")
        return dict.fromkeys(COCO_METRIC_KEYS, 0.0)
    unknown = det_image_ids - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"detections for image ids not in the ground truth: {sorted(unknown)[:10]}")

    with contextlib.redirect_stdout(io.StringIO()):  # loadRes / evaluate / accumulate / summarize print
        coco_dt = coco_gt.loadRes(results)
        cocoeval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            cocoeval.params.imgIds = sorted({int(i) for i in image_ids})
        cocoeval.params.maxDets = [1, 10, int(max_detections)]
        cocoeval.evaluate()
        cocoeval.accumulate()
        # summarize() finds the maxDets slot by value and reads AP (stats[0]) at 100 whatever maxDets holds, so the
        # last slot (the largest: evaluate() sorts maxDets) is named 100 for it; nothing changes with the default 100.
        cocoeval.params.maxDets = [1, 10, 100]
        cocoeval.summarize()
    return {key: float(cocoeval.stats[index]) for key, index in zip(COCO_METRIC_KEYS, _STATS_INDEX, strict=True)}


def detection_labels_for_metrics(labels: list[Mapping[str, Any]]) -> torch.Tensor:
    """List of target dicts -> long (B,) image ids: all `CocoDetectionMetrics` needs (the original image sizes come
    from the ground truth).

    A fixed-shape tensor is what `Trainer` can gather across processes (its gather concatenates every tensor of a
    nested structure across ranks, so per-image dicts with different box counts cannot be gathered). Return this
    from `prediction_step` as the labels in multi-process evaluation.
    """
    ids = [torch.as_tensor(target["image_id"]).reshape(-1)[0].long().cpu() for target in labels]
    return torch.stack(ids) if ids else torch.zeros((0,), dtype=torch.long)


def _to_tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def _split_predictions(predictions: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, Q, C), pred_boxes (B, Q, 4)) out of what `Trainer` hands over.

    Accepts an object or mapping with `logits` / `pred_boxes`, or a tuple of model outputs: `Trainer` passes the
    output's values other than the loss, in order; non-tensors (DETR's `loss_dict`, auxiliary outputs) are skipped,
    the first 3-d tensor is the logits and the next 3-d tensor of shape (B, Q, 4) the boxes (DETR, Deformable DETR,
    RT-DETR, ... all order their outputs this way).
    """
    if isinstance(predictions, Mapping) and "logits" in predictions:
        return _to_tensor(predictions["logits"]), _to_tensor(predictions["pred_boxes"])
    if hasattr(predictions, "logits") and hasattr(predictions, "pred_boxes"):
        return _to_tensor(predictions.logits), _to_tensor(predictions.pred_boxes)
    if isinstance(predictions, (tuple, list)):
        tensors = [_to_tensor(p) for p in predictions if isinstance(p, (torch.Tensor, np.ndarray))]
        tensors = [t for t in tensors if t.ndim == 3]
        if tensors:
            logits = tensors[0]
            for boxes in tensors[1:]:
                if boxes.shape[:2] == logits.shape[:2] and boxes.shape[-1] == 4:
                    return logits, boxes
    raise ValueError(
        "could not find (logits (B, Q, C), pred_boxes (B, Q, 4)) in the predictions: got "
        f"{_describe(predictions)}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__}{tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}[" + ", ".join(_describe(v) for v in value) + "]"
    return type(value).__name__


def _image_ids(label_ids: Any, num_rows: int) -> list[int]:
    """Image id of each prediction row, out of what `Trainer` hands over as `label_ids`.

    - a (B,) tensor / array of image ids (`detection_labels_for_metrics`), or a (B, k) one whose column 0 is the
      image id;
    - a list of target dicts with `image_id`. Only `image_id` is read: `Trainer`'s gather truncates *every* tensor
      of the last batch to the number of remaining samples, so `orig_size` (2,) arrives as (1,) there, while the
      image id (1,) survives. Sizes come from the ground truth instead. If the dicts went through a multi-process
      gather, each `image_id` holds one id per process (concatenated), and the rows are rank-major.
    """
    if isinstance(label_ids, (torch.Tensor, np.ndarray)):
        ids = np.asarray(label_ids.detach().cpu() if isinstance(label_ids, torch.Tensor) else label_ids)
        ids = ids[:, 0] if ids.ndim == 2 else ids.reshape(-1)
        if len(ids) != num_rows:
            raise ValueError(f"{len(ids)} label rows for {num_rows} prediction rows")
        return [int(i) for i in ids]
    if isinstance(label_ids, Mapping):  # a single target dict
        label_ids = [label_ids]
    if not isinstance(label_ids, (tuple, list)):
        raise ValueError(f"label_ids must be target dicts or an (B, k) id tensor, got {_describe(label_ids)}")
    columns = []
    for target in label_ids:
        if not isinstance(target, Mapping) or "image_id" not in target:
            raise ValueError("each label must be a dict with an 'image_id' (the DETR-family target format)")
        value = target["image_id"]
        value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        columns.append(value.reshape(-1))
    if not columns:
        if num_rows:
            raise ValueError(f"no labels for {num_rows} prediction rows")
        return []
    per_target = {len(c) for c in columns}
    if len(per_target) != 1:
        raise ValueError(f"image_id entries of different lengths {sorted(per_target)}")
    matrix = np.stack(columns)  # (B, processes)
    if matrix.shape[1] == 1:
        if matrix.shape[0] != num_rows:
            raise ValueError(f"{matrix.shape[0]} labels for {num_rows} prediction rows")
        return [int(i) for i in matrix[:, 0]]
    ids = matrix.T.reshape(-1)  # rank-major, the order of the gathered predictions
    if len(ids) < num_rows:
        raise ValueError(f"{len(ids)} image ids for {num_rows} prediction rows")
    return [int(i) for i in ids[:num_rows]]


class CocoDetectionMetrics:
    """`compute_metrics` for `Trainer` with `TrainingArguments(batch_eval_metrics=True)`: COCO bbox mAP.

    transformers 5.23 calls it once per evaluation batch as `compute_metrics(EvalPrediction, compute_result=bool)`:
    - `eval_pred.predictions`: the model outputs other than the loss: `(logits, pred_boxes)` for a model returning
      (loss, logits, pred_boxes); for DETR's own output `(loss_dict, logits, pred_boxes, last_hidden_state, ...)`.
      Both are handled (see `_split_predictions`), as is an object or dict with `logits` / `pred_boxes`.
    - `eval_pred.label_ids`: the batch's `labels` as collated (a list of target dicts, each with `image_id`), or a
      (B,) tensor of image ids (`detection_labels_for_metrics`, needed with several processes; a (B, k) one whose
      column 0 is the image id is read too).
    - `compute_result` is True on the last batch: the accumulated metrics are returned and the state is reset.
    Without `batch_eval_metrics`, `Trainer` calls it once with everything; with `eval_do_concat_batches=False` that
    is a list of per-batch predictions and a list of per-batch label lists, which is handled too.

    Per batch the outputs go through `image_processor.post_process_object_detection(outputs, threshold,
    target_sizes)` (so DETR's softmax or RT-DETR's sigmoid top-k scoring is the model family's own), with the
    original image sizes taken from the ground truth; the boxes (normalised to each unpadded image, see
    `DetectionTransforms`) come back in original-image pixels, the `max_detections` best per image are kept as
    [x, y, w, h], and labels are mapped to the original category ids. An image seen twice (e.g. padded duplicates in
    distributed evaluation) counts once. At the end COCOeval runs over the images seen (so a truncated evaluation
    set is scored on itself) and returns `COCO_METRIC_KEYS`: "map", "map_50", "map_75", "map_small", "map_medium",
    "map_large", "mar_100" (floats; -1 where the ground truth has no object of that size, as pycocotools; all 0
    with a warning when there is no detection at all).

    Trainer settings for detection: `batch_eval_metrics=True`, `remove_unused_columns=False` (the transform needs
    `image`, `image_id` and `objects`), `label_names=["labels"]` (unless the model's forward has a `labels`
    argument, from which Trainer infers it); `eval_do_concat_batches=False` only matters without
    `batch_eval_metrics`.
    """

    def __init__(
        self,
        image_processor: Any,
        ground_truth: Any,
        label_to_category_id: Mapping[int, int],
        threshold: float = 0.0,
        max_detections: int = 100,
    ):
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.image_processor = image_processor
        self.coco_gt = load_coco_ground_truth(ground_truth)
        self.label_to_category_id = {int(k): int(v) for k, v in label_to_category_id.items()}
        known = set(self.coco_gt.getCatIds())
        missing = sorted(set(self.label_to_category_id.values()) - known)
        if missing:
            raise ValueError(
                f"category ids {missing} of label_to_category_id are not in the ground truth {sorted(known)}"
            )
        self._category_lookup = np.full(max(self.label_to_category_id, default=-1) + 1, -1, dtype=np.int64)
        for label, category in self.label_to_category_id.items():
            self._category_lookup[label] = category
        self.threshold = float(threshold)
        self.max_detections = int(max_detections)
        self._chunks: list[np.ndarray] = []
        self._seen: set[int] = set()

    def reset(self) -> None:
        self._chunks = []
        self._seen = set()

    def _original_size(self, image_id: int) -> tuple[int, int]:
        image = self.coco_gt.imgs.get(image_id)
        if image is None:
            raise ValueError(f"image id {image_id} is not in the ground truth")
        if "height" not in image or "width" not in image:
            raise ValueError(f"ground-truth image {image_id} has no width/height")
        return int(image["height"]), int(image["width"])

    def update(self, predictions: Any, label_ids: Any) -> None:
        """Add one batch (see the class docstring for the accepted forms)."""
        logits, boxes = _split_predictions(predictions)
        image_ids = _image_ids(label_ids, logits.shape[0])
        keep = []
        for row, image_id in enumerate(image_ids):
            if image_id not in self._seen:
                self._seen.add(image_id)
                keep.append(row)
        if not keep:
            return
        if len(keep) != len(image_ids):
            index = torch.as_tensor(keep, device=logits.device)
            logits, boxes = logits.index_select(0, index), boxes.index_select(0, index)
        image_ids = [image_ids[row] for row in keep]
        sizes = torch.tensor([self._original_size(i) for i in image_ids], dtype=torch.float32)
        outputs = SimpleNamespace(logits=logits.float(), pred_boxes=boxes.float())
        results = self.image_processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=sizes.to(logits.device)
        )
        for image_id, result in zip(image_ids, results, strict=True):
            scores = result["scores"].detach().float().cpu()
            labels = result["labels"].detach().cpu().long()
            xyxy = result["boxes"].detach().double().cpu()
            if scores.numel() > self.max_detections:
                top = scores.topk(self.max_detections).indices
                scores, labels, xyxy = scores[top], labels[top], xyxy[top]
            if scores.numel() == 0:
                continue
            labels_np = labels.numpy()
            if labels_np.min() < 0 or labels_np.max() >= len(self._category_lookup):
                raise ValueError(f"predicted labels {np.unique(labels_np).tolist()} outside label_to_category_id")
            categories = self._category_lookup[labels_np]
            if (categories < 0).any():
                raise ValueError(f"predicted labels {np.unique(labels_np).tolist()} outside label_to_category_id")
            xyxy = xyxy.numpy()
            rows = np.empty((len(scores), 7), dtype=np.float64)
            rows[:, 0] = image_id
            rows[:, 1:3] = xyxy[:, :2]
            rows[:, 3:5] = xyxy[:, 2:] - xyxy[:, :2]
            rows[:, 5] = scores.double().numpy()
            rows[:, 6] = categories
            self._chunks.append(rows)

    def compute(self) -> dict[str, float]:
        """COCOeval over the images seen so far (state kept; `__call__` resets it)."""
        if not self._seen:
            logger.warning("COCO evaluation: no images were evaluated; every metric is 0")
            return dict.fromkeys(COCO_METRIC_KEYS, 0.0)
        detections = np.concatenate(self._chunks) if self._chunks else np.zeros((0, 7))
        return coco_eval(self.coco_gt, detections, image_ids=self._seen, max_detections=self.max_detections)

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        if isinstance(predictions, list) and predictions and isinstance(predictions[0], (tuple, list)):
            # Trainer without batch_eval_metrics and eval_do_concat_batches=False: one entry per batch
            if not isinstance(label_ids, list) or len(label_ids) != len(predictions):
                raise ValueError("per-batch predictions need per-batch label lists of the same length")
            for batch_predictions, batch_labels in zip(predictions, label_ids):
                self.update(batch_predictions, batch_labels)
        else:
            self.update(predictions, label_ids)
        if not compute_result:
            return {}
        metrics = self.compute()
        self.reset()
        return metrics
