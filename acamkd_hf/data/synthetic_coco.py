"""A small synthetic object-detection set written in the real COCO on-disk layout.

Why it looks the way it does:
- Files and json are the real COCO ones (`{root}/train2017/000000000001.jpg`, `annotations/instances_train2017.json`
  with `images`, `annotations`, `categories`), so `load_coco` and the whole pipeline (COCOeval included) run on it
  unchanged. Category ids are non-contiguous (1, 3, 5, ...) and listed out of order in the json, as in COCO (ids
  1..90 for 80 classes), so the contiguous-label <-> category-id mapping is exercised both ways.
- Each class is a shape *and* a colour *and* a texture (`SYNTHETIC_COCO_CLASSES`); objects get a colour jitter, the
  background is a noisy gradient with faint grey distractor blobs, and every image gets pixel noise (then JPEG), so a
  detector has to look at more than one pixel, yet a tiny DETR-family model learns the task in a minute or two on a
  CPU.
- Object sizes span the three COCO size buckets *with COCO's own thresholds* (area < 32^2 small, < 96^2 medium,
  larger = large), so the unmodified COCO metric reports `map_small`, `map_medium` and `map_large`. At the default
  128 x 128 that means small objects of 10-29 px, medium of 34-86 px and large of 99-124 px (at most one per image,
  drawn first, so others may sit on it). A `size_thresholds` argument scales the buckets for other image sizes.
- Objects overlap (box IoU up to 0.35 with each earlier object; later, smaller objects are drawn on top), some touch
  the border (their box is clipped to the image, as in COCO), about 10 % of the images hold no object at all, and
  about 8 % hold one crowd region (several small objects of one class packed together, annotated by a single
  `iscrowd=1` box with an RLE segmentation, as COCO does for crowds).
- `area` is the box area `w * h`: the synthetic set has no instance masks, each non-crowd `segmentation` is the box
  polygon, and COCO's `area` is the area of the segmentation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SYNTHETIC_COCO_CLASSES", "make_synthetic_coco", "synthetic_category_ids"]

# (name, shape, RGB colour, texture). Colours are far apart in RGB; shapes and textures repeat only with a different
# colour, so every class differs from every other in at least two of the three cues.
SYNTHETIC_COCO_CLASSES: tuple[tuple[str, str, tuple[int, int, int], str], ...] = (
    ("red square", "square", (220, 45, 45), "flat"),
    ("green disc", "disc", (45, 190, 65), "flat"),
    ("blue triangle", "triangle", (55, 85, 225), "flat"),
    ("yellow ring", "ring", (235, 215, 40), "flat"),
    ("magenta cross", "cross", (215, 55, 205), "flat"),
    ("cyan striped square", "square", (40, 205, 215), "stripes"),
    ("orange checkered diamond", "diamond", (245, 140, 25), "checker"),
    ("white dotted disc", "disc", (240, 240, 240), "dots"),
    ("purple striped triangle", "triangle", (130, 50, 180), "stripes"),
    ("brown checkered ring", "ring", (140, 90, 40), "checker"),
)

_TEXTURE_PERIOD = 6.0  # pixels
_TEXTURE_AMPLITUDE = 0.35  # fraction of the colour removed in the dark half of a texture
_COLOUR_JITTER = 18.0  # +- per channel, in 0..255 units
_NOISE_STD = 6.0  # per-pixel Gaussian noise, 0..255 units
_MAX_BOX_IOU = 0.35  # between a new object's box and every earlier one
_EMPTY_FRACTION = 0.10
_CROWD_FRACTION = 0.08
_LARGE_FRACTION = 0.15  # images with one large object
_JPEG_QUALITY = 92
_VAL_IMAGE_ID_OFFSET = 100_000  # COCO's image ids are unique across splits
_VAL_ANNOTATION_ID_OFFSET = 10_000_000


def synthetic_category_ids(num_classes: int) -> list[int]:
    """COCO category id of each synthetic class, in class order: 1, 3, 5, ... (non-contiguous on purpose)."""
    return [2 * k + 1 for k in range(num_classes)]


def _shape_mask(shape: str, box: tuple[float, float, float, float], yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of `shape` inscribed in the float box (x0, y0, w, h) on the pixel-centre grid (yy, xx)."""
    x0, y0, w, h = box
    cx, cy = x0 + w / 2, y0 + h / 2
    # normalised coordinates: -1..1 across the box
    u = (xx + 0.5 - cx) / (w / 2)
    v = (yy + 0.5 - cy) / (h / 2)
    inside = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "square":
        return inside
    if shape == "disc":
        return u * u + v * v <= 1
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1) & (r2 >= 0.5**2)
    if shape == "triangle":  # apex at the top centre, base at the bottom
        return inside & (np.abs(u) <= (v + 1) / 2)
    if shape == "cross":
        return inside & ((np.abs(u) <= 1 / 3) | (np.abs(v) <= 1 / 3))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    raise ValueError(f"unknown shape {shape!r}")


