"""Semantic-segmentation datasets: Cityscapes from its on-disk layout, or any `datasets` dataset.

Everything ends up as a `SegmentationData`: a `DatasetDict` with splits "train" and "validation", each holding the
columns `image` and `label` (both `datasets.Image`, decoded to PIL on access), the class names, and an optional
per-pixel lookup table that turns the stored label map into class ids (Cityscapes stores labelIds; training uses
the 19 trainIds). The table is applied in `SegmentationTransforms`, so the dataset stays a thin index of files.

The Cityscapes classes and lookup tables live in `labels`, what any `datasets` dataset needs (loading, split and
column names, id2label.json) in `hub_datasets`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .checks import check_first_label_maps, check_image_files
from .hub_datasets import (
    VALIDATION_SPLITS,
    find_id2label_file,
    load_dataset_dict,
    pick_column,
    read_id2label_json,
    renamed_classes,
    require_split,
)
from .labels import (
    CITYSCAPES_TRAIN_CLASSES,
    IGNORE_INDEX,
    CITYSCAPES_STORED_VALUES,
    LABEL_ID_TO_TRAIN_ID,
    ClassNames,
    reduce_labels_lookup,
)

__all__ = [
    "SegmentationData",
    "is_cityscapes_layout",
    "load_cityscapes",
    "load_segmentation_data",
]

_SPLITS = {"train": "train", "val": "validation"}  # folder name on disk -> split name exposed
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"

_IMAGE_COLUMNS = ("image", "pixel_values", "img")
_LABEL_COLUMNS = ("label", "annotation", "semantic_map", "segmentation", "seg_map", "mask", "labels")


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


def _pair_features() -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "label": datasets.Image()})


def is_cityscapes_layout(path: str | Path) -> bool:
    """True when `path` is a folder with `leftImg8bit/` and `gtFine/` subfolders (the official layout)."""
    path = Path(path)
    return (path / "leftImg8bit").is_dir() and (path / "gtFine").is_dir()


def load_cityscapes(root: str | Path) -> SegmentationData:
    """Index a Cityscapes folder in the official layout.

    root/leftImg8bit/{train,val}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/gtFine/{train,val}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

    "val" is exposed as "validation"; "test" is skipped (its public labels are all void). A split folder that is
    absent is left out; one that exists but holds no image is an error, as is an image without its label file.
    Every image and label file is checked cheaply (`checks.check_image_files`: an image format, not cut short; ~0.4 s
    for the full dataset) and every label map must have its image's size; a problem is a ValueError naming the
    files.
    Labels are kept as stored (labelIds); `label_lookup` is `LABEL_ID_TO_TRAIN_ID` and `id2label` the 19 trainId
    classes, unless an optional `root/id2label.json` restricts the classes to trainIds 0..K-1 (then the lookup
    sends the other trainIds to ignore).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Cityscapes folder not found: {root}")
    image_root = root / "leftImg8bit"
    if not image_root.is_dir():
        raise FileNotFoundError(
            f"{root} does not look like a Cityscapes folder: missing {image_root} "
            f"(expected leftImg8bit/{{train,val}}/{{city}}/*{_IMAGE_SUFFIX})"
        )

    splits: dict[str, datasets.Dataset] = {}
    for folder, split in _SPLITS.items():
        split_dir = image_root / folder
        if not split_dir.is_dir():
            continue
        pattern = f"*/*{_IMAGE_SUFFIX}"
        images = sorted(split_dir.glob(pattern))
        if not images:
            raise FileNotFoundError(
                f"no Cityscapes images found for the {split} split: searched {split_dir / pattern}. Put the "
                f"{folder} images there in the official layout ({{city}}/{{city}}_{{seq}}_{{frame}}{_IMAGE_SUFFIX}), "
                "or remove the empty folder."
            )
        labels = []
        for image in images:
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            label = root / "gtFine" / folder / image.parent.name / f"{stem}{_LABEL_SUFFIX}"
            if not label.is_file():
                raise FileNotFoundError(
                    f"no label file for image {image}: expected {label}. Add the label map, or remove the image."
                )
            labels.append(str(label))
        splits[split] = {"image": [str(p) for p in images], "label": labels}
    if not splits:
        raise FileNotFoundError(
            f"no Cityscapes images found: searched {image_root}/{{train,val}}/*/*{_IMAGE_SUFFIX} "
            "(neither split folder exists)"
        )
    _check_pairs(root, splits)
    splits = {name: datasets.Dataset.from_dict(rows, features=_pair_features()) for name, rows in splits.items()}

    id2label = dict(enumerate(CITYSCAPES_TRAIN_CLASSES))
    label_lookup = LABEL_ID_TO_TRAIN_ID
    class_file = root / "id2label.json"
    if class_file.is_file():
        # Optional, not part of the official layout: a subset of the trainIds (the synthetic generator writes one)
        # so that models get a head of the right size. trainIds beyond the subset become ignore pixels.
        id2label = read_id2label_json(class_file)
        num = len(id2label)
        if sorted(id2label) != list(range(num)) or num > len(CITYSCAPES_TRAIN_CLASSES):
            raise ValueError(f"{class_file}: keys must be the trainIds 0..K-1 with K <= 19, got {sorted(id2label)}")
        if num < len(CITYSCAPES_TRAIN_CLASSES):
            label_lookup = LABEL_ID_TO_TRAIN_ID.copy()
            label_lookup[label_lookup >= num] = IGNORE_INDEX
            label_lookup.flags.writeable = False
    return SegmentationData(
        dataset=datasets.DatasetDict(splits),
        id2label=id2label,
        label_lookup=label_lookup,
        ignore_index=IGNORE_INDEX,
        stored_values=CITYSCAPES_STORED_VALUES,
    )


