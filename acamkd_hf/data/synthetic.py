"""A small synthetic segmentation set written in the real Cityscapes on-disk layout.

Why it looks the way it does:
- Files, names and label values are the real ones (`*_leftImg8bit.png`, `*_gtFine_labelIds.png`, labelIds such as
  7 = road, plus void labelIds 0 / 1 that map to ignore), so `load_cityscapes` and the whole pipeline run on it
  unchanged and the labelId -> trainId mapping is exercised.
- Each class is a colour *and* a texture (stripes of an orientation and period, checkers, dots, flat). Classes come
  in pairs that share a colour and differ only in texture, and every image gets a brightness/colour jitter and
  pixel noise. Per-pixel colour therefore separates only the pairs; telling the two classes of a pair apart needs a
  receptive field of a few texture periods. One pair, fence / pole, differs only in the stripes' period (5 vs 7
  pixels, same orientation): sized so that the small-segformer teacher learns it and the tiny-segformer student
  alone does not within the quality benchmark's budget, on every seed: room for distillation to show that does not
  depend on the seed (docs/results.md, "Quality benchmark", "Settings").
- Shapes (rectangles, ellipses) of random class, position and size overlap over a road background, with a
  void "ego vehicle" band at the bottom (as in Cityscapes) and sometimes an unlabeled patch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .labels import CITYSCAPES_LABEL_IDS, CITYSCAPES_TRAIN_CLASSES

__all__ = ["SYNTHETIC_CITYSCAPES_VERSION", "SYNTHETIC_TEXTURES", "make_synthetic_cityscapes"]

#: Version of what the generator writes for given arguments; part of the cached set's folder name, so a set written
#: by an older generator is never reused. 2: pole's texture (was 135-degree stripes, the mirror image of fence's;
#: now fence's stripes at a longer period).
SYNTHETIC_CITYSCAPES_VERSION = 2

# Texture of each trainId (cycled for trainIds >= 8): (kind, angle in degrees, period in pixels).
# Consecutive pairs (0,1), (2,3), ... share a colour, so these must differ within each pair, also after a
# horizontal flip (a training augmentation): 45- and 135-degree stripes, mirror images of each other, would make a
# pair that no model can tell apart (version 1 had them for fence / pole: both capped near 0.2-0.4 IoU). The
# pair's two periods are apart by more than the +-10 % period jitter of _paint_layer.
SYNTHETIC_TEXTURES: tuple[tuple[str, float, float], ...] = (
    ("flat", 0.0, 6.0),  # road: only noise
    ("stripes", 0.0, 6.0),  # sidewalk: horizontal bars
    ("stripes", 90.0, 6.0),  # building: vertical bars
    ("checker", 0.0, 8.0),  # wall
    ("stripes", 45.0, 5.0),  # fence
    ("stripes", 45.0, 7.0),  # pole: fence's stripes at a longer period
    ("checker", 45.0, 6.0),  # traffic light
    ("dots", 0.0, 6.0),  # traffic sign
)

# One colour per class pair (RGB in [0, 1]): the Cityscapes palette colour of the pair's first class, squeezed into
# [0.2, 0.8] so that texture and jitter rarely clip.
_PAIR_COLOURS = np.array(
    [
        (128, 64, 128),  # road / sidewalk
        (70, 70, 70),  # building / wall
        (190, 153, 153),  # fence / pole
        (250, 170, 30),  # traffic light / traffic sign
        (107, 142, 35),  # vegetation / terrain
        (70, 130, 180),  # sky / person
        (255, 0, 0),  # rider / car
        (0, 0, 70),  # truck / bus
        (0, 80, 100),  # train / motorcycle
        (119, 11, 32),  # bicycle
    ],
    dtype=np.float32,
)
_PAIR_COLOURS = 0.2 + 0.6 * _PAIR_COLOURS / 255.0

_TEXTURE_AMPLITUDE = 0.22  # +- intensity of the texture pattern, in [0, 1] units
_NOISE_STD = 0.06  # per-pixel Gaussian noise
_TRAIN_CITIES = ("aachen", "bochum", "bremen")
_VAL_CITIES = ("frankfurt", "lindau")
_EGO_VEHICLE_LABEL_ID = 1
_UNLABELED_LABEL_ID = 0


def _pattern(kind: str, angle_deg: float, period: float, phase: tuple[float, float], yy, xx) -> np.ndarray:
    """Texture in [-1, 1] on the pixel grid (yy, xx: float (H, W)). Shape (H, W)."""
    theta = math.radians(angle_deg)
    # u runs across the bars: angle 0 -> bars are horizontal (u = y), 90 -> vertical (u = x).
    u = yy * math.cos(theta) + xx * math.sin(theta)
    v = -yy * math.sin(theta) + xx * math.cos(theta)
    w = 2.0 * math.pi / period
    if kind == "flat":
        return np.zeros_like(yy)
    if kind == "stripes":
        return np.sign(np.sin(w * u + phase[0]))
    if kind == "checker":
        return np.sign(np.sin(w * u + phase[0]) * np.sin(w * v + phase[1]))
    if kind == "dots":
        s = np.sin(w * u + phase[0]) * np.sin(w * v + phase[1])
        # s > 0.5 covers ~18.5 % of the plane; -0.23 elsewhere makes the mean ~0, so dots do not shift the colour
        # the class shares with its pair partner.
        return np.where(s > 0.5, 1.0, -0.23)
    raise ValueError(f"unknown texture kind {kind!r}")


def _paint_layer(rng: np.random.Generator, train_id: int, yy, xx) -> np.ndarray:
    """Colour + texture of one class over the whole grid, with a little per-shape variation. Float (H, W, 3)."""
    kind, angle, period = SYNTHETIC_TEXTURES[train_id % len(SYNTHETIC_TEXTURES)]
    # Small jitter of orientation/period so the model learns a texture family, not one exact pattern.
    angle = angle + rng.uniform(-8.0, 8.0)
    period = period * rng.uniform(0.9, 1.1)
    phase = (rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi))
    pattern = _pattern(kind, angle, period, phase, yy, xx)
    colour = _PAIR_COLOURS[(train_id // 2) % len(_PAIR_COLOURS)]
    return colour[None, None, :] + _TEXTURE_AMPLITUDE * pattern[:, :, None]


def _shape_mask(rng: np.random.Generator, height: int, width: int, yy, xx) -> np.ndarray:
    """Bool (H, W): a random rectangle or ellipse, 10-45 % of the image side, anywhere (may leave the frame)."""
    h = rng.uniform(0.15, 0.5) * height
    w = rng.uniform(0.1, 0.4) * width
    cy = rng.uniform(0, height)
    cx = rng.uniform(0, width)
    if rng.random() < 0.5:
        return (np.abs(yy - cy) <= h / 2) & (np.abs(xx - cx) <= w / 2)
    return ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1.0


def _make_sample(
    rng: np.random.Generator, height: int, width: int, num_classes: int, max_shapes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image uint8 (H, W, 3) and its labelIds map uint8 (H, W)."""
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    train_ids = np.zeros((height, width), dtype=np.int64)  # background: trainId 0 (road)
    image = _paint_layer(rng, 0, yy, xx)

    # Several distinct foreground classes per image, then maybe repeats; later shapes overlap earlier ones.
    foreground = np.arange(1, num_classes)
    num_shapes = int(rng.integers(3, max_shapes + 1))
    distinct = rng.permutation(foreground)[: min(num_shapes, len(foreground))]
    extra = rng.choice(foreground, size=num_shapes - len(distinct)) if num_shapes > len(distinct) else []
    for train_id in [*distinct, *extra]:
        mask = _shape_mask(rng, height, width, yy, xx)
        layer = _paint_layer(rng, int(train_id), yy, xx)
        image[mask] = layer[mask]
        train_ids[mask] = train_id

    label_ids = np.asarray(CITYSCAPES_LABEL_IDS, dtype=np.uint8)[train_ids]

    # Void pixels, as in real Cityscapes: sometimes an unlabeled rectangle (labelId 0) of random flat colour ...
    if rng.random() < 0.3:
        ph, pw = rng.uniform(0.05, 0.15) * height, rng.uniform(0.1, 0.3) * width
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        mask = (np.abs(yy - cy) <= ph / 2) & (np.abs(xx - cx) <= pw / 2)
        image[mask] = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
        label_ids[mask] = _UNLABELED_LABEL_ID
    # ... and the ego-vehicle bonnet at the bottom (labelId 1).
    ego = max(1, height // 16)
    image[-ego:] = 0.15
    label_ids[-ego:] = _EGO_VEHICLE_LABEL_ID

    # Photometric jitter per image (brightness, per-channel shift) and pixel noise: colour alone gets unreliable.
    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08, size=3).astype(np.float32)
    image = image + rng.normal(0.0, _NOISE_STD, size=image.shape).astype(np.float32)
    image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, label_ids


