"""Mask visualisation: watch ACAM-KD's spatial and channel masks evolve during training.

:class:`MaskVisualizationCallback` fixes one small evaluation batch when training begins and, at step 0, every
``every_n_steps`` optimizer steps and at the end of training, runs the frozen teacher and the Distiller on it (eval
mode, no grad, RNG untouched) and reads each ACAM-KD point's masks (:meth:`acamkd_hf.distiller.Distiller.masks`).
For every render it writes, on the main process only::

    <output_dir>/mask_visualizations/step-<N>/masks.safetensors   raw masks of every point + the images
    <output_dir>/mask_visualizations/step-<N>/<point>.png         spatial masks over the image, channel masks as bars

adds the PNGs to TensorBoard when the run reports there, and logs per point (through ``trainer.log``, so the values
reach ``trainer.state.log_history`` and every reporting integration)::

    distill/<point>/spatial_mask_change   mean |M^s_now - M^s_previous render| on the fixed batch
    distill/<point>/channel_mask_change   the same for the channel masks
    distill/<point>/mask_change           mean of the two above (of the one present with mask_kinds != both)
    distill/<point>/spatial_mask_dice     mean pairwise Dice between the spatial masks (1: identical, 0: disjoint)
    distill/<point>/channel_mask_dice     the same for the channel masks

(the ``*_change`` keys from the second render on). A mask set that collapses or freezes shows as a change near 0;
one that collapses onto one pattern as a Dice near 1. Spatial masks are drawn on an absolute 0..1 colour scale, so
masks that shrink towards 0 look dark, as they are. ``scripts/plot_mask_evolution.py`` assembles the saved masks into
a "masks over training" figure (the paper's Fig. 1).

The rendering functions need only numpy and PIL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import safetensors.numpy
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from transformers import TrainerCallback
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import logging

from .functional import dice_diversity
from .losses import ACAMKDLoss

logger = logging.get_logger(__name__)

#: folder under ``output_dir`` that holds one ``step-<N>`` folder per render
MASK_VISUALIZATION_DIR = "mask_visualizations"
#: raw masks of one render: ``<point>.spatial`` (B, M, H, W), ``<point>.channel`` (B, M, C), ``images`` (B, H, W, 3)
MASKS_FILE = "masks.safetensors"
#: height in pixels of the title band on top of every rendered PNG
HEADER_HEIGHT = 14
#: ImageNet mean / std: what the project's image processors normalise with, used when the processor does not say
DEFAULT_IMAGE_MEAN = tuple(IMAGENET_DEFAULT_MEAN)
DEFAULT_IMAGE_STD = tuple(IMAGENET_DEFAULT_STD)

# viridis at 0, 1/4, 1/2, 3/4, 1 (RGB); intermediate values are interpolated linearly
_VIRIDIS_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


# ----------------------------------------------------------------------------------------------------- rendering
def denormalize_images(
    pixel_values: Tensor, image_mean: Sequence[float] = DEFAULT_IMAGE_MEAN, image_std: Sequence[float] = DEFAULT_IMAGE_STD
) -> np.ndarray:
    """Normalised model inputs back to displayable images.

    Args:
        pixel_values: ``(B, 3, H, W)``, ``(x / 255 - mean) / std`` as the image processors make them.
        image_mean, image_std: the processor's per-channel mean and std.

    Returns:
        ``(B, H, W, 3)`` uint8.
    """
    values = pixel_values.detach().float().cpu()
    mean = torch.tensor(list(image_mean), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(list(image_std), dtype=torch.float32).view(1, -1, 1, 1)
    images = ((values * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous().numpy()


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


# ----------------------------------------------------------------------------------------------------- numbers
def mask_statistics(
    current: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray] | None
) -> dict[str, float]:
    """The logged numbers of one point.

    Args:
        current: ``{"spatial": (B, M, H, W), "channel": (B, M, C)}`` (either may be absent) of this render.
        previous: the same of the previous render on the same batch, or None for the first render.

    Returns:
        ``{"spatial_mask_change", "channel_mask_change", "mask_change"}`` (mean absolute difference; ``mask_change`` the
        mean over the kinds present; only with ``previous``) and ``{"spatial_mask_dice", "channel_mask_dice"}`` (mean
        pairwise Dice over ordered pairs ``i != j`` and the batch; only with ``M >= 2``).
    """
    stats: dict[str, float] = {}
    changes = []
    for kind in ("spatial", "channel"):
        if kind not in current:
            continue
        masks = current[kind]
        if previous is not None and kind in previous:
            change = float(np.abs(masks.astype(np.float64) - previous[kind].astype(np.float64)).mean())
            stats[f"{kind}_mask_change"] = change
            changes.append(change)
        if masks.shape[1] >= 2:
            flat = torch.from_numpy(np.ascontiguousarray(masks)).double().flatten(2)  # (B, M, L)
            stats[f"{kind}_mask_dice"] = float(dice_diversity(flat))
    if changes:
        stats["mask_change"] = float(np.mean(changes))
    return stats


# ----------------------------------------------------------------------------------------------------- callback
def acamkd_points(distillation_modules: nn.Module | None) -> list[str]:
    """Names of the distillation points whose loss is ACAM-KD (the ones with masks)."""
    points = getattr(distillation_modules, "points", None)
    if points is None:
        return []
    return [name for name, module in points.items() if isinstance(module, ACAMKDLoss)]


def _fork_rng(device: torch.device):
    """``torch.random.fork_rng`` over the CPU generator and the one of ``device`` (if it is an accelerator)."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index
    if index is None:
        index = torch.cuda.current_device() if device.type == "cuda" else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)


