"""Object-detection datasets: COCO from its on-disk layout, or any `datasets` dataset in the standard layout.

Everything ends up as a `DetectionData`: a `DatasetDict` with splits "train" and "validation", each holding

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

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .checks import check_image_files, describe_source
from .cityscapes import load_dataset_dict, renamed_classes

logger = logging.getLogger(__name__)

__all__ = [
    "DetectionData",
    "detection_features",
    "is_coco_layout",
    "load_coco",
    "load_detection_data",
    "write_coco_ground_truth",
]

_VALIDATION_SPLITS = ("validation", "val", "valid", "test")
_COCO_TRAIN_SPLITS = ("train2017", "train2014", "train")
_COCO_VALIDATION_SPLITS = ("val2017", "val2014", "val", "validation")
_BBOX_KEYS = ("bbox", "bboxes", "boxes")
_CATEGORY_KEYS = ("category", "categories", "category_id", "label", "labels")
DEFAULT_GROUND_TRUTH_DIR = os.path.join(os.path.expanduser("~"), ".cache", "acamkd_hf", "coco_ground_truth")


@dataclass
class DetectionData:
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

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}


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


class _BoxCounts:
    """Boxes of one split: broken ones are errors; clipped / dropped ones are counted and reported in one log line.

    What COCO tooling does decides what is fixed silently: boxes reaching outside the image are clipped to it and
    boxes left with no area dropped (DETR's ConvertCocoPolysToMask, detectron2's filter_empty_instances; the
    transformers processors clip as well); COCO's own json has boxes a fraction of a pixel beyond the image and a few
    of zero width or height. A box that no tool can read (not 4 finite numbers, or a negative width or height) is
    an error naming the annotation: it means a broken file or converter, which dropping would hide.
    """

    _EXAMPLES = 5

    def __init__(self, source: str, *, hint: str = ""):
        self.source = source
        self.hint = hint
        self.clipped: list[str] = []
        self.dropped: list[str] = []

    def clip(self, bbox: Any, width: float, height: float, name: str = "") -> list[float] | None:
        """[x, y, w, h] clipped to the image; None (and counted) when no positive width and height remain inside it.
        `name` says which box it is in errors and in the log ("annotation 7 (image 3)")."""
        try:
            x, y, w, h = (float(v) for v in bbox)
            problem = None if all(math.isfinite(v) for v in (x, y, w, h)) else "not all values are finite"
        except (TypeError, ValueError):
            problem = "it is not 4 numbers"
        if problem is None and (w < 0 or h < 0):
            problem = "its width or height is negative"
        if problem is not None:
            raise ValueError(
                f"{self.source}: {name or 'a box'} has the broken box {bbox!r}: {problem}. Boxes are [x, y, width, "
                f"height] in pixels with finite values and width, height >= 0{self.hint}: fix or remove that "
                "annotation."
            )
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        if x1 <= x0 or y1 <= y0:
            self.dropped.append(name)
            return None
        clipped = [x0, y0, x1 - x0, y1 - y0]
        if clipped != [x, y, w, h]:
            self.clipped.append(name)
        return clipped

    def _examples(self, names: list[str]) -> str:
        names = [n for n in names if n][: self._EXAMPLES]
        return f" (e.g. {', '.join(names)})" if names else ""

    def log(self) -> None:
        if self.clipped or self.dropped:
            logger.warning(
                f"{self.source}: {len(self.clipped)} box(es) clipped to the image{self._examples(self.clipped)}, "
                f"{len(self.dropped)} dropped (non-positive width or height after clipping)"
                f"{self._examples(self.dropped)}"
            )


def is_coco_layout(path: str | os.PathLike) -> bool:
    """True when `path` is a folder with `annotations/instances_*.json` (the COCO layout)."""
    annotations = Path(path) / "annotations"
    return annotations.is_dir() and any(annotations.glob("instances_*.json"))


def _read_coco(json_path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
        return COCO(str(json_path))


def _image_folder(root: Path, split: str) -> Path:
    candidates = (root / split, root / "images" / split)
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"no image folder for split {split!r}: searched {candidates[0]} and {candidates[1]}"
    )


def _load_coco_split(root: Path, split: str) -> tuple[dict[str, list], list[dict], Path]:
    """Rows of one split (image paths, not yet a Dataset), its categories, and its annotation file."""
    json_path = root / "annotations" / f"instances_{split}.json"
    if not json_path.is_file():
        raise FileNotFoundError(f"COCO annotations not found: {json_path}")
    image_folder = _image_folder(root, split)
    coco = _read_coco(json_path)
    images = coco.dataset.get("images", [])
    annotations = coco.dataset.get("annotations", [])
    categories = coco.dataset.get("categories", [])
    if not images:
        raise ValueError(
            f"{json_path} lists no images, so the {split!r} split is empty. Use the json of a split that has images "
            "(--train_split / --validation_split name the instances_{split}.json used), or add its images to it."
        )

    by_id: dict[int, dict] = {}
    missing: list[str] = []
    for image in images:
        image_id = int(image["id"])
        if image_id in by_id:
            raise ValueError(f"{json_path}: image id {image_id} is listed twice. Give every image its own id.")
        width, height = image.get("width"), image.get("height")
        if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
            raise ValueError(
                f"{json_path}: image {image_id} ({image.get('file_name')}) has no valid size (width {width!r}, "
                f"height {height!r}). Write the image's width and height in pixels into its entry of the json."
            )
        path = image_folder / image["file_name"]
        if not path.is_file():
            missing.append(f"image {image_id} ({image['file_name']}): file not found: {path}")
        by_id[image_id] = image
    if missing:
        shown = "; ".join(missing[:10]) + (f"; and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(
            f"{json_path}: {len(missing)} of its {len(images)} images are not on disk: {shown}. Put the files in "
            f"{image_folder}, or remove those images (and their annotations) from the json."
        )
    check_image_files(
        [image_folder / by_id[i]["file_name"] for i in sorted(by_id)],
        what=f"images of {json_path}",
        fix="Replace them with intact copies, or remove those images (and their annotations) from the json.",
    )
    category_ids = {int(c["id"]) for c in categories}

    counts = _BoxCounts(str(json_path))
    objects: dict[int, list[dict]] = {image_id: [] for image_id in by_id}
    for ann in annotations:
        image_id = int(ann["image_id"])
        if image_id not in by_id:
            raise ValueError(
                f"{json_path}: annotation {ann.get('id')} names image {image_id}, which is not in the json's images. "
                "Add the image to the json's images, or remove the annotation."
            )
        category_id = ann.get("category_id")
        if category_id is None or int(category_id) not in category_ids:
            raise ValueError(
                f"{json_path}: annotation {ann.get('id')} (image {image_id}) has category {category_id}, not among "
                f"the categories {sorted(category_ids)}. Add that category to the json's categories, or fix or remove "
                "the annotation."
            )
        image = by_id[image_id]
        bbox = counts.clip(ann.get("bbox"), image["width"], image["height"], f"annotation {ann.get('id')} (image {image_id})")
        if bbox is None:
            continue
        objects[image_id].append(
            {
                "id": int(ann["id"]),
                "area": float(ann["area"]) if "area" in ann else bbox[2] * bbox[3],
                "bbox": bbox,
                "category_id": int(category_id),
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
    counts.log()

    rows: dict[str, list] = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    for image_id in sorted(by_id):
        image = by_id[image_id]
        anns = objects[image_id]
        rows["image"].append(str(image_folder / image["file_name"]))
        rows["image_id"].append(image_id)
        rows["width"].append(int(image["width"]))
        rows["height"].append(int(image["height"]))
        rows["objects"].append(
            {
                "id": [a["id"] for a in anns],
                "area": [a["area"] for a in anns],
                "bbox": [a["bbox"] for a in anns],
                "category": [a["category_id"] for a in anns],  # original ids, mapped to labels by the caller
                "iscrowd": [a["iscrowd"] for a in anns],
            }
        )
    return rows, categories, json_path


def load_coco(
    root: str | os.PathLike, *, train_split: str | None = "train2017", validation_split: str | None = "val2017"
) -> DetectionData:
    """Index a COCO folder in the official layout.

    root/annotations/instances_{split}.json   (read with pycocotools)
    root/{split}/{file_name} or root/images/{split}/{file_name}

    The two splits are exposed as "train" and "validation"; passing None for one leaves it out (e.g. evaluation
    only). Categories are sorted by id and numbered 0..K-1 (`label_to_category_id` maps back); both splits must
    list the same category ids. Images without objects are kept (they count in COCOeval). Boxes reaching outside
    the image are clipped to it, boxes with no positive width or height after clipping are dropped, with one
    warning per split counting both. Crowd annotations (`iscrowd=1`) are kept in `objects`; `DetectionTransforms`
    leaves them out of the training targets.

    The ground truth of each split is its original json, so mAP is comparable with published COCO numbers (the
    clipping above changes the training targets only).

    Errors: a missing folder or json (FileNotFoundError naming the path searched); a json without images; an
    annotation naming an image that is not in the json, or a category that is not in its categories; an image whose
    file is not on disk or is not a complete image (`checks.check_image_files`: header and end of every file, ~0.07
    ms each); a box that is not 4 finite numbers or has a negative width or height (ValueError naming the json, the
    image and annotation ids or files, and what to do).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"COCO folder not found: {root}")
    splits: dict[str, dict[str, list]] = {}
    ground_truth: dict[str, str | None] = {}
    categories: list[dict] | None = None
    category_source = None
    for split, target in ((train_split, "train"), (validation_split, "validation")):
        if split is None:
            continue
        rows, split_categories, json_path = _load_coco_split(root, split)
        if categories is None:
            categories, category_source = split_categories, json_path
        elif sorted(int(c["id"]) for c in split_categories) != sorted(int(c["id"]) for c in categories):
            raise ValueError(
                f"{json_path} and {category_source} list different category ids: "
                f"{sorted(int(c['id']) for c in split_categories)} vs {sorted(int(c['id']) for c in categories)}"
            )
        splits[target] = rows
        ground_truth[target] = str(json_path)
    if not splits:
        raise ValueError("load_coco needs at least one of train_split / validation_split")
    if not categories:
        raise ValueError(f"{category_source}: no categories")

    categories = sorted(categories, key=lambda c: int(c["id"]))
    label_to_category_id = {label: int(c["id"]) for label, c in enumerate(categories)}
    category_to_label = {category_id: label for label, category_id in label_to_category_id.items()}
    id2label = {label: str(c["name"]) for label, c in enumerate(categories)}
    features = detection_features(id2label[label] for label in sorted(id2label))

    dataset = {}
    for target, rows in splits.items():
        for objects in rows["objects"]:
            objects["category"] = [category_to_label[c] for c in objects["category"]]
        dataset[target] = datasets.Dataset.from_dict(rows, features=features)
    return DetectionData(
        dataset=datasets.DatasetDict(dataset),
        id2label=id2label,
        label_to_category_id=label_to_category_id,
        ground_truth=ground_truth,
    )


