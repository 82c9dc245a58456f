"""Per-sample transforms for object detection, used with `dataset.with_transform(...)`, and the collator.

Each example becomes the COCO annotation the transformers image processors take
(`{"image_id": ..., "annotations": [{"bbox", "category_id", "area", "iscrowd"}]}`) and goes through
`image_processor(images=..., annotations=..., return_tensors="pt")`, which resizes, normalises and converts the
boxes to the model's targets (normalised cx, cy, w, h). Training adds a random horizontal flip, drawn from torch's
global RNG: `Trainer` checkpoints and restores it, and DataLoader workers derive their torch seed from it, so resumed
and multi-worker runs draw reproducible flips (the reason the segmentation transforms do the same).

Why one processor call per image: given several images of different sizes, the processors pad them to a common size
and re-normalise the boxes to the *padded* size. The model's predictions would then be relative to the padded image,
while `post_process_object_detection(target_sizes=original sizes)` assumes they are relative to the image itself, so
every padded image would be evaluated with shifted boxes. Processing images one by one keeps the targets relative to
each image (the original DETR convention: DETR's sine position embedding is normalised by the pixel mask's extent, so
the model sees coordinates relative to the valid region); `collate_detection` then pads the batch and marks the
padding in `pixel_mask`. With a fixed-size resize (RT-DETR's default 640 x 640, or `size={"height": h, "width": w}`)
nothing is padded at all.

Checked with transformers 5.23: `DetrImageProcessor` and `RTDetrImageProcessor` are the torchvision-backed
processors (formerly "Fast"; importing them needs torchvision); `DetrImageProcessorPil` / `RTDetrImageProcessorPil`
are the PIL ones. All four work here and give the same targets. DETR pads and returns a `pixel_mask`; RT-DETR (do_pad
False) returns none. Set the processor's `size` for small images: DETR's default resizes the shortest edge to 800.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from .checks import decode_image, describe_source

__all__ = ["DetectionTransforms", "collate_detection", "coco_annotation"]


def coco_annotation(image_id: int, objects: Mapping[str, Sequence[Any]], *, include_crowd: bool) -> dict[str, Any]:
    """`objects` ({bbox, category, area?, iscrowd?} lists) -> {"image_id", "annotations": [COCO dicts]}.

    `category_id` is the contiguous label (the model's class index), not the original COCO id. Crowd annotations
    are left out unless `include_crowd`.
    """
    boxes = objects["bbox"]
    n = len(boxes)
    areas = objects.get("area") or [float(b[2]) * float(b[3]) for b in boxes]
    crowds = objects.get("iscrowd") or [0] * n
    annotations = []
    for box, category, area, iscrowd in zip(boxes, objects["category"], areas, crowds, strict=True):
        if iscrowd and not include_crowd:
            continue
        annotations.append(
            {
                "bbox": [float(v) for v in box],
                "category_id": int(category),
                "area": float(area),
                "iscrowd": int(iscrowd),
            }
        )
    return {"image_id": int(image_id), "annotations": annotations}


def _hflip(image: Image.Image, annotation: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    """Mirror the image left-right and its [x, y, w, h] boxes with it: x -> W - x - w."""
    width = image.width
    flipped = []
    for ann in annotation["annotations"]:
        x, y, w, h = ann["bbox"]
        flipped.append({**ann, "bbox": [width - x - w, y, w, h]})
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), {**annotation, "annotations": flipped}


def in_the_annotations_frame(stored: Any, decoded: Image.Image, width: int, height: int) -> Image.Image:
    """The image in the frame its annotation describes (``width`` x ``height``, the boxes' frame).

    ``datasets`` decodes a JPEG with an EXIF orientation tag turned upright (``ImageOps.exif_transpose``): a phone's
    portrait photo stored 160x120 with orientation 6 comes out 120x160. COCO-style annotations give the stored size
    and boxes in the stored frame, so the stored pixels are what the boxes fit: they are read again without the
    orientation. Any other disagreement is an error naming the file (the boxes would land on the wrong pixels).
    """
    source = None
    if isinstance(stored, dict):
        source = io.BytesIO(stored["bytes"]) if stored.get("bytes") else stored.get("path")
    elif getattr(stored, "filename", None):  # decoded by datasets from a file
        source = stored.filename
    if source is not None:
        raw = Image.open(source)
        raw.load()
        if raw.size == (width, height):
            return raw
    raise ValueError(
        f"the image {describe_source(stored)} is {decoded.width}x{decoded.height} as decoded"
        f"{' (EXIF orientation applied)' if decoded.size == (height, width) else ''}, but its annotation says "
        f"{width}x{height}: its boxes would not fit it. Correct the width and height of its entry in the json (and "
        "its boxes) to the image as stored, or replace the image."
    )


class DetectionTransforms:
    """Batch transform for `datasets.Dataset.with_transform` on a `DetectionData` split.

    Input: a batch dict with `image` (PIL, or undecoded {"path", "bytes"}: decoded here, a file that cannot be
    decoded raises a ValueError naming it), `image_id` (int) and `objects` ({bbox [x, y, w, h] absolute pixels,
    category (contiguous label), area, iscrowd} lists); other columns are ignored.
    Output: `{"pixel_values": [float (3, h, w)], "pixel_mask": [long (h, w)] (only if the processor makes one),
    "labels": [dict]}`, each label dict as the processor makes it: `class_labels` long (n,), `boxes` float (n, 4)
    normalised (cx, cy, w, h) relative to the image, `image_id` long (1,), `area` float (n,) (rescaled),
    `iscrowd` long (n,), `orig_size` long (2,) = stored (h, w), `size` long (2,) = processed (h, w).

    Crowd annotations are excluded from the targets here (they stay in the dataset and in the COCO ground truth,
    where COCOeval ignores detections on them). Boxes are clipped to the image and emptied boxes dropped by the
    processor as well.

    image_processor: a transformers detection image processor (DETR, RT-DETR, Deformable DETR, ...).
    train: random horizontal flip (probability 0.5) when True and `hflip`.
    """

    def __init__(self, image_processor: Any, *, train: bool, hflip: bool = True):
        self.image_processor = image_processor
        self.train = train
        self.hflip = hflip

    def __call__(self, batch: dict[str, Sequence[Any]]) -> dict[str, list[Any]]:
        pixel_values, pixel_masks, labels = [], [], []
        count = len(batch["image_id"])
        sizes = zip(batch.get("width") or [None] * count, batch.get("height") or [None] * count, strict=True)
        for image, image_id, objects, (width, height) in zip(batch["image"], batch["image_id"], batch["objects"], sizes, strict=True):
            stored = image
            image = decode_image(image, "image")  # undecoded (checks.lazily_decoded): a broken file is named
            if width is not None and image.size != (width, height):
                image = in_the_annotations_frame(stored, image, width, height)
            if image.mode != "RGB":
                image = image.convert("RGB")
            annotation = coco_annotation(image_id, objects, include_crowd=False)
            if self.train and self.hflip and torch.rand(()).item() < 0.5:
                image, annotation = _hflip(image, annotation)
            encoded = self.image_processor(images=[image], annotations=[annotation], return_tensors="pt")
            pixel_values.append(encoded["pixel_values"][0])
            if "pixel_mask" in encoded:
                pixel_masks.append(encoded["pixel_mask"][0])
            labels.append({key: value for key, value in encoded["labels"][0].items()})
        out: dict[str, list[Any]] = {"pixel_values": pixel_values, "labels": labels}
        if pixel_masks:
            out["pixel_mask"] = pixel_masks
        return out


def collate_detection(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """[{"pixel_values": (3, h, w), "pixel_mask"?: (h, w), "labels": dict}] -> a model batch.

    Returns `{"pixel_values": (B, 3, H, W), "pixel_mask": (B, H, W) long, "labels": [dict]}`. Samples of one size
    are stacked (`pixel_mask` only if the samples have one). Samples of different sizes are padded bottom/right with
    zeros to the largest H and W of the batch (zero = the mean colour after normalisation, as the processors pad) and
    a `pixel_mask` (1 = image, 0 = padding) is always returned. The boxes in `labels` stay relative to each unpadded
    image: see the module docstring for why. `labels` stays a list of dicts, one per image (what DETR-family losses
    take).
    """
    values = [example["pixel_values"] for example in batch]
    has_mask = all("pixel_mask" in example for example in batch)
    out: dict[str, Any] = {}
    if len({tuple(v.shape) for v in values}) == 1:
        out["pixel_values"] = torch.stack(values)
        if has_mask:
            out["pixel_mask"] = torch.stack([example["pixel_mask"] for example in batch])
    else:
        channels = values[0].shape[0]
        height = max(v.shape[-2] for v in values)
        width = max(v.shape[-1] for v in values)
        pixel_values = values[0].new_zeros((len(values), channels, height, width))
        pixel_mask = torch.zeros((len(values), height, width), dtype=torch.long)
        for i, (example, value) in enumerate(zip(batch, values)):
            h, w = value.shape[-2:]
            pixel_values[i, :, :h, :w] = value
            pixel_mask[i, :h, :w] = example["pixel_mask"] if has_mask else 1
        out["pixel_values"] = pixel_values
        out["pixel_mask"] = pixel_mask
    out["labels"] = [example["labels"] for example in batch]
    return out
