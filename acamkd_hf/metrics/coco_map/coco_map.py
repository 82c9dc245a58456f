# Copyright the acamkd-hf contributors. Apache-2.0.
#
# An `evaluate` module for COCO bbox mAP with pycocotools, fed COCO-format detections and ground truth per image.
# Loads offline by path:
#     evaluate.load(acamkd_hf.metrics.COCO_MAP_METRIC_PATH)
# Keep one import per line (evaluate's dependency scan misreads comma imports) and do not import acamkd_hf here:
# evaluate copies this file into its module cache and imports it standalone.
"""COCO bbox mAP (pycocotools COCOeval) over per-image predictions and references."""

import contextlib
import io
import logging

import datasets
import evaluate
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")

_DESCRIPTION = """
COCO object-detection metrics computed by pycocotools' COCOeval (iouType "bbox").

One prediction/reference pair per image, both in COCO format: boxes [x, y, w, h] in absolute pixels and the
ground truth's category ids. The references of all images form the ground truth (crowd boxes, `iscrowd=1`, are
ignored regions as in COCO); images with no reference box count (their detections are false positives). At most
`max_detections` detections per image are kept (the highest scores), COCO's usual limit of 100.
Returns the numbers `COCOeval.summarize()` prints: AP averaged over IoU 0.50:0.95, AP at 0.50 and 0.75, AP for
small (< 32^2), medium and large (> 96^2) objects, and AR with `max_detections` detections per image; -1 where
nothing defines a value (no ground truth in that size range), all 0 (with a warning) when there is no detection.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `dict`): one per image: `image_id` (`int`), `bbox` (`list` of [x, y, w, h]),
        `score` (`list` of `float`), `category_id` (`list` of `int`).
    references (`list` of `dict`): one per image, the same images: `image_id` (`int`), `bbox` (`list` of
        [x, y, w, h]), `category_id` (`list` of `int`), `area` (`list` of `float`; empty = box areas), `iscrowd`
        (`list` of `int`; empty = all 0).
    max_detections (`int`, defaults to 100): detections kept per image and COCOeval's largest `maxDets`.
Returns:
    map, map_50, map_75, map_small, map_medium, map_large, mar_100 (`float`).
Examples:
    >>> metric = evaluate.load(COCO_MAP_METRIC_PATH)
    >>> metric.add_batch(
    ...     predictions=[{"image_id": 1, "bbox": [[10, 10, 20, 20]], "score": [0.9], "category_id": [3]}],
    ...     references=[{"image_id": 1, "bbox": [[10, 10, 20, 20]], "category_id": [3], "area": [], "iscrowd": []}],
    ... )
    >>> metric.compute()["map"]
    1.0
"""

_CITATION = """
@inproceedings{lin2014microsoft,
  title={Microsoft COCO: Common Objects in Context},
  author={Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and Perona, Pietro and Ramanan, Deva
          and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle={European Conference on Computer Vision (ECCV)},
  pages={740--755},
  year={2014}
}
"""


def _summary(cocoeval):
    params = cocoeval.params
    precision = cocoeval.eval["precision"]  # (T, R, K, A, M)
    recall = cocoeval.eval["recall"]  # (T, K, A, M)
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    last = len(params.maxDets) - 1

    def mean(values):
        valid = values[values > -1]
        if valid.size == 0:
            return -1.0
        return float(valid.mean())

    def ap(area_label="all", iou=None):
        values = precision[..., area[area_label], last]
        if iou is not None:
            values = values[np.isclose(params.iouThrs, iou)]
        return mean(values)

    return {
        "map": ap(),
        "map_50": ap(iou=0.5),
        "map_75": ap(iou=0.75),
        "map_small": ap("small"),
        "map_medium": ap("medium"),
        "map_large": ap("large"),
        "mar_100": mean(recall[:, :, area["all"], last]),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CocoMap(evaluate.Metric):
    def _info(self):
        box = datasets.Sequence(datasets.Sequence(datasets.Value("float64")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "image_id": datasets.Value("int64"),
                        "bbox": box,
                        "score": datasets.Sequence(datasets.Value("float64")),
                        "category_id": datasets.Sequence(datasets.Value("int64")),
                    },
                    "references": {
                        "image_id": datasets.Value("int64"),
                        "bbox": box,
                        "category_id": datasets.Sequence(datasets.Value("int64")),
                        "area": datasets.Sequence(datasets.Value("float64")),
                        "iscrowd": datasets.Sequence(datasets.Value("int64")),
                    },
                }
            ),
            reference_urls=["https://cocodataset.org/#detection-eval", "https://github.com/cocodataset/cocoapi"],
        )

    def _compute(self, predictions, references, max_detections=100):
        images, annotations, category_ids = [], [], set()
        seen = set()
        for ref in references:
            image_id = int(ref["image_id"])
            if image_id in seen:
                raise ValueError(f"image {image_id} has more than one reference entry")
            seen.add(image_id)
            images.append({"id": image_id})
            boxes = ref["bbox"]
            areas = ref["area"] if len(ref["area"]) else [float(b[2]) * float(b[3]) for b in boxes]
            crowds = ref["iscrowd"] if len(ref["iscrowd"]) else [0] * len(boxes)
            if not len(areas) == len(crowds) == len(ref["category_id"]) == len(boxes):
                raise ValueError(f"image {image_id}: bbox, category_id, area and iscrowd lengths differ")
            for box, category, box_area, crowd in zip(boxes, ref["category_id"], areas, crowds):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(category),
                        "bbox": [float(v) for v in box],
                        "area": float(box_area),
                        "iscrowd": int(crowd),
                    }
                )
                category_ids.add(int(category))

        results = []
        for pred in predictions:
            image_id = int(pred["image_id"])
            if image_id not in seen:
                raise ValueError(f"predictions for image {image_id}, which has no reference entry")
            scores = np.asarray(pred["score"], dtype=np.float64)
            if not len(scores) == len(pred["bbox"]) == len(pred["category_id"]):
                raise ValueError(f"image {image_id}: bbox, score and category_id lengths differ")
            order = np.argsort(-scores, kind="stable")[: int(max_detections)]
            for i in order:
                category = int(pred["category_id"][i])
                category_ids.add(category)
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": [float(v) for v in pred["bbox"][i]],
                        "score": float(scores[i]),
                    }
                )
        if not results:
            logger.warning("COCO evaluation: no detections at all; every metric is 0")
            return dict.fromkeys(_KEYS, 0.0)

        ground_truth = COCO()
        ground_truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in sorted(category_ids)],
        }
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            ground_truth.createIndex()
            detections = ground_truth.loadRes(results)
            cocoeval = COCOeval(ground_truth, detections, iouType="bbox")
            cocoeval.params.maxDets = [1, 10, int(max_detections)]
            cocoeval.evaluate()
            cocoeval.accumulate()
        return _summary(cocoeval)