class MaskVisualizationCallback(TrainerCallback):
    """Renders and logs ACAM-KD's masks on a fixed batch at step 0, every ``every_n_steps`` steps and at the end.

    What is written and logged: see the module docstring. The batch is the first ``num_images`` examples of the
    trainer's eval dataset (the train dataset when there is none), collated with the trainer's ``data_collator`` and
    fixed when training begins. Each render runs ``trainer.teacher_features`` and the unwrapped Distiller's student +
    distillation modules in eval mode under ``torch.no_grad`` (every module's train/eval flag is restored after), all
    inside ``torch.random.fork_rng``: a run with the callback trains exactly the same weights as one without. Renders happen on the main process only
    (``trainer.is_world_process_zero()``) on the unwrapped module, so no other process waits; FSDP and DeepSpeed
    ZeRO-3 (sharded parameters) are therefore not supported.

    Args:
        trainer: the :class:`~acamkd_hf.trainer.DistillationTrainer`, with method ``acamkd`` (other methods have no
            masks: ``ValueError``).
        every_n_steps: render every this many optimizer steps (> 0).
        num_images: images in the fixed batch.
        max_masks: masks (columns) drawn per point in the PNGs; the saved arrays hold all ``M``.
        tile_height: height in pixels of one tile of the PNGs.
        image_mean, image_std: to de-normalise ``pixel_values``; default: the trainer's ``processing_class``'s
            ``image_mean`` / ``image_std``, else ImageNet's.
        output_dir: where ``mask_visualizations/`` goes; default ``trainer.args.output_dir``.

    Add it with ``trainer.add_callback(MaskVisualizationCallback(trainer, every_n_steps=100))``; it must come after
    the ``TensorBoardCallback`` (``add_callback`` appends, so it does) for its images to reach TensorBoard at step 0.
    """

    def __init__(
        self,
        trainer: Any,
        every_n_steps: int = 100,
        num_images: int = 4,
        *,
        max_masks: int = 8,
        tile_height: int = 96,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        output_dir: str | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if max_masks < 1 or tile_height < 8:
            raise ValueError(f"max_masks must be >= 1 and tile_height >= 8, got {max_masks} and {tile_height}")
        method = getattr(trainer.args, "method", None)
        points = acamkd_points(getattr(trainer, "distillation_modules", None))
        if not points:
            raise ValueError(
                f"mask visualisation shows ACAM-KD's masks, and method {method!r} has none: use method 'acamkd' "
                f"(or leave the callback out)"
            )
        if getattr(trainer, "is_fsdp_enabled", False) or _zero3_enabled():
            raise NotImplementedError(
                "mask visualisation renders on the main process alone, which sharded parameters (FSDP, DeepSpeed "
                "ZeRO-3) do not allow"
            )
        processor = getattr(trainer, "processing_class", None)
        self.trainer = trainer
        self.points = points
        self.every_n_steps = int(every_n_steps)
        self.num_images = int(num_images)
        self.max_masks = int(max_masks)
        self.tile_height = int(tile_height)
        self.image_mean = tuple(image_mean or getattr(processor, "image_mean", None) or DEFAULT_IMAGE_MEAN)
        self.image_std = tuple(image_std or getattr(processor, "image_std", None) or DEFAULT_IMAGE_STD)
        self.output_dir = output_dir
        self._batch: dict[str, Any] | None = None
        self._images: np.ndarray | None = None
        self._previous: dict[str, dict[str, np.ndarray]] | None = None
        self._last_rendered_step: int | None = None

    # -------------------------------------------------------------------------------------------- trainer events
    def on_train_begin(self, args, state, control, **kwargs):
        if not self.trainer.is_world_process_zero():
            return
        self._batch = None  # a new train() call (e.g. a resume) fixes its batch afresh
        self._previous, self._last_rendered_step = None, None
        self.render(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        # control.should_training_stop is already set on the last step (DefaultFlowCallback runs first): rendering
        # the end here, rather than in on_train_end, still reaches TensorBoard, whose writer closes at train end.
        if state.global_step % self.every_n_steps == 0 or control.should_training_stop:
            self._render_once(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self._render_once(state.global_step)

    def _render_once(self, step: int) -> None:
        if self.trainer.is_world_process_zero() and step != self._last_rendered_step:
            self.render(step)

    # -------------------------------------------------------------------------------------------- the work
    @property
    def visualization_dir(self) -> str:
        return os.path.join(self.output_dir or self.trainer.args.output_dir, MASK_VISUALIZATION_DIR)

    def _fixed_batch(self) -> dict[str, Any]:
        dataset = self.trainer.eval_dataset
        if isinstance(dataset, Mapping):  # several eval sets: the first
            dataset = next(iter(dataset.values()), None)
        if dataset is None:
            dataset = self.trainer.train_dataset
        if dataset is None or len(dataset) == 0:
            raise ValueError("mask visualisation needs an eval or train dataset to take its fixed batch from")
        examples = [dataset[index] for index in range(min(self.num_images, len(dataset)))]
        return self.trainer.data_collator(examples)

    @torch.no_grad()
    def compute_masks(self) -> dict[str, dict[str, Tensor]]:
        """Runs the teacher and the student on the fixed batch; ``{point: {"spatial": (B, M, H, W), "channel":
        (B, M, C)}}`` (float32, CPU), from :meth:`~acamkd_hf.distiller.Distiller.masks`. RNG and train/eval flags are
        left as they were."""
        from accelerate.utils import send_to_device

        trainer = self.trainer
        device = trainer.args.device
        distiller = trainer.accelerator.unwrap_model(trainer.model)
        modes = [(module, module.training) for module in distiller.modules()]
        with _fork_rng(device):
            try:
                if self._batch is None:
                    self._batch = self._fixed_batch()
                    self._images = denormalize_images(self._batch["pixel_values"], self.image_mean, self.image_std)
                batch = send_to_device(self._batch, device)
                pixel_values, pixel_mask = batch["pixel_values"], batch.get("pixel_mask")
                distiller.eval()
                with torch.no_grad(), trainer.accelerator.autocast():
                    teacher_features = trainer.teacher_features(pixel_values, pixel_mask)
                    masks = distiller.masks(pixel_values, teacher_features, pixel_mask)
            finally:
                for module, training in modes:
                    module.training = training
        return {
            point: {kind: tensor.detach().float().cpu() for kind, tensor in kinds.items()}
            for point, kinds in masks.items()
            if point in self.points
        }

    def render(self, step: int) -> dict[str, float]:
        """One render at ``step``: files, TensorBoard images, logged numbers (returned, keys as logged)."""
        masks = self.compute_masks()
        arrays = {point: {kind: tensor.numpy() for kind, tensor in kinds.items()} for point, kinds in masks.items()}
        folder = os.path.join(self.visualization_dir, f"step-{step}")
        os.makedirs(folder, exist_ok=True)
        tensors = {f"{point}.{kind}": np.ascontiguousarray(array) for point, kinds in arrays.items() for kind, array in kinds.items()}
        tensors["images"] = np.ascontiguousarray(self._images)
        metadata = {"step": str(step), "points": json.dumps(self.points), "format": "np"}
        safetensors.numpy.save_file(tensors, os.path.join(folder, MASKS_FILE), metadata=metadata)

        writer = self._tensorboard_writer()
        logs: dict[str, float] = {}
        for point, kinds in arrays.items():
            picture = render_point_masks(
                self._images,
                kinds.get("spatial"),
                kinds.get("channel"),
                max_masks=self.max_masks,
                tile_height=self.tile_height,
                title=f"step {step}",
            )
            picture.save(os.path.join(folder, f"{point}.png"))
            if writer is not None:
                writer.add_image(f"{MASK_VISUALIZATION_DIR}/{point}", np.asarray(picture), step, dataformats="HWC")
            previous = self._previous.get(point) if self._previous is not None else None
            for name, value in mask_statistics(kinds, previous).items():
                logs[f"distill/{point}/{name}"] = value
        if writer is not None:
            writer.flush()
        self._previous = arrays
        self._last_rendered_step = step
        if logs:
            # Trainer.log goes through CallbackHandler.on_log, which clears control.should_log: without the restore,
            # a render in on_step_end would swallow the trainer's own training log of that step.
            control = self.trainer.control
            should_log = control.should_log
            self.trainer.log(dict(logs))
            control.should_log = should_log
        return logs

    def _tensorboard_writer(self):
        """The ``SummaryWriter`` of the trainer's ``TensorBoardCallback``, or None (not reporting there / closed)."""
        try:
            from transformers.integrations import TensorBoardCallback
        except ImportError:  # pragma: no cover - transformers always has it
            return None
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback):
                return getattr(callback, "tb_writer", None)
        return None


def _zero3_enabled() -> bool:
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return False
    return bool(is_deepspeed_zero3_enabled())


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
    "HEADER_HEIGHT",
    "MASKS_FILE",
    "MASK_VISUALIZATION_DIR",
    "MaskVisualizationCallback",
    "acamkd_points",
    "channel_bar_image",
    "colorize",
    "denormalize_images",
    "load_mask_render",
    "mask_statistics",
    "overlay_mask",
    "render_point_masks",
    "tile_size",
]
