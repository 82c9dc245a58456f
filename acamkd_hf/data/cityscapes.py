"""The Cityscapes folder layout: `is_cityscapes_layout`, `load_cityscapes` (a `SegmentationData`, see
`segmentation`, indexing the files as they are: labels stay labelIds, turned into the 19 trainIds by the lookup table
in `SegmentationTransforms`), and the check that a folder is not half of one.

The Cityscapes classes and lookup tables live in `labels`; any other segmentation source goes through
`hub_segmentation.load_segmentation_data`.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from .checks import check_image_files
from .hub_datasets import read_id2label_json
from .labels import (
    CITYSCAPES_STORED_VALUES,
    CITYSCAPES_TRAIN_CLASSES,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
)
from .segmentation import SegmentationData, pair_dataset

__all__ = [
    "check_whole_cityscapes_layout",
    "is_cityscapes_layout",
    "load_cityscapes",
]

_SPLITS = {"train": "train", "val": "validation"}  # folder name on disk -> split name exposed
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


def is_cityscapes_layout(path: str | Path) -> bool:
    """True when `path` is a folder with `leftImg8bit/` and `gtFine/` subfolders (the official layout)."""
    path = Path(path)
    return (path / "leftImg8bit").is_dir() and (path / "gtFine").is_dir()


def check_whole_cityscapes_layout(path: str | os.PathLike) -> None:
    """A FileNotFoundError saying which half is missing when ``path`` holds one of `leftImg8bit/` and `gtFine/` only."""
    half = [name for name in ("leftImg8bit", "gtFine") if os.path.isdir(os.path.join(path, name))]
    if len(half) == 1:
        missing = "gtFine" if half == ["leftImg8bit"] else "leftImg8bit"
        raise FileNotFoundError(
            f"{path} has {half[0]}/ but no {missing}/: a Cityscapes folder needs both (images in leftImg8bit/, "
            f"*_gtFine_labelIds.png maps in gtFine/)"
        )


def load_cityscapes(root: str | Path) -> SegmentationData:
    """Index a Cityscapes folder in the official layout.

    root/leftImg8bit/{train,val}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/gtFine/{train,val}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

    "val" is exposed as "validation"; "test" is skipped (its public labels are all void). A split folder that is
    absent is left out; one that exists but holds no image is an error, as is an image without its label file.
    Every image and label file is checked cheaply (`checks.check_image_files`: an image format, not cut short) and
    every label map must have its image's size; a problem is a ValueError naming the files.
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
    splits = {name: pair_dataset(rows) for name, rows in splits.items()}

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
