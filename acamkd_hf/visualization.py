"""Mask visualisation: watch ACAM-KD's spatial and channel masks evolve during training.

:class:`MaskVisualizationCallback` fixes one small evaluation batch when training begins and, at step 0, every
``every_n_steps`` optimizer steps and at the end of training, runs the frozen teacher and the Distiller on it (eval
mode, no grad, RNG untouched) and reads each ACAM-KD point's masks (:meth:`acamkd_hf.distiller.Distiller.masks`).
For every render it writes, on the main process only::

    <output_dir>/mask_visualizations/step-<N>/masks.safetensors   raw masks of every point + the images
    <output_dir>/mask_visualizations/step-<N>/<point>.png         spatial masks over the image, channel masks as bars
                                                                  (a module: point's ":[]" written as "_")

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

Drawing the PNGs and the ``masks.safetensors`` format live in :mod:`acamkd_hf.mask_rendering` (numpy and PIL only);
this module is the torch / Trainer side: the callback, the masks of the fixed batch, the logged numbers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import TrainerCallback
from transformers.utils import logging

from .acamkd_loss import ACAMKDLoss
from .functional import dice_diversity
from .mask_rendering import (
    DEFAULT_IMAGE_MEAN,
    DEFAULT_IMAGE_STD,
    MASK_VISUALIZATION_DIR,
    MASKS_FILE,
    denormalize_images,
    point_file_name,
    render_point_masks,
    save_mask_render,
)
from .seeding import fork_rng_on

logger = logging.get_logger(__name__)


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
    """Names of the distillation points whose loss is ACAM-KD (the ones with masks): the point names themselves, not
    their ``nn.ModuleDict`` keys (a ``module:`` point's dots are ``/`` there)."""
    if distillation_modules is None or not hasattr(distillation_modules, "named_point_losses"):
        return []
    return [name for name, module in distillation_modules.named_point_losses() if isinstance(module, ACAMKDLoss)]


class MaskVisualizationCallback(TrainerCallback):
    """Renders and logs ACAM-KD's masks on a fixed batch at step 0, every ``every_n_steps`` steps and at the end.

    What is written and logged: see the module docstring. The batch is the first ``num_images`` examples of the
    trainer's eval dataset (the train dataset when there is none), collated with the trainer's ``data_collator`` and
    fixed when training begins. Each render runs ``trainer.teacher_features`` and the unwrapped Distiller's student
    + distillation modules in eval mode under ``torch.no_grad`` (every module's train/eval flag is restored after),
    all inside ``torch.random.fork_rng``: a run with the callback trains exactly the same weights as one without.
    Renders happen on the main process only (``trainer.is_world_process_zero()``) on the unwrapped module, so no
    other process waits; FSDP and DeepSpeed ZeRO-3 (sharded parameters) are therefore not supported.

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
        with fork_rng_on(device):
            try:
                if self._batch is None:
                    self._batch = self._fixed_batch()
                    normalized = self._batch["pixel_values"].detach().float().cpu().numpy()  # (B, 3, H, W)
                    self._images = denormalize_images(normalized, self.image_mean, self.image_std)
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
        save_mask_render(os.path.join(folder, MASKS_FILE), step, arrays, self._images, self.points)

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
            picture.save(os.path.join(folder, f"{point_file_name(point)}.png"))
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


__all__ = [
    "MaskVisualizationCallback",
    "acamkd_points",
    "mask_statistics",
]
