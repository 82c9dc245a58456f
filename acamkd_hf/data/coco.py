"""The COCO layout: the COCO-folder loader (`annotations/instances_{split}.json` read with pycocotools, images in
`{split}/` or `images/{split}/`), the COCO-format ground-truth writer (the json COCOeval reads, for any detection
dataset), and the box conventions of COCO tooling (`BoxCounts`: clip to the image, drop what is left empty; used by
every detection loader, its log line comes from this module's logger).

Every loader returns a `DetectionData` (see `detection`); Hub / local `datasets` datasets are standardised to the
same layout in `hub_detection`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from .checks import check_image_files
from .detection import DetectionData, detection_features
from .hub_datasets import renamed_classes

logger = logging.getLogger(__name__)

__all__ = [
    "BoxCounts",
    "is_coco_layout",
    "load_coco",
    "load_coco_folder",
    "write_coco_ground_truth",
]

_COCO_TRAIN_SPLITS = ("train2017", "train2014", "train")
_COCO_VALIDATION_SPLITS = ("val2017", "val2014", "val", "validation")


class BoxCounts:
    """Boxes of one split: broken ones are errors; clipped / dropped ones are counted and reported in one log line.

    What COCO tooling does decides what is fixed silently: boxes reaching outside the image are clipped to it and
    boxes left with no area dropped (DETR's ConvertCocoPolysToMask, detectron2's filter_empty_instances; the
    transformers processors clip as well); COCO's own json has boxes a fraction of a pixel beyond the image and a few
    of zero width or height. A box that no tool can read (not 4 finite numbers, or a negative width or height) is
    an error naming the annotation: it means a broken file or converter, which dropping would hide.

    Used by both loaders (`load_coco`, `hub_detection.load_detection_data`); the log line comes from this module's
    logger.
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
        if w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height:
            return [x, y, w, h]  # inside: as it is (recomputing x1 - x0 would change float boxes in the last bit)
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        if x1 <= x0 or y1 <= y0:
            self.dropped.append(name)
            return None
        self.clipped.append(name)
        return [x0, y0, x1 - x0, y1 - y0]

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


def _image_modes(paths: list[Path]) -> dict[str, int]:
    """``{PIL mode: images}`` from the image headers (no pixel decoding, 8 threads); a header that cannot be parsed
    is left out (it is not this count's to refuse)."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    import PIL.Image

    def mode(path: Path) -> str | None:
        try:
            with PIL.Image.open(path) as image:
                return image.mode
        except Exception:  # noqa: BLE001 (a header PIL cannot parse: the decode that reads the image names the file)
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return {mode: count for mode, count in Counter(pool.map(mode, paths)).items() if mode is not None}


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


def _coco_images(json_path: Path, image_folder: Path, images: list[dict]) -> dict[int, dict]:
    """The json's images by id, each with a valid size and a complete image file on disk (else a ValueError naming
    them)."""
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
    return by_id


def _coco_rows(by_id: dict[int, dict], objects: dict[int, list[dict]], image_folder: Path) -> dict[str, list]:
    """The split's rows (image paths, sizes, objects with their original category ids), sorted by image id."""
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
    return rows


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

    by_id = _coco_images(json_path, image_folder, images)
    modes = _image_modes([image_folder / by_id[i]["file_name"] for i in sorted(by_id)])
    category_ids = {int(c["id"]) for c in categories}

    counts = BoxCounts(str(json_path))
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
    boxes = sum(len(anns) for anns in objects.values())
    crowd = sum(a["iscrowd"] for anns in objects.values() for a in anns)
    empty = sum(not anns for anns in objects.values())
    other_modes = ", ".join(f"{count} {mode}" for mode, count in sorted(modes.items()) if mode != "RGB")
    logger.info(
        f"{json_path.name}: {len(by_id)} images ({empty} without annotations: background images), {boxes} "
        f"boxes ({crowd} crowd: left out of the training targets, ignored by COCOeval), {len(counts.clipped)} "
        f"clipped to their image, {len(counts.dropped)} dropped; "
        + (f"{other_modes} images not stored as RGB, converted as they are read (grayscale: the channel repeated; "
           "RGBA: alpha dropped)" if other_modes else "every image stored as RGB")
    )

    return _coco_rows(by_id, objects, image_folder), categories, json_path


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
    file is not on disk or is not a complete image (`checks.check_image_files`: header and end of every file); a box
    that is not 4 finite numbers or has a negative width or height (ValueError naming the json, the image and
    annotation ids or files, and what to do).
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


def load_coco_folder(
    root: str | os.PathLike,
    *,
    train_split: str | None = None,
    validation_split: str | None = None,
    id2label: Mapping[int, str] | None = None,
) -> DetectionData:
    """`load_coco` with the splits found in the folder: each defaults to the first of train2017/train2014/train and
    val2017/val2014/val/validation that has an `annotations/instances_{split}.json` (a FileNotFoundError naming the
    jsons searched when there is none). `id2label` may rename the classes (same labels 0..K-1)."""
    annotations = Path(root) / "annotations"

    def first_existing(candidates: tuple[str, ...]) -> str | None:
        return next((s for s in candidates if (annotations / f"instances_{s}.json").is_file()), None)

    train = train_split or first_existing(_COCO_TRAIN_SPLITS)
    validation = validation_split or first_existing(_COCO_VALIDATION_SPLITS)
    searched = ((train, _COCO_TRAIN_SPLITS, "train"), (validation, _COCO_VALIDATION_SPLITS, "validation"))
    for found, candidates, kind in searched:
        if found is None:
            present = sorted(p.name for p in annotations.glob("instances_*.json"))
            raise FileNotFoundError(
                f"no {kind} split in the COCO folder {root}: searched {annotations}/instances_"
                f"{{{','.join(candidates)}}}.json (present: {', '.join(present)}). Add that json with its image "
                f"folder, or name an existing split with --{kind}_split ({kind}_split=... in Python)."
            )
    data = load_coco(root, train_split=train, validation_split=validation)
    if id2label is not None:
        data.id2label = renamed_classes(id2label, data.id2label, "a COCO folder")
        features = detection_features(data.id2label[k] for k in sorted(data.id2label))
        data.dataset = datasets.DatasetDict({k: v.cast(features) for k, v in data.dataset.items()})
    return data


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