def _texture(kind: str, yy: np.ndarray, xx: np.ndarray, phase: float) -> np.ndarray:
    """Multiplicative factor in [1 - amplitude, 1] on the grid. Shape (H, W)."""
    w = 2 * math.pi / _TEXTURE_PERIOD
    if kind == "flat":
        return np.ones_like(yy)
    if kind == "stripes":  # diagonal bars
        dark = np.sin(w * (xx + yy) / math.sqrt(2) + phase) < 0
    elif kind == "checker":
        dark = (np.sin(w * xx + phase) * np.sin(w * yy + phase)) < 0
    elif kind == "dots":
        dark = (np.cos(w * xx + phase) + np.cos(w * yy + phase)) > 1.0
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return np.where(dark, 1.0 - _TEXTURE_AMPLITUDE, 1.0)


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two integer [x, y, w, h] boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """[x, y, w, h] (integers) of the True pixels, None if there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


class _Painter:
    """One image: the canvas, its grid, and the boxes placed so far."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng = rng
        self.height, self.width = height, width
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        # background: a random grey-ish gradient, plus faint grey blobs (distractors without a class colour)
        base = rng.uniform(60, 130)
        gy, gx = rng.uniform(-30, 30, size=2)
        canvas = base + gy * (self.yy / height - 0.5) + gx * (self.xx / width - 0.5)
        self.canvas = np.repeat(canvas[:, :, None], 3, axis=2) + rng.uniform(-10, 10, size=3)
        for _ in range(rng.integers(0, 4)):
            size = rng.uniform(0.05, 0.25) * min(height, width)
            box = (rng.uniform(-size / 2, width - size / 2), rng.uniform(-size / 2, height - size / 2), size, size)
            blob = _shape_mask("disc", box, self.yy, self.xx)
            self.canvas[blob] += rng.uniform(-25, 25)
        self.boxes: list[tuple[int, int, int, int]] = []

    def paint(self, class_index: int, box: tuple[float, float, float, float]) -> np.ndarray:
        """Draws one object of the class in the float box; returns its (unoccluded) mask."""
        _, shape, colour, texture = SYNTHETIC_COCO_CLASSES[class_index]
        mask = _shape_mask(shape, box, self.yy, self.xx)
        jitter = self.rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, 3)
        colour = np.clip(np.asarray(colour, dtype=np.float32) + jitter, 0, 255)
        shade = _texture(texture, self.yy[mask], self.xx[mask], self.rng.uniform(0, 2 * math.pi))
        self.canvas[mask] = shade[:, None] * colour[None, :]
        return mask

    def place(
        self, side_range: tuple[float, float], max_area: float | None, min_area: float | None, attempts: int = 30
    ) -> tuple[float, float, float, float] | None:
        """A float box (x0, y0, w, h) with sides in `side_range`, area (of its visible part) in [min_area, max_area),
        centre in the image, IoU <= _MAX_BOX_IOU with every earlier box. None if no spot was found."""
        for _ in range(attempts):
            w, h = self.rng.uniform(*side_range, size=2)
            aspect_limit = 2.0  # keep shapes recognisable: aspect ratio at most 2
            if max(w / h, h / w) > aspect_limit:
                continue
            cx, cy = self.rng.uniform(0, self.width), self.rng.uniform(0, self.height)
            box = (cx - w / 2, cy - h / 2, w, h)
            # visible part after clipping to the image, in whole pixels as the tight box will be
            x0, y0 = max(0, math.floor(box[0] + 0.5)), max(0, math.floor(box[1] + 0.5))
            x1, y1 = min(self.width, math.ceil(box[0] + w - 0.5)), min(self.height, math.ceil(box[1] + h - 0.5))
            vw, vh = x1 - x0, y1 - y0
            if vw < 0.6 * w or vh < 0.6 * h:  # mostly outside the image
                continue
            area = vw * vh
            if (max_area is not None and area >= max_area) or (min_area is not None and area < min_area):
                continue
            if any(_box_iou((x0, y0, vw, vh), other) > _MAX_BOX_IOU for other in self.boxes):
                continue
            return box
        return None

    def image(self) -> np.ndarray:
        noisy = self.canvas + self.rng.normal(0.0, _NOISE_STD, size=self.canvas.shape)
        return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


