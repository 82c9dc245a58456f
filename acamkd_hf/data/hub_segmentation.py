"""Semantic-segmentation datasets from the Hub or a local `datasets` folder, as a `SegmentationData` (see
`segmentation`), and `load_segmentation_data`, the loader for any source (Cityscapes folder, local dataset folder or
Hub id).

What any `datasets` dataset needs (loading, split and column names, id2label.json) lives in `hub_datasets`, the
Cityscapes layout in `cityscapes`.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import numpy as np

from .checks import check_first_label_maps
from .cityscapes import check_whole_cityscapes_layout, is_cityscapes_layout, load_cityscapes
from .hub_datasets import (
    find_id2label_file,
    find_validation_split,
    load_dataset_dict,
    pick_column,
    read_id2label_json,
    renamed_classes,
    require_examples,
    require_split,
)
from .labels import IGNORE_INDEX, normalize_id2label, reduce_labels_lookup
from .segmentation import SegmentationData

__all__ = ["load_segmentation_data"]

_IMAGE_COLUMNS = ("image", "pixel_values", "img")
_LABEL_COLUMNS = ("label", "annotation", "semantic_map", "segmentation", "seg_map", "mask", "labels")
_OTHER_SPLIT = "(--train_split / --validation_split, or --validation_fraction to hold out part of the training split)"


def load_segmentation_data(
    name_or_path: str | os.PathLike,
    *,
    id2label: dict[int, str] | str | os.PathLike | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    validation_split: str | None = None,
    validation_fraction: float | None = None,
    split_seed: int = 0,
    label_lookup: np.ndarray | None = None,
    reduce_labels: bool = False,
    ignore_index: int = IGNORE_INDEX,
    **load_dataset_kwargs: Any,
) -> SegmentationData:
    """Load a segmentation dataset by Cityscapes folder, local dataset folder or Hub id.

    - A folder in the Cityscapes layout goes through `load_cityscapes` (all other arguments but `id2label` are
      ignored; `id2label` may rename the 19 classes).
    - Anything else goes through `datasets.load_dataset(name_or_path, **load_dataset_kwargs)`. The image and
      segmentation-map columns are detected among common names (image/pixel_values/img;
      label/annotation/semantic_map/segmentation/seg_map/mask/labels) unless given, then renamed to
      `image`/`label`; other columns are dropped. The validation split is the first of validation/val/valid unless
      `validation_split` names one; a dataset with a train split only (e.g. segments/sidewalk-semantic) needs
      `validation_fraction`, which holds out that fraction of train (seeded by `split_seed`).
    - Class names: `id2label` if given (a dict, or the path of a json file {"0": "name", ...}), else an
      `id2label.json` next to the data (local folder or Hub dataset repo, the convention of the HF segmentation
      examples); otherwise a ValueError asks for `id2label`. (Dataset features do not name the classes of a pixel
      map; a ClassLabel column such as ADE20K's `scene_category` names something else, so it is not used.)
    - `label_lookup` (uint8 (256,)) is passed through to the transforms; `reduce_labels=True` instead sets it to
      0 -> ignore, k -> k - 1 (ADE20K-style maps where 0 is "other"). Give at most one of the two.
    - Checks (ValueError naming the split or example): a split without examples; values outside the classes and
      the ignore index in the first 8 label maps of each split (the transforms check the rest when they read them).
    """
    name_or_path = os.fspath(name_or_path)
    if isinstance(id2label, (str, os.PathLike)):
        id2label = read_id2label_json(id2label)
    check_whole_cityscapes_layout(name_or_path)
    if is_cityscapes_layout(name_or_path):
        data = load_cityscapes(name_or_path)
        if id2label is not None:
            data.id2label = renamed_classes(id2label, data.id2label, "a Cityscapes folder")
        return data

    if reduce_labels and label_lookup is not None:
        raise ValueError("give either label_lookup or reduce_labels=True, not both")
    loaded = load_dataset_dict(name_or_path, **load_dataset_kwargs)
    loaded, validation_split = _train_and_validation(
        loaded, name_or_path, train_split, validation_split, validation_fraction, split_seed
    )
    image_col, label_col = _image_and_label_columns(loaded[train_split].column_names, image_column, label_column)
    id2label = _class_names(id2label, name_or_path, load_dataset_kwargs)
    if reduce_labels:
        label_lookup = reduce_labels_lookup(ignore_index)

    splits = {}
    for source, target in ((train_split, "train"), (validation_split, "validation")):
        require_examples(loaded[source], source, name_or_path, _OTHER_SPLIT)
        ds = _image_and_label(loaded[source], image_col, label_col)
        # The usual mistakes (a map with more classes than id2label names, 0 = "other" without reduce_labels) show
        # in the first examples: caught here, before anything trains; the transforms check every example as read.
        check_first_label_maps(ds, source, len(id2label), ignore_index, label_lookup)
        splits[target] = ds
    return SegmentationData(
        dataset=datasets.DatasetDict(splits),
        id2label=id2label,
        label_lookup=label_lookup,
        ignore_index=ignore_index,
    )


def _train_and_validation(
    loaded: datasets.DatasetDict,
    name_or_path: str,
    train_split: str,
    validation_split: str | None,
    validation_fraction: float | None,
    split_seed: int,
) -> tuple[datasets.DatasetDict, str]:
    """The splits (with a validation split held out of train when ``validation_fraction`` is given) and the name of
    the validation split."""
    require_split(loaded, train_split, name_or_path)
    if validation_fraction is not None:
        if validation_split is not None:
            raise ValueError("give either validation_split or validation_fraction, not both")
        held_out = loaded[train_split].train_test_split(test_size=validation_fraction, seed=split_seed)
        return datasets.DatasetDict({train_split: held_out["train"], "validation": held_out["test"]}), "validation"
    if validation_split is None:
        hint = " or hold out part of the training split with --validation_fraction 0.1"
        return loaded, find_validation_split(loaded, name_or_path, hint=hint)
    require_split(loaded, validation_split, name_or_path)
    return loaded, validation_split


def _image_and_label_columns(
    columns: list[str], image_column: str | None, label_column: str | None
) -> tuple[str, str]:
    """The image and the label-map column: the given ones, else the first of the common names found."""
    image_col = pick_column(
        columns, _IMAGE_COLUMNS, "image column", override=image_column, hint="; pass image_column=... explicitly"
    )
    label_col = pick_column(
        [c for c in columns if c != image_col],
        _LABEL_COLUMNS,
        "label column",
        override=label_column,
        hint="; pass label_column=... explicitly",
    )
    return image_col, label_col


def _class_names(id2label: dict | None, name_or_path: str, load_dataset_kwargs: dict) -> dict[int, str]:
    """``id2label`` as given, else the id2label.json next to the data; keys must be the class ids 0..K-1."""
    if id2label is None:
        id2label = find_id2label_file(
            name_or_path, load_dataset_kwargs.get("revision"), load_dataset_kwargs.get("token")
        )
    if id2label is None:
        raise ValueError(
            f"no class names found for {name_or_path} (no id2label.json next to the data); "
            "pass --id2label classes.json (a json file {\"0\": \"name\", ...}; id2label={0: 'name', ...} in Python)"
        )
    id2label = normalize_id2label(id2label)
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"id2label keys must be the class ids 0..K-1, got {sorted(id2label)}")
    return id2label


def _image_and_label(ds: datasets.Dataset, image_col: str, label_col: str) -> datasets.Dataset:
    """The two columns, renamed to `image` / `label`, as `datasets.Image` (other columns dropped)."""
    ds = ds.select_columns([image_col, label_col])
    if image_col != "image":
        ds = ds.rename_column(image_col, "image")
    if label_col != "label":
        ds = ds.rename_column(label_col, "label")
    # Paths or bytes stored as plain columns become decodable images; an existing Image feature is kept.
    for col in ("image", "label"):
        if not isinstance(ds.features[col], datasets.Image):
            ds = ds.cast_column(col, datasets.Image())
    return ds
