"""What every object-detection loader returns (`coco.load_coco`, `hub_detection.load_detection_data`).

A `DetectionData` is a `DatasetDict` with splits "train" and "validation", each holding

    image     datasets.Image (decoded to PIL on access)
    image_id  int64, unique within the split (the key between predictions and the ground truth)
    width, height   int32, the stored image size
    objects   {"id": List(int64), "area": List(float32), "bbox": List(List(float32, length=4)),
               "category": List(ClassLabel), "iscrowd": List(int8)}

with `bbox` as COCO's absolute-pixel [x, y, w, h] and `category` a contiguous label 0..K-1. Beside it: the class
names, the label -> original category id map (COCO's ids are 1..90 for 80 classes; predictions are mapped back for
evaluation), and per split the path of a COCO-format annotations json that `pycocotools.coco.COCO` reads as the
ground truth of COCOeval (`acamkd_hf.metrics.CocoDetectionMetrics`).

Crowd annotations (`iscrowd=1`) stay in `objects` and in the ground truth, where COCOeval uses them to ignore
detections on crowds; `DetectionTransforms` leaves them out of the training targets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import datasets

from .labels import ClassNames

__all__ = ["DetectionData", "detection_features"]


@dataclass
class DetectionData(ClassNames):
    """A detection dataset ready for `DetectionTransforms` and `CocoDetectionMetrics`.

    dataset: splits "train" and "validation" (columns: see the module docstring).
    id2label: contiguous label -> class name.
    label_to_category_id: contiguous label -> category id of the ground-truth json (COCO's original ids; the
        identity for datasets whose categories are a ClassLabel).
    ground_truth: split -> path of a COCO-format annotations json for COCOeval (`pycocotools.coco.COCO(path)`),
        None for a split that has none.
    """

    dataset: datasets.DatasetDict
    id2label: dict[int, str]
    label_to_category_id: dict[int, int]
    ground_truth: dict[str, str | None]
    #: made by this package (:func:`~acamkd_hf.data.make_synthetic_coco`): square images of one size
    synthetic: bool = False


def detection_features(class_names: Iterable[str]) -> datasets.Features:
    """The features of every `DetectionData` split."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": {
                "id": datasets.List(datasets.Value("int64")),
                "area": datasets.List(datasets.Value("float32")),
                "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                "category": datasets.List(datasets.ClassLabel(names=list(class_names))),
                "iscrowd": datasets.List(datasets.Value("int8")),
            },
        }
    )