def _check_pairs(root: Path, splits: dict[str, dict[str, list[str]]]) -> None:
    """Every image and label file of the folder is a complete image, and each label map has its image's size."""
    images = [path for rows in splits.values() for path in rows["image"]]
    labels = [path for rows in splits.values() for path in rows["label"]]
    sizes = check_image_files(
        images + labels,
        what=f"image and label files of the Cityscapes folder {root}",
        fix="Replace them with intact copies (re-extract the archive), or remove each broken file together with its "
        f"partner ({_IMAGE_SUFFIX} image / {_LABEL_SUFFIX} map).",
    )
    # Sizes come from the PNG headers (None for other formats, left to the transforms' check when read).
    mismatched = [
        f"{image} is {image_size[0]}x{image_size[1]} but {label} is {label_size[0]}x{label_size[1]}"
        for image, label, image_size, label_size in zip(images, labels, sizes[: len(images)], sizes[len(images) :])
        if image_size and label_size and image_size != label_size
    ]
    if mismatched:
        shown = "; ".join(mismatched[:10]) + (f"; and {len(mismatched) - 10} more" if len(mismatched) > 10 else "")
        raise ValueError(
            f"{len(mismatched)} label map(s) of the Cityscapes folder {root} differ in size (WxH) from their image: "
            f"{shown}. Replace the wrong files, or remove those pairs."
        )


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
    half = [name for name in ("leftImg8bit", "gtFine") if os.path.isdir(os.path.join(name_or_path, name))]
    if len(half) == 1:
        missing = "gtFine" if half == ["leftImg8bit"] else "leftImg8bit"
        raise FileNotFoundError(
            f"{name_or_path} has {half[0]}/ but no {missing}/: a Cityscapes folder needs both (images in leftImg8bit/, "
            f"*_gtFine_labelIds.png maps in gtFine/)"
        )
    if is_cityscapes_layout(name_or_path):
        data = load_cityscapes(name_or_path)
        if id2label is not None:
            data.id2label = renamed_classes(id2label, data.id2label, "a Cityscapes folder")
        return data

    if reduce_labels and label_lookup is not None:
        raise ValueError("give either label_lookup or reduce_labels=True, not both")
    loaded = load_dataset_dict(name_or_path, **load_dataset_kwargs)

    available = list(loaded.keys())
    require_split(loaded, train_split, name_or_path)
    if validation_fraction is not None:
        if validation_split is not None:
            raise ValueError("give either validation_split or validation_fraction, not both")
        held_out = loaded[train_split].train_test_split(test_size=validation_fraction, seed=split_seed)
        loaded = datasets.DatasetDict({train_split: held_out["train"], "validation": held_out["test"]})
        validation_split = "validation"
    elif validation_split is None:
        validation_split = next((s for s in VALIDATION_SPLITS if s in loaded), None)
        if validation_split is None:
            raise ValueError(
                f"no validation split in {name_or_path} (looked for {list(VALIDATION_SPLITS)}); available "
                f"splits: {available}; name one with --validation_split (validation_split=... in Python) or hold out part of "
                f"the training split with --validation_fraction 0.1"
            )
    else:
        require_split(loaded, validation_split, name_or_path)

    columns = loaded[train_split].column_names
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

    if id2label is None:
        id2label = find_id2label_file(
            name_or_path, load_dataset_kwargs.get("revision"), load_dataset_kwargs.get("token")
        )
    if id2label is None:
        raise ValueError(
            f"no class names found for {name_or_path} (no id2label.json next to the data); "
            "pass --id2label classes.json (a json file {\"0\": \"name\", ...}; id2label={0: 'name', ...} in Python)"
        )
    id2label = {int(k): str(v) for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))}
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"id2label keys must be the class ids 0..K-1, got {sorted(id2label)}")
    if reduce_labels:
        label_lookup = reduce_labels_lookup(ignore_index)

    splits = {}
    for source, target in ((train_split, "train"), (validation_split, "validation")):
        if len(loaded[source]) == 0:
            raise ValueError(
                f"the {source!r} split of {name_or_path} has no examples. Add examples to it, or name another split "
                f"(--train_split / --validation_split, or --validation_fraction to hold out part of the training split)."
            )
        ds = loaded[source].select_columns([image_col, label_col])
        if image_col != "image":
            ds = ds.rename_column(image_col, "image")
        if label_col != "label":
            ds = ds.rename_column(label_col, "label")
        # Paths or bytes stored as plain columns become decodable images; an existing Image feature is kept.
        for col in ("image", "label"):
            if not isinstance(ds.features[col], datasets.Image):
                ds = ds.cast_column(col, datasets.Image())
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