def make_synthetic_cityscapes(
    root: str | Path,
    num_train: int = 200,
    num_val: int = 50,
    image_size: tuple[int, int] = (64, 128),
    num_classes: int = 8,
    seed: int = 0,
    max_shapes: int = 6,
) -> Path:
    """Write a synthetic segmentation set in the Cityscapes layout under `root`; return `root`.

    root/leftImg8bit/{train,val}/{city}/{city}_{seq:06d}_000019_leftImg8bit.png   RGB uint8 (H, W, 3)
    root/gtFine/{train,val}/{city}/{city}_{seq:06d}_000019_gtFine_labelIds.png    labelIds uint8 (H, W)
    root/id2label.json   the trainIds used (0..num_classes-1), read by `load_cityscapes`
    root/synthetic.json  the generator's arguments (provenance)

    image_size is (H, W); the default 64x128 keeps Cityscapes' 1:2 aspect. The classes are the first
    `num_classes` trainIds (road, sidewalk, building, ...), stored as their official labelIds; the bottom
    H/16 rows are "ego vehicle" (labelId 1) and some images hold an "unlabeled" band (labelId 0), both -> ignore.
    Deterministic given `seed` (train and validation use separate streams). Existing files are overwritten.
    """
    if not 2 <= num_classes <= len(CITYSCAPES_TRAIN_CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(CITYSCAPES_TRAIN_CLASSES)}], got {num_classes}")
    height, width = image_size
    if height < 16 or width < 16:
        raise ValueError(f"image_size must be at least 16x16, got {image_size}")
    if max_shapes < 3:
        raise ValueError(f"max_shapes must be >= 3, got {max_shapes}")
    root = Path(root)

    for split_index, (split, count, cities) in enumerate(
        (("train", num_train, _TRAIN_CITIES), ("val", num_val, _VAL_CITIES))
    ):
        rng = np.random.default_rng([seed, split_index])
        for i in range(count):
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_000019"
            image, label_ids = _make_sample(rng, height, width, num_classes, max_shapes)
            image_dir = root / "leftImg8bit" / split / city
            label_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            # compress_level=1: these are tiny and written by the hundred; speed matters more than bytes.
            Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png", compress_level=1)
            Image.fromarray(label_ids).save(label_dir / f"{stem}_gtFine_labelIds.png", compress_level=1)

    id2label = {str(i): CITYSCAPES_TRAIN_CLASSES[i] for i in range(num_classes)}
    (root / "id2label.json").write_text(json.dumps(id2label, indent=2) + "\n")
    meta = {
        "generator": "acamkd_hf.data.synthetic.make_synthetic_cityscapes",
        "version": SYNTHETIC_CITYSCAPES_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": [height, width],
        "num_classes": num_classes,
        "seed": seed,
        "max_shapes": max_shapes,
    }
    (root / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