# --------------------------------------------------------------------------------------------------------------
# Hub / local `datasets` datasets


def write_coco_ground_truth(
    dataset: datasets.Dataset,
    path: str | os.PathLike,
    id2label: Mapping[int, str],
    label_to_category_id: Mapping[int, int] | None = None,
) -> str:
    """Write the COCO-format annotations json of a `DetectionData` split (columns as in `detection_features`).

    Categories are written with their original ids (`label_to_category_id`, identity by default); annotation ids
    are the dataset's `objects.id` when those are positive and unique in the split, else 1..N. Written atomically
    (a temporary file renamed into place), so concurrent processes writing the same file do not interfere.
    Returns the path as a string.
    """
    label_to_category_id = {int(k): int(v) for k, v in (label_to_category_id or {k: k for k in id2label}).items()}
    meta = dataset.select_columns(["image_id", "width", "height", "objects"])
    images, annotations = [], []
    for batch in meta.iter(batch_size=1000):
        for image_id, width, height, objects in zip(
            batch["image_id"], batch["width"], batch["height"], batch["objects"], strict=True
        ):
            images.append({"id": int(image_id), "width": int(width), "height": int(height), "file_name": str(image_id)})
            for ann_id, area, bbox, category, iscrowd in zip(
                objects["id"], objects["area"], objects["bbox"], objects["category"], objects["iscrowd"], strict=True
            ):
                annotations.append(
                    {
                        "id": int(ann_id),
                        "image_id": int(image_id),
                        "category_id": label_to_category_id[int(category)],
                        "bbox": [float(v) for v in bbox],
                        "area": float(area),
                        "iscrowd": int(iscrowd),
                    }
                )
    ids = [a["id"] for a in annotations]
    if any(i <= 0 for i in ids) or len(set(ids)) != len(ids):
        for number, ann in enumerate(annotations, start=1):
            ann["id"] = number
    document = {
        "info": {"description": "written by acamkd_hf.data.coco.write_coco_ground_truth"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": label_to_category_id[k], "name": str(id2label[k])} for k in sorted(id2label)],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(document, handle)
    os.replace(handle.name, path)
    return str(path)


def _image_sizes(dataset: datasets.Dataset, image_column: str) -> tuple[list[int], list[int]]:
    """(widths, heights) read from the image headers only (no pixel decoding)."""
    from PIL import Image as PILImage

    raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    widths, heights = [], []
    for batch in raw.iter(batch_size=256):
        for item in batch[image_column]:
            source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
            try:
                with PILImage.open(source) as image:
                    width, height = image.size
            except Exception as error:  # whatever PIL raises: re-raised naming the file
                raise ValueError(
                    f"the image {describe_source(item)} cannot be read ({type(error).__name__}: {error}). Replace it "
                    "with an intact copy, or remove the example from the dataset."
                ) from error
            widths.append(int(width))
            heights.append(int(height))
    return widths, heights


def _pick(names: Iterable[str], candidates: tuple[str, ...], what: str) -> str:
    names = list(names)
    for name in candidates:
        if name in names:
            return name
    raise ValueError(f"could not find the {what} among {names} (looked for {list(candidates)})")


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
    image_column = _pick(columns, ("image", "img"), "image column")
    if "objects" not in columns:
        raise ValueError(f"{source}: no 'objects' column (columns: {columns}); expected the standard layout "
                         "image, image_id, objects {bbox, category, area, id}")  # fmt: skip
    object_fields = list(ds.features["objects"].keys()) if isinstance(ds.features["objects"], dict) else []
    bbox_key = _pick(object_fields, _BBOX_KEYS, "box field of 'objects'")
    category_key = _pick(object_fields, _CATEGORY_KEYS, "category field of 'objects'")

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

    hint = (
        " (read as [x1, y1, x2, y2] with bbox_format='xyxy', so x2 >= x1 and y2 >= y1)"
        if bbox_format == "xyxy"
        else " (a dataset with [x1, y1, x2, y2] boxes needs bbox_format='xyxy')"
    )
    counts = _BoxCounts(source, hint=hint)

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
        annotations = Path(name_or_path) / "annotations"

        def first_existing(candidates: tuple[str, ...]) -> str | None:
            return next((s for s in candidates if (annotations / f"instances_{s}.json").is_file()), None)

        train = train_split or first_existing(_COCO_TRAIN_SPLITS)
        validation = validation_split or first_existing(_COCO_VALIDATION_SPLITS)
        for found, candidates, kind in ((train, _COCO_TRAIN_SPLITS, "train"), (validation, _COCO_VALIDATION_SPLITS, "validation")):
            if found is None:
                present = sorted(p.name for p in annotations.glob("instances_*.json"))
                raise FileNotFoundError(
                    f"no {kind} split in the COCO folder {name_or_path}: searched {annotations}/instances_"
                    f"{{{','.join(candidates)}}}.json (present: {', '.join(present)}). Add that json with its image "
                    f"folder, or name an existing split with --{kind}_split ({kind}_split=... in Python)."
                )
        data = load_coco(name_or_path, train_split=train, validation_split=validation)
        if id2label is not None:
            data.id2label = renamed_classes(id2label, data.id2label, "a COCO folder")
            features = detection_features(data.id2label[k] for k in sorted(data.id2label))
            data.dataset = datasets.DatasetDict({k: v.cast(features) for k, v in data.dataset.items()})
        return data

    loaded = load_dataset_dict(name_or_path, **load_dataset_kwargs)
    available = list(loaded.keys())
    train_split = train_split or "train"
    if train_split not in loaded:
        raise ValueError(f"no {train_split!r} split in {name_or_path}; available splits: {available}")
    if validation_split is None:
        validation_split = next((s for s in _VALIDATION_SPLITS if s in loaded and s != train_split), None)
        if validation_split is None:
            raise ValueError(
                f"no validation split in {name_or_path} (looked for {list(_VALIDATION_SPLITS)}); available splits: "
                f"{available}; name one with --validation_split (validation_split=... in Python)"
            )
        if validation_split == "test":
            logger.info(f"{name_or_path}: no validation split, evaluating on 'test'")
    elif validation_split not in loaded:
        raise ValueError(f"no {validation_split!r} split in {name_or_path}; available splits: {available}")

    first = loaded[train_split]
    if "objects" not in first.column_names or not isinstance(first.features["objects"], dict):
        raise ValueError(
            f"{name_or_path}: expected an 'objects' column holding {{bbox, category, ...}} lists; columns: "
            f"{first.column_names}"
        )
    category_key = _pick(first.features["objects"].keys(), _CATEGORY_KEYS, "category field of 'objects'")
    category_feature = first.features["objects"][category_key]
    category_feature = getattr(category_feature, "feature", category_feature)  # List(ClassLabel) -> ClassLabel
    if isinstance(category_feature, datasets.ClassLabel):
        names = list(category_feature.names)
        class_names = names
        if id2label is not None:
            renamed = {int(k): str(v) for k, v in id2label.items()}
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
        by_id = {int(k): str(v) for k, v in id2label.items()}
        ordered = sorted(by_id)
        class_names = [by_id[c] for c in ordered]
        label_to_category_id = dict(enumerate(ordered))
        category_to_label = {c: label for label, c in label_to_category_id.items()}

    ground_truth_dir = Path(ground_truth_dir or DEFAULT_GROUND_TRUTH_DIR)
    splits, ground_truth = {}, {}
    id2label_out = dict(enumerate(class_names))
    for source, target in ((train_split, "train"), (validation_split, "validation")):
        if len(loaded[source]) == 0:
            raise ValueError(
                f"the {source!r} split of {name_or_path} has no examples. Add examples to it, or name another split "
                "with --train_split / --validation_split."
            )
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
            [loaded[source]._fingerprint, bbox_format, class_names, sorted(label_to_category_id.items())]
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