def _rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a boolean (H, W) mask, json-ready."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def _make_image(
    rng: np.random.Generator, height: int, width: int, num_classes: int, small: float, large: float
) -> tuple[np.ndarray, list[dict]]:
    """One image (H, W, 3) uint8 and its annotations (category = class index; no ids yet)."""
    painter = _Painter(rng, height, width)
    annotations: list[dict] = []
    if rng.random() < _EMPTY_FRACTION:
        return painter.image(), annotations

    def add(class_index: int, mask: np.ndarray, iscrowd: int) -> None:
        box = _tight_box(mask)
        if box is None:
            return
        painter.boxes.append(box)
        x, y, w, h = box
        annotations.append(
            {
                "category": class_index,
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": float(w * h),
                "iscrowd": iscrowd,
                "segmentation": _rle(mask) if iscrowd else [[x, y, x + w, y, x + w, y + h, x, y + h]],
            }
        )

    # Large first (background-like, others may sit on it), then medium, then small on top.
    min_side = max(4.0, 0.3 * small)
    plan: list[tuple[tuple[float, float], float | None, float | None]] = []
    if rng.random() < _LARGE_FRACTION and min(height, width) > 1.03 * large:
        plan.append(((1.03 * large, 0.97 * min(height, width)), None, large * large))
    count = int(rng.integers(1, 6))
    for _ in range(count):
        if rng.random() < 0.45:
            plan.append(((min_side, 0.92 * small), small * small, None))
        else:
            high = min(0.9 * large, 0.7 * min(height, width))
            if high > 1.05 * small:
                plan.append(((1.05 * small, high), large * large, small * small))
            else:
                plan.append(((min_side, 0.92 * small), small * small, None))
    # medium before small: sort by the lower end of the side range, largest first
    plan.sort(key=lambda item: -item[0][0])
    for side_range, max_area, min_area in plan:
        box = painter.place(side_range, max_area, min_area)
        if box is None:
            continue
        class_index = int(rng.integers(0, num_classes))
        add(class_index, painter.paint(class_index, box), iscrowd=0)

    if rng.random() < _CROWD_FRACTION:
        # A crowd: 4-7 small objects of one class packed into a region, one iscrowd box around them all.
        region = painter.place((1.2 * small, 2.0 * small), None, None)
        if region is not None:
            class_index = int(rng.integers(0, num_classes))
            rx, ry, rw, rh = region
            union = np.zeros((height, width), dtype=bool)
            for _ in range(int(rng.integers(4, 8))):
                side = rng.uniform(0.25, 0.4) * min(rw, rh)
                box = (rx + rng.uniform(0, rw - side), ry + rng.uniform(0, rh - side), side, side)
                union |= painter.paint(class_index, box)
            add(class_index, union, iscrowd=1)
    return painter.image(), annotations


