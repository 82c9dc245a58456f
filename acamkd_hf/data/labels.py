"""Label maps: the ignore index, the per-pixel lookup tables, turning a stored map into class ids, checking its values;
class names by id in one form (`normalize_id2label`).

A leaf of `acamkd_hf.data` (numpy only, nothing from the package), so that the loaders, the load-time checks and the
transforms can all use it without importing one another.

Lookup tables are uint8 (256,): `table[stored_map]` turns an 8-bit map as stored into class ids (and the ignore
index). Two exist: `LABEL_ID_TO_TRAIN_ID` (Cityscapes' labelIds -> its 19 trainIds) and `reduce_labels_lookup()`
(ADE20K-style maps whose 0 means "other"). They are applied in `SegmentationTransforms`, the one place labels are
remapped, so that the datasets stay thin indexes of files.

Label values (`check_label_values`): a map with values beyond the classes that are not the ignore index would make
cross-entropy index out of range (a CUDA device assert, or garbage on CPU). Checked per example in
`SegmentationTransforms` (vectorised compares on the 8-bit map, cheap next to decoding it), skipped when the label
lookup table can only produce valid values (`lookup_is_safe`, e.g. Cityscapes'), and at load time on the first
examples of each split (`checks.check_first_label_maps`), which catches the usual, systematic mistakes (e.g.
ADE20K's 0..150 read as 150 classes without reduce_labels) before anything trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "CITYSCAPES_LABEL_IDS",
    "CITYSCAPES_STORED_VALUES",
    "CITYSCAPES_TRAIN_CLASSES",
    "IGNORE_INDEX",
    "LABEL_ID_TO_TRAIN_ID",
    "ClassNames",
    "check_label_values",
    "count_unknown_values",
    "label_array",
    "lookup_is_safe",
    "normalize_id2label",
    "reduce_labels_lookup",
]

#: Label of pixels left out of the loss and of mIoU (unlabeled, void classes, padding).
IGNORE_INDEX = 255

_SHOWN = 10  # bad values listed in one message

# The 19 evaluation classes of Cityscapes, in trainId order (trainId i is CITYSCAPES_TRAIN_CLASSES[i]).
CITYSCAPES_TRAIN_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# labelId of each trainId, from the official table (cityscapesscripts/helpers/labels.py). Every labelId not listed
# here (unlabeled 0, ego vehicle 1, ..., license plate -1) has trainId 255 (ignored in training and evaluation).
CITYSCAPES_LABEL_IDS: tuple[int, ...] = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


#: The values a Cityscapes ``*_gtFine_labelIds.png`` may hold: its labelIds 0..33 (the 19 classes and the void
#: ones, which become ignore pixels) and 255, the ignore convention of Cityscapes-style tools. Any other value (e.g.
#: 250 from a hand-made map) is not in Cityscapes' table: an error naming the file, unless the user asks to ignore
#: such values (``--ignore_unknown_label_values``).
CITYSCAPES_STORED_VALUES = np.zeros(256, dtype=bool)
CITYSCAPES_STORED_VALUES[:34] = True
CITYSCAPES_STORED_VALUES[IGNORE_INDEX] = True
CITYSCAPES_STORED_VALUES.flags.writeable = False


def _build_label_id_to_train_id() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, label_id in enumerate(CITYSCAPES_LABEL_IDS):
        table[label_id] = train_id
    table.flags.writeable = False  # the one home of this mapping: nobody patches it in place
    return table


# uint8 (256,): `LABEL_ID_TO_TRAIN_ID[label_id_map]` turns a stored `*_gtFine_labelIds.png` into trainIds.
LABEL_ID_TO_TRAIN_ID: np.ndarray = _build_label_id_to_train_id()


def reduce_labels_lookup(ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """uint8 (256,) table for maps whose 0 means "background / other" (ADE20K style): 0 -> ignore, k -> k - 1.

    Same convention as `do_reduce_labels=True` in the HF image processors.
    """
    table = np.arange(256, dtype=np.int64) - 1
    table[0] = ignore_index
    table[255] = ignore_index
    return table.astype(np.uint8)


def normalize_id2label(id2label: Mapping[Any, Any]) -> dict[int, str]:
    """``id2label`` with int keys and str values, sorted by id: the one form class maps are compared and stored in
    (json files and configs that went through json have string keys, ``{"1": "car", "0": "road"}`` ->
    ``{0: "road", 1: "car"}``)."""
    return {int(k): str(v) for k, v in sorted(id2label.items(), key=lambda item: int(item[0]))}


class ClassNames:
    """`num_labels` and `label2id` of a dataset description (`SegmentationData`, `DetectionData`) from its
    `id2label` (class id -> name)."""

    id2label: dict[int, str]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}


def label_array(label: Any, lookup: np.ndarray | None, source: str, stored_values: np.ndarray | None = None) -> np.ndarray:
    """PIL / array label map -> (H, W) array of class ids in its stored dtype (uint8 for 8-bit maps, where checking
    the values costs a tenth of what it costs on int64), through `lookup` (uint8 (256,)) when given. `stored_values`
    (bool (256,)): the values the stored map may hold (e.g. :data:`CITYSCAPES_STORED_VALUES`), checked before the
    lookup (which would otherwise turn any unknown value into an ignore pixel without a word). `source` names the map
    in errors."""
    array = np.array(label)  # a writable copy: torch.from_numpy warns on read-only PIL buffers
    if array.ndim == 3:  # a map saved as RGB with equal channels (some Hub datasets do this)
        array = array[:, :, 0]
    if stored_values is not None and array.dtype == np.uint8:
        unknown = ~stored_values[array]
        if unknown.any():
            values = ", ".join(str(int(v)) for v in np.unique(array[unknown])[:_SHOWN])
            raise ValueError(
                f"the label map {source} holds values {values} ({int(unknown.sum())} pixels) that the dataset's label "
                "table does not define. Fix the map, or pass --ignore_unknown_label_values true to train with them "
                "as ignored pixels."
            )
    if lookup is not None:
        if array.dtype != np.uint8:
            if array.min() < 0 or array.max() > 255:
                raise ValueError(
                    f"the label map {source} has values from {array.min()} to {array.max()}, "
                    "outside [0, 255], which a uint8 label lookup table cannot map. Store class ids (and the ignore "
                    "index) as 8-bit values, or leave out the lookup (label_lookup=None, no reduce_labels)."
                )
            array = array.astype(np.uint8)
        array = lookup[array]
    return array


def lookup_is_safe(lookup: np.ndarray | None, num_labels: int, ignore_index: int) -> bool:
    """True when every value of the (256,) lookup table is a class id or the ignore index: its output needs no check."""
    if lookup is None:
        return False
    lookup = np.asarray(lookup)
    return bool(np.all((lookup < num_labels) | (lookup == ignore_index)))


def count_unknown_values(label: Any, stored_values: np.ndarray) -> dict[int, int]:
    """``{value: pixels}`` of the stored map's values outside ``stored_values`` (bool (256,))."""
    array = np.array(label)
    if array.ndim == 3:
        array = array[:, :, 0]
    if array.dtype != np.uint8:
        return {}
    values, counts = np.unique(array[~stored_values[array]], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _label_values_error(source: str, values: np.ndarray, num_labels: int, ignore_index: int) -> ValueError:
    shown = ", ".join(str(int(v)) for v in values[:_SHOWN])
    if len(values) > _SHOWN:
        shown += f" (and {len(values) - _SHOWN} more)"
    return ValueError(
        f"the label map {source} has values {shown} outside the {num_labels} classes (0..{num_labels - 1}) and the "
        f"ignore index {ignore_index}. Map them to class ids or to {ignore_index}: give an id2label that names every "
        f"class value (--id2label), use reduce_labels (--reduce_labels true) for maps whose 0 means 'other', or fix "
        "the map."
    )


def check_label_values(label: np.ndarray, num_labels: int, ignore_index: int, source: str) -> None:
    """Every value of `label` (class ids after any lookup) must be in 0..num_labels-1 or be `ignore_index`; else a
    ValueError naming `source`, the values, the number of classes and the ignore index."""
    if label.size == 0 or label.max() < num_labels and (label.dtype.kind == "u" or label.min() >= 0):
        return
    outside = (label >= num_labels) & (label != ignore_index)
    if label.dtype.kind != "u":
        outside |= label < 0
    if outside.any():
        raise _label_values_error(source, np.unique(label[outside]), num_labels, ignore_index)
