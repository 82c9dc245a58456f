"""Mask images from numpy arrays (spatial masks as viridis overlays on their image, channel masks as bar charts) and
the file format of one saved mask render (``masks.safetensors``): what
:class:`acamkd_hf.visualization.MaskVisualizationCallback` writes and ``scripts/plot_mask_evolution.py`` reads back.

Needs numpy and PIL only (``safetensors``, itself free of torch, for the file), so the figure script runs without
torch or transformers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: folder under a run's ``output_dir`` that holds one ``step-<N>`` folder per render
MASK_VISUALIZATION_DIR = "mask_visualizations"
#: raw masks of one render: ``<point>.spatial`` (B, M, H, W), ``<point>.channel`` (B, M, C), ``images`` (B, H, W, 3)
MASKS_FILE = "masks.safetensors"
#: height in pixels of the title band on top of every rendered PNG
HEADER_HEIGHT = 14
#: ImageNet mean / std (= ``transformers.image_utils.IMAGENET_DEFAULT_MEAN`` / ``_STD``): what the project's image
#: processors normalise with, used when the processor does not say
DEFAULT_IMAGE_MEAN = (0.485, 0.456, 0.406)
DEFAULT_IMAGE_STD = (0.229, 0.224, 0.225)

# viridis at 0, 1/4, 1/2, 3/4, 1 (RGB); intermediate values are interpolated linearly
_VIRIDIS_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


# ----------------------------------------------------------------------------------------------------- rendering
def point_file_name(point: str) -> str:
    """A point's name as a portable file-name stem: characters other than letters, digits, ``_``, ``.`` and ``-``
    (a ``module:`` point's colon and brackets, which Windows refuses) become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", point)


def denormalize_images(
    pixel_values: np.ndarray,
    image_mean: Sequence[float] = DEFAULT_IMAGE_MEAN,
    image_std: Sequence[float] = DEFAULT_IMAGE_STD,
) -> np.ndarray:
    """Normalised model inputs back to displayable images.

    Args:
        pixel_values: ``(B, 3, H, W)`` float, ``(x / 255 - mean) / std`` as the image processors make them
            (computed in float32).
        image_mean, image_std: the processor's per-channel mean and std.

    Returns:
        ``(B, H, W, 3)`` uint8.
    """
    values = np.asarray(pixel_values, dtype=np.float32)
    mean = np.asarray(image_mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(image_std, dtype=np.float32).reshape(1, -1, 1, 1)
    images = np.clip(np.round((values * std + mean) * np.float32(255.0)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def colorize(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Maps ``values`` of any shape ``S`` to viridis colours ``S + (3,)`` (float64 in [0, 255]); values outside
    ``[vmin, vmax]`` are clipped."""
    scaled = np.clip((np.asarray(values, dtype=np.float64) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    positions = np.linspace(0.0, 1.0, len(_VIRIDIS_ANCHORS))
    return np.stack([np.interp(scaled, positions, _VIRIDIS_ANCHORS[:, k]) for k in range(3)], axis=-1)


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """One spatial mask over its image.

    Args:
        image: ``(H, W, 3)`` uint8.
        mask: ``(h, w)`` values in [0, 1] (any resolution; resized bilinearly to ``(H, W)``).
        alpha: weight of the mask's colour (absolute 0..1 viridis scale).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    height, width = image.shape[:2]
    resized = Image.fromarray(np.ascontiguousarray(mask, dtype=np.float32)).resize((width, height), Image.BILINEAR)
    blended = (1.0 - alpha) * image.astype(np.float64) + alpha * colorize(np.asarray(resized))
    return blended.round().clip(0, 255).astype(np.uint8)


def channel_bar_image(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """A bar chart of one channel mask: one bar per channel, bar height = value (0 at the bottom, 1 at the top),
    bar colour = the same viridis scale as the spatial overlays; a grey line marks 0.5. With more channels than
    pixel columns, a column shows the largest value of the channels it covers.

    Args:
        values: ``(C,)`` mask values in [0, 1].
        height, width: size of the tile in pixels.

    Returns:
        ``(height, width, 3)`` uint8.
    """
    values = np.clip(np.asarray(values, dtype=np.float64).reshape(-1), 0.0, 1.0)
    num_channels = values.size
    tile = np.full((height, width, 3), 24, dtype=np.uint8)
    half = height - 1 - round(0.5 * (height - 1))
    tile[half, :] = 90
    if num_channels == 0:
        return tile
    columns = np.arange(width)
    first = columns * num_channels // width  # first channel each pixel column covers
    last = np.maximum((columns + 1) * num_channels // width, first + 1)  # one past the last
    column_values = np.array([values[a:b].max() for a, b in zip(first, last)])
    if num_channels * 3 <= width:  # room for a 1-pixel gap after each bar
        gap = np.append(first[1:] != first[:-1], True)
        column_values = np.where(gap, np.nan, column_values)
    bar_heights = np.where(np.isnan(column_values), 0, np.round(np.nan_to_num(column_values) * (height - 1)))
    rows = np.arange(height)[:, None]
    inside = rows >= (height - bar_heights[None, :])  # (height, width)
    colours = colorize(np.nan_to_num(column_values)).round().astype(np.uint8)  # (width, 3)
    tile[inside] = np.broadcast_to(colours[None], (height, width, 3))[inside]
    return tile


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font) -> None:
    """White text on a black box (readable on any tile)."""
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font)


def tile_size(image_height: int, image_width: int, tile_height: int) -> tuple[int, int]:
    """``(tile_height, tile_width)``: the image's aspect ratio at ``tile_height`` pixels."""
    return tile_height, max(1, round(image_width * tile_height / image_height))


def render_point_masks(
    images: np.ndarray,
    spatial_masks: np.ndarray | None,
    channel_masks: np.ndarray | None,
    *,
    max_masks: int = 8,
    tile_height: int = 96,
    title: str = "",
) -> Image.Image:
    """The masks of one distillation point for a batch of images, as one picture.

    Layout: a title band of :data:`HEADER_HEIGHT` pixels (``title`` over the image column, ``mask k`` over the
    others), then per image one row of tiles with the image followed by each spatial mask over it (``max`` of the
    mask in the corner) and one row with each channel mask as a bar chart (``mean`` in the corner) under its spatial
    mask; a kind that is absent has no row. Only the first ``max_masks`` masks are drawn. Size:
    ``((1 + K) * tile_w, HEADER_HEIGHT + B * kinds * tile_h)`` with ``K = min(M, max_masks)`` and
    ``(tile_h, tile_w) = tile_size(H, W, tile_height)``.

    Args:
        images: ``(B, H, W, 3)`` uint8.
        spatial_masks: ``(B, M, h, w)`` in [0, 1], or None.
        channel_masks: ``(B, M, C)`` in [0, 1], or None.
        max_masks: how many masks (columns) to draw at most.
        tile_height: height in pixels of one tile (the image is resized to it, keeping its aspect ratio).
        title: text over the image column (e.g. the step).

    Returns:
        An RGB ``PIL.Image``.
    """
    if spatial_masks is None and channel_masks is None:
        raise ValueError("nothing to render: neither spatial nor channel masks")
    batch, image_height, image_width = images.shape[:3]
    num_masks = (spatial_masks if spatial_masks is not None else channel_masks).shape[1]
    shown = min(num_masks, max_masks)
    tile_h, tile_w = tile_size(image_height, image_width, tile_height)
    kinds = [kind for kind, masks in (("spatial", spatial_masks), ("channel", channel_masks)) if masks is not None]
    canvas = np.zeros((HEADER_HEIGHT + batch * len(kinds) * tile_h, (1 + shown) * tile_w, 3), dtype=np.uint8)
    labels: list[tuple[tuple[int, int], str]] = []
    for index in range(batch):
        image = np.asarray(Image.fromarray(images[index]).resize((tile_w, tile_h), Image.BILINEAR))
        for row_in_image, kind in enumerate(kinds):
            top = HEADER_HEIGHT + (index * len(kinds) + row_in_image) * tile_h
            if row_in_image == 0:
                canvas[top : top + tile_h, :tile_w] = image
            for mask_index in range(shown):
                left = (1 + mask_index) * tile_w
                if kind == "spatial":
                    mask = spatial_masks[index, mask_index]
                    canvas[top : top + tile_h, left : left + tile_w] = overlay_mask(image, mask)
                    labels.append(((left + 2, top + 2), f"max {float(mask.max()):.2g}"))
                else:
                    mask = channel_masks[index, mask_index]
                    canvas[top : top + tile_h, left : left + tile_w] = channel_bar_image(mask, tile_h, tile_w)
                    labels.append(((left + 2, top + 2), f"mean {float(mask.mean()):.2g}"))
    picture = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(picture), _font()
    draw.text((2, 1), title or "image", fill=(255, 255, 255), font=font)
    for mask_index in range(shown):
        draw.text(((1 + mask_index) * tile_w + 2, 1), f"mask {mask_index + 1}", fill=(255, 255, 255), font=font)
    for xy, text in labels:
        _label(draw, xy, text, font)
    return picture


# ----------------------------------------------------------------------------------------------------- files
def save_mask_render(
    path: str,
    step: int,
    masks: Mapping[str, Mapping[str, np.ndarray]],
    images: np.ndarray,
    points: Sequence[str],
) -> None:
    """Writes one ``masks.safetensors`` (read back by :func:`load_mask_render`).

    Args:
        path: the file to write.
        step: the optimizer step of the render (metadata ``step``).
        masks: ``{point: {"spatial": (B, M, H, W), "channel": (B, M, C)}}`` (either kind may be absent), stored as
            ``<point>.spatial`` / ``<point>.channel``.
        images: ``(B, H, W, 3)`` uint8, stored as ``images``.
        points: the distillation points with masks (metadata ``points``, a JSON list).
    """
    import safetensors.numpy

    tensors = {
        f"{point}.{kind}": np.ascontiguousarray(array) for point, kinds in masks.items() for kind, array in kinds.items()
    }
    tensors["images"] = np.ascontiguousarray(images)
    metadata = {"step": str(step), "points": json.dumps(list(points)), "format": "np"}
    safetensors.numpy.save_file(tensors, path, metadata=metadata)


def load_mask_render(path: str) -> tuple[int, dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Reads one ``masks.safetensors``: ``(step, {point: {"spatial": (B, M, H, W), "channel": (B, M, C)}},
    images (B, H, W, 3) uint8)``."""
    from safetensors import safe_open

    with safe_open(path, framework="np") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    images = tensors.pop("images")
    masks: dict[str, dict[str, np.ndarray]] = {}
    for key, array in tensors.items():
        point, kind = key.rsplit(".", 1)
        masks.setdefault(point, {})[kind] = array
    return int(metadata.get("step", -1)), masks, images


__all__ = [
    "point_file_name",
    "DEFAULT_IMAGE_MEAN",
    "DEFAULT_IMAGE_STD",
    "HEADER_HEIGHT",
    "MASKS_FILE",
    "MASK_VISUALIZATION_DIR",
    "channel_bar_image",
    "colorize",
    "denormalize_images",
    "load_mask_render",
    "overlay_mask",
    "render_point_masks",
    "save_mask_render",
    "tile_size",
]