def _write_split(root: Path, split: str, split_index: int, count: int, rng, size: tuple[int, int],
                 category_ids: list[int], categories: list[dict], size_thresholds: tuple[float, float]) -> None:
    """One split of :func:`make_synthetic_coco`: ``count`` JPEGs in ``root/<split>/`` and their annotation file."""
    height, width = size
    small, large = size_thresholds
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    first_image_id = 1 if split_index == 0 else _VAL_IMAGE_ID_OFFSET + 1
    next_annotation_id = 1 if split_index == 0 else _VAL_ANNOTATION_ID_OFFSET + 1
    images, annotations = [], []
    for i in range(count):
        image_id = first_image_id + i
        pixels, objects = _make_image(rng, height, width, len(categories), small, large)
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(image_dir / file_name, quality=_JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            annotations.append(
                {
                    "id": next_annotation_id,
                    "image_id": image_id,
                    "category_id": category_ids[obj["category"]],
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": obj["iscrowd"],
                    "segmentation": obj["segmentation"],
                }
            )
            next_annotation_id += 1
    document = {
        "info": {"description": "acamkd_hf synthetic COCO-layout detection set", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))


def make_synthetic_coco(
    root: str | Path,
    num_train: int = 256,
    num_val: int = 64,
    image_size: tuple[int, int] = (128, 128),
    num_classes: int = 6,
    seed: int = 0,
    size_thresholds: tuple[float, float] = (32.0, 96.0),
) -> Path:
    """Write a synthetic detection set in the COCO layout under `root`; return `root`.

    root/train2017/{image_id:012d}.jpg, root/val2017/{image_id:012d}.jpg   RGB (H, W)
    root/annotations/instances_train2017.json, instances_val2017.json     COCO detection format
    root/synthetic.json   the generator's arguments (provenance; not read by the loader)

    image_size is (H, W). Classes are the first `num_classes` of `SYNTHETIC_COCO_CLASSES`, with category ids
    1, 3, 5, ... (`synthetic_category_ids`). `size_thresholds` are the box sides that separate small / medium /
    large objects (COCO's 32 and 96 by default, which the COCO metric uses); objects are drawn from all three
    buckets that fit in the image. Image ids are 1..num_train for train and 100001.. for validation (unique across
    splits, as in COCO). Deterministic given `seed` (train and validation use separate streams); existing files
    are overwritten.
    """
    if not 1 <= num_classes <= len(SYNTHETIC_COCO_CLASSES):
        raise ValueError(f"num_classes must be in [1, {len(SYNTHETIC_COCO_CLASSES)}], got {num_classes}")
    height, width = (int(s) for s in image_size)
    if height < 32 or width < 32:
        raise ValueError(f"image_size must be at least 32x32, got {image_size}")
    small, large = (float(t) for t in size_thresholds)
    if not 0 < small < large:
        raise ValueError(f"size_thresholds must be 0 < small < large, got {size_thresholds}")
    if num_val >= _VAL_IMAGE_ID_OFFSET or num_train >= _VAL_IMAGE_ID_OFFSET:
        raise ValueError(f"at most {_VAL_IMAGE_ID_OFFSET - 1} images per split")
    root = Path(root)
    category_ids = synthetic_category_ids(num_classes)
    # Listed in descending id order: a loader must sort by id, not trust the file order.
    categories = [
        {"id": category_ids[k], "name": SYNTHETIC_COCO_CLASSES[k][0], "supercategory": SYNTHETIC_COCO_CLASSES[k][1]}
        for k in reversed(range(num_classes))
    ]
    (root / "annotations").mkdir(parents=True, exist_ok=True)

    for split_index, (split, count) in enumerate((("train2017", num_train), ("val2017", num_val))):
        _write_split(root, split, split_index, count, np.random.default_rng([seed, split_index]), (height, width),
                     category_ids, categories, (small, large))

    meta = {
        "generator": "acamkd_hf.data.synthetic_coco.make_synthetic_coco",
        "num_train": num_train,
        "num_val": num_val,
        "image_size": [height, width],
        "num_classes": num_classes,
        "seed": seed,
        "size_thresholds": [small, large],
    }
    (root / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
