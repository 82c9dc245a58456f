"""What every semantic-segmentation loader returns: a `SegmentationData`, a `DatasetDict` with splits "train" and
"validation", each holding the columns `image` and `label` (both `datasets.Image`, decoded to PIL on access), the
class names, and an optional per-pixel lookup table that turns the stored label map into class ids (Cityscapes stores
labelIds; training uses the 19 trainIds). The table is applied in `SegmentationTransforms`, so the dataset stays a
thin index of files.

The loaders: `cityscapes` (the Cityscapes folder layout), `hub_segmentation` (any `datasets` dataset, and
`load_segmentation_data` for any source).
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np

from .labels import IGNORE_INDEX, ClassNames

__all__ = ["SegmentationData", "pair_dataset"]


@dataclass
class SegmentationData(ClassNames):
    """A segmentation dataset ready for `SegmentationTransforms`.

    dataset: splits "train" and "validation" (a split may be missing only when the source has none); columns
        `image` (`datasets.Image`, RGB) and `label` (`datasets.Image`, the raw single-channel map as stored).
    id2label: class id -> name for the ids *after* `label_lookup`.
    label_lookup: uint8 (256,) table applied per pixel to the raw map (`label_lookup[raw]`); None when the raw map
        already holds class ids (and `ignore_index` for unlabeled pixels).
    ignore_index: label value excluded from the loss and from mIoU.
    stored_values: bool (256,): the values the stored maps may hold (Cityscapes': its labelIds and 255); None when
        any value the lookup maps is fine.
    """

    dataset: datasets.DatasetDict
    id2label: dict[int, str]
    label_lookup: np.ndarray | None
    ignore_index: int = IGNORE_INDEX
    stored_values: np.ndarray | None = None


def pair_dataset(rows: dict[str, list[str]]) -> datasets.Dataset:
    """Image / label-map file pairs (``{"image": [path, ...], "label": [path, ...]}``, in the same order) as a
    `datasets.Dataset` whose two columns are `datasets.Image` (decoded when read)."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict(rows, features=features)
