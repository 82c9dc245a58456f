"""Object-detection datasets from the Hub or a local `datasets` folder, standardised to the `DetectionData` layout
(see `detection`), and `load_detection_data`, the loader for any source (COCO folder, local dataset folder or Hub id).

Only the metadata columns are rewritten; the images stay as stored. The ground truth of each split is written as a
COCO-format json (`coco.write_coco_ground_truth`) for COCOeval.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import PIL.Image

from .checks import describe_source
from .coco import BoxCounts, is_coco_layout, load_coco_folder, write_coco_ground_truth
from .detection import DetectionData, detection_features
from .hub_datasets import (
    VALIDATION_SPLITS,
    find_validation_split,
    load_dataset_dict,
    pick_column,
    require_examples,
    require_split,
)
from .labels import normalize_id2label

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_GROUND_TRUTH_DIR", "load_detection_data"]

# A detection set without a validation split is evaluated on its test split (cppe-5 has only train and test).
_VALIDATION_OR_TEST_SPLITS = (*VALIDATION_SPLITS, "test")
_BBOX_KEYS = ("bbox", "bboxes", "boxes")
_CATEGORY_KEYS = ("category", "categories", "category_id", "label", "labels")
DEFAULT_GROUND_TRUTH_DIR = os.path.join(os.path.expanduser("~"), ".cache", "acamkd_hf", "coco_ground_truth")


def _image_sizes(dataset: datasets.Dataset, image_column: str) -> tuple[list[int], list[int]]:
    """(widths, heights) read from the image headers only (no pixel decoding)."""
    raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    widths, heights = [], []
    for batch in raw.iter(batch_size=256):
        for item in batch[image_column]:
            source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
            try:
                with PIL.Image.open(source) as image:
                    width, height = image.size
            except Exception as error:  # whatever PIL raises: re-raised naming the file
                raise ValueError(
                    f"the image {describe_source(item)} cannot be read ({type(error).__name__}: {error}). Replace it "
                    "with an intact copy, or remove the example from the dataset."
                ) from error
            widths.append(int(width))
            heights.append(int(height))
    return widths, heights


def _metadata(ds: datasets.Dataset, image_column: str, source: str) -> datasets.Dataset:
    """The columns `image_id` (the row index if absent or not unique), `width`, `height` (read from the image
    headers if absent) and `objects` of ``ds``."""
    columns = ds.column_names
    if "width" in columns and "height" in columns:
        meta = ds.select_columns([c for c in ("image_id", "width", "height", "objects") if c in columns])
    else:
        widths, heights = _image_sizes(ds, image_column)
        meta = ds.select_columns([c for c in ("image_id", "objects") if c in columns])
        meta = meta.add_column("width", widths).add_column("height", heights)
    if "image_id" in columns:
        ids = meta["image_id"]
        if len(set(ids)) != len(ids):
            logger.warning(f"{source}: image_id is not unique; using the row index as image_id")
            meta = meta.remove_columns("image_id").add_column("image_id", list(range(len(meta))))
    else:
        meta = meta.add_column("image_id", list(range(len(meta))))
    return meta


def _standardize_split(
    ds: datasets.Dataset,
    source: str,
    *,
    category_to_label: Mapping[int, int] | None,
    class_names: list[str],
    bbox_format: str,
) -> datasets.Dataset:
    """One split of a `datasets` dataset -> the `detection_features` layout, without rewriting the images."""
    columns = ds.column_names
    image_column = pick_column(columns, ("image", "img"), "image column")
    if "objects" not in columns:
        raise ValueError(f"{source}: no 'objects' column (columns: {columns}); expected the standard layout "
                         "image, image_id, objects {bbox, category, area, id}")  # fmt: skip
    object_fields = list(ds.features["objects"].keys()) if isinstance(ds.features["objects"], dict) else []
    bbox_key = pick_column(object_fields, _BBOX_KEYS, "box field of 'objects'")
    category_key = pick_column(object_fields, _CATEGORY_KEYS, "category field of 'objects'")

    meta = _metadata(ds, image_column, source)

    hint = (
        " (read as [x1, y1, x2, y2] with bbox_format='xyxy', so x2 >= x1 and y2 >= y1)"
        if bbox_format == "xyxy"
        else " (a dataset with [x1, y1, x2, y2] boxes needs bbox_format='xyxy')"
    )
    counts = BoxCounts(source, hint=hint)

    def standardize(batch: dict[str, list]) -> dict[str, list]:
        out = []
        for objects, width, height, image_id in zip(
            batch["objects"], batch["width"], batch["height"], batch["image_id"], strict=True
        ):
            boxes, categories = objects[bbox_key], objects[category_key]
            n = len(boxes)
            ids = objects.get("id") or objects.get("bbox_id") or list(range(n))
            areas = objects.get("area")
            crowds = objects.get("iscrowd") or [0] * n
            std = {"id": [], "area": [], "bbox": [], "category": [], "iscrowd": []}
            for i in range(n):
                box = boxes[i]
                if bbox_format == "xyxy" and box is not None and len(box) == 4 and None not in box:
                    box = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
                clipped = counts.clip(box, width, height, f"object {i} (id {ids[i]}) of image_id {image_id}")
                if clipped is None:
                    continue
                category = int(categories[i])
                if category_to_label is not None:
                    if category not in category_to_label:
                        known = sorted(category_to_label)
                        raise ValueError(
                            f"{source}: object {i} of image_id {image_id} has category {category}, not in id2label "
                            f"{known}. Add that category to id2label (--id2label), or fix or remove the object."
                        )
                    category = category_to_label[category]
                std["id"].append(int(ids[i]))
                std["area"].append(float(areas[i]) if areas else clipped[2] * clipped[3])
                std["bbox"].append(clipped)
                std["category"].append(category)
                std["iscrowd"].append(int(crowds[i]))
            out.append(std)
        return {"objects": out}

    features = detection_features(class_names)
    meta_features = datasets.Features({k: features[k] for k in ("image_id", "width", "height", "objects")})
    # Only the small metadata table is rewritten (in memory, every time, so that the counts are always logged);
    # the image column is joined back as it is.
    meta = meta.select_columns(["image_id", "width", "height", "objects"]).map(
        standardize, batched=True, features=meta_features, keep_in_memory=True, load_from_cache_file=False
    )
    counts.log()
    images = ds.select_columns([image_column])
    if image_column != "image":
        images = images.rename_column(image_column, "image")
    if not isinstance(images.features["image"], datasets.Image):
        images = images.cast_column("image", datasets.Image())
    return datasets.concatenate_datasets([images, meta], axis=1)


def _categories(
    first: datasets.Dataset, name_or_path: str, id2label: Mapping[int, str] | None
) -> tuple[list[str], dict[int, int] | None, dict[int, int]]:
    """(class names by label, category -> label map or None when the categories are already labels 0..K-1,
    label -> category id of the ground truth), from the `objects` categories of ``first`` (the training split) and
    ``id2label``."""
    if "objects" not in first.column_names or not isinstance(first.features["objects"], dict):
        raise ValueError(
            f"{name_or_path}: expected an 'objects' column holding {{bbox, category, ...}} lists; columns: "
            f"{first.column_names}"
        )
    category_key = pick_column(first.features["objects"].keys(), _CATEGORY_KEYS, "category field of 'objects'")
    category_feature = first.features["objects"][category_key]
    category_feature = getattr(category_feature, "feature", category_feature)  # List(ClassLabel) -> ClassLabel
    if isinstance(category_feature, datasets.ClassLabel):
        names = list(category_feature.names)
        class_names = names
        if id2label is not None:
            renamed = normalize_id2label(id2label)
            if sorted(renamed) != list(range(len(names))):
                raise ValueError(f"id2label must rename the {len(names)} ClassLabel classes 0..{len(names) - 1}, "
                                 f"got keys {sorted(renamed)}")  # fmt: skip
            class_names = [renamed[k] for k in range(len(names))]
        category_to_label = None
        label_to_category_id = {k: k for k in range(len(class_names))}
    else:
        if id2label is None:
            raise ValueError(
                f"{name_or_path}: the categories are plain integers (no ClassLabel); pass --id2label classes.json "
                "(a json file {\"category id\": \"name\", ...}; id2label={category id: name} in Python)"
            )
        by_id = normalize_id2label(id2label)
        ordered = sorted(by_id)
        class_names = [by_id[c] for c in ordered]
        label_to_category_id = dict(enumerate(ordered))
        category_to_label = {c: label for label, c in label_to_category_id.items()}
    return class_names, category_to_label, label_to_category_id


def load_detection_data(
    name_or_path: str | os.PathLike,
    *,
    train_split: str | None = None,
    validation_split: str | None = None,
    id2label: Mapping[int, str] | None = None,
    bbox_format: str = "xywh",
    ground_truth_dir: str | os.PathLike | None = None,
    **load_dataset_kwargs: Any,
) -> DetectionData:
    """Load a detection dataset by COCO folder, local dataset folder or Hub id.

    - A folder in the COCO layout (`annotations/instances_*.json`) goes through `load_coco`; the splits default to
      the first of train2017/train2014/train and val2017/val2014/val/validation that has a json (a FileNotFoundError
      naming the jsons searched when there is none). `id2label` may rename the classes (same labels 0..K-1).
    - Anything else goes through `datasets.load_dataset(name_or_path, **load_dataset_kwargs)`, expecting the layout
      of cppe-5 and the transformers object-detection example: `image`, `image_id` (row index if absent or not
      unique), optional `width`/`height` (read from the image headers if absent), and `objects` with `bbox`
      (absolute pixels; [x, y, w, h] unless `bbox_format="xyxy"`), `category`, and optional `area` (box area if
      absent), `id`, `iscrowd`. Splits: `train_split` (default "train") and `validation_split` (default the first of
      validation/val/valid/test). Categories: a ClassLabel gives the names and contiguous labels, and
      `label_to_category_id` is the identity (`id2label` may rename); plain integer categories need `id2label`
      ({category id: name}), whose sorted ids become labels 0..K-1 (the ids are kept for evaluation). Boxes are
      clipped / dropped as in `load_coco`. Only the metadata columns are rewritten; images stay as stored.
      The ground truth of each split is written to `ground_truth_dir` (default ~/.cache/acamkd_hf/coco_ground_truth)
      as `{split}-{hash of the source split and options}.json`.
    """
    if bbox_format not in ("xywh", "xyxy"):
        raise ValueError(f"bbox_format must be 'xywh' or 'xyxy', got {bbox_format!r}")
    name_or_path = os.fspath(name_or_path)
    if is_coco_layout(name_or_path):
        return load_coco_folder(
            name_or_path, train_split=train_split, validation_split=validation_split, id2label=id2label
        )

    loaded = load_dataset_dict(name_or_path, **load_dataset_kwargs)
    train_split = train_split or "train"
    require_split(loaded, train_split, name_or_path)
    if validation_split is None:
        validation_split = find_validation_split(
            loaded, name_or_path, _VALIDATION_OR_TEST_SPLITS, train_split=train_split
        )
        if validation_split == "test":
            logger.info(f"{name_or_path}: no validation split, evaluating on 'test'")
    else:
        require_split(loaded, validation_split, name_or_path)

    class_names, category_to_label, label_to_category_id = _categories(loaded[train_split], name_or_path, id2label)

    ground_truth_dir = Path(ground_truth_dir or DEFAULT_GROUND_TRUTH_DIR)
    splits, ground_truth = {}, {}
    id2label_out = dict(enumerate(class_names))
    for source, target in ((train_split, "train"), (validation_split, "validation")):
        require_examples(loaded[source], source, name_or_path, "with --train_split / --validation_split")
        ds = _standardize_split(
            loaded[source],
            f"{name_or_path}[{source}]",
            category_to_label=category_to_label,
            class_names=class_names,
            bbox_format=bbox_format,
        )
        splits[target] = ds
        # Keyed by the source split's fingerprint (stable across runs for Hub and local datasets) and every option
        # that changes the written annotations.
        key = json.dumps(
            [loaded[source]._fingerprint, bbox_format, class_names, sorted(label_to_category_id.items())]  # noqa: SLF001
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        ground_truth[target] = write_coco_ground_truth(
            ds, ground_truth_dir / f"{target}-{digest}.json", id2label_out, label_to_category_id
        )
    return DetectionData(
        dataset=datasets.DatasetDict(splits),
        id2label=id2label_out,
        label_to_category_id=label_to_category_id,
        ground_truth=ground_truth,
    )
