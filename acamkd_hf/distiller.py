"""The one ``nn.Module`` the optimizer, DDP and checkpoints see: the student plus its distillation modules.

The teacher stays outside (frozen, never saved, never wrapped by DDP): the trainer runs it under ``no_grad`` and
passes its features in, so one training step is a single forward of this module::

    teacher features (no grad, eval) --------------------------.
    Distiller(pixel_values, labels, teacher_features)          |
      student forward (taps record the student's features)    |
      MultiPointDistillationLoss(student feats, teacher feats) <'
      -> DistillerOutput(loss = task + distillation, logits, distillation_terms)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from transformers.utils import ModelOutput

from .alignment import check_alignable
from .losses import DISTILLATION_LOSSES, MultiPointDistillationLoss
from .settings import DistillationSettings
from .taps import FeatureTaps


@dataclass
class DistillerOutput(ModelOutput):
    """``loss`` = task loss + distillation loss; ``logits`` (and, for detectors, ``pred_boxes``) the student's: what
    the evaluation metrics read; ``distillation_terms`` every term by name (``task``, ``distillation``,
    ``<point>/<term>``; unweighted per term), present only in distillation steps. Fields left ``None`` drop out of
    the tuple the Trainer hands to ``compute_metrics``."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    pred_boxes: Tensor | None = None
    distillation_terms: dict[str, Tensor] | None = None


class Distiller(nn.Module):
    """Student + per-point distillation losses.

    Args:
        student: the model being trained (a ``PreTrainedModel``; it is what gets saved).
        distillation_loss: one loss module per point, or ``None`` for plain training (method ``none``).
    """

    def __init__(self, student: nn.Module, distillation_loss: MultiPointDistillationLoss | None) -> None:
        super().__init__()
        self.student = student
        self.distillation_loss = distillation_loss
        points = distillation_loss.point_names if distillation_loss is not None else []
        self.student_taps = FeatureTaps(student, points) if points else None

    def _student_forward(self, pixel_values: Tensor, labels, pixel_mask: Tensor | None):
        inputs = {"pixel_values": pixel_values, "labels": labels}
        if pixel_mask is not None:
            inputs["pixel_mask"] = pixel_mask
        outputs = self.student(**inputs)
        return outputs, self.student_taps.collect(outputs) if self.student_taps is not None else {}

    def masks(
        self, pixel_values: Tensor, teacher_features: Mapping[str, Tensor], pixel_mask: Tensor | None = None
    ) -> dict[str, dict[str, Tensor]]:
        """The masks of a batch at every point whose loss has masks (ACAM-KD): ``{point: {"spatial": (B, M, H, W),
        "channel": (B, M, C)}}``, from one student forward; no loss is computed. Train/eval mode as it is."""
        _, student_features = self._student_forward(pixel_values, None, pixel_mask)
        return {
            point: loss.masks(student_features[point], teacher_features[point])
            for point, loss in self.distillation_loss.named_point_losses()
            if hasattr(loss, "masks")
        }

    def forward(
        self,
        pixel_values: Tensor,
        labels: Tensor | list[dict[str, Tensor]] | None = None,
        pixel_mask: Tensor | None = None,
        teacher_features: Mapping[str, Tensor] | None = None,
    ) -> DistillerOutput:
        """``pixel_values`` ``(B, 3, H, W)``; ``labels`` as the student expects them (a ``(B, H, W)`` map for
        segmentation, a list of per-image dicts for detection); ``pixel_mask`` ``(B, H, W)`` for detectors that take
        one; ``teacher_features`` ``{point: (B, C_t, H_t, W_t)}`` in training steps, ``None`` for evaluation."""
        outputs, student_features = self._student_forward(pixel_values, labels, pixel_mask)
        predictions = {"logits": outputs.logits, "pred_boxes": getattr(outputs, "pred_boxes", None)}
        if teacher_features is None or self.distillation_loss is None:
            return DistillerOutput(loss=outputs.loss, **predictions)
        distillation = self.distillation_loss(student_features, teacher_features)
        terms = {"task": outputs.loss.detach(), "distillation": distillation["loss"].detach()}
        terms.update({name: value.detach() for name, value in distillation.items() if name != "loss"})
        return DistillerOutput(loss=outputs.loss + distillation["loss"], distillation_terms=terms, **predictions)


def build_distillation_loss(
    settings: DistillationSettings,
    student_shapes: Mapping[str, Sequence[int]],
    teacher_shapes: Mapping[str, Sequence[int]],
) -> MultiPointDistillationLoss | None:
    """One loss module per point of the resolved ``settings`` (:meth:`DistillationSettings.resolved`), each sized
    from the dry-run ``(C, H, W)`` shapes; ``None`` for method ``none``.

    The student's maps may be smaller than the teacher's (the adapter resizes them); channel counts may differ
    (the adapter projects them), unless ``alignment='identity'``.
    """
    if not settings.distilling:
        return None
    points = settings.distillation_points
    if not points:
        raise ValueError(f"method {settings.method!r} needs at least one distillation point")
    if settings.alpha is None or settings.num_masks is None:
        raise ValueError("build the losses from resolved settings: settings.resolved(points, num_masks)")
    if settings.method == "acamkd" and settings.mask_objective == "task" and points != ["logits"]:
        raise ValueError(
            f"--mask_objective task trains the masks on the teacher's own prediction from its masked class scores: "
            f"it needs --distillation_points logits, got {' '.join(points)}; use adversarial or predictive at features"
        )
    for point in points:
        check_alignable(point, tuple(student_shapes[point]), tuple(teacher_shapes[point]), settings.alignment)
    loss_class = DISTILLATION_LOSSES[settings.method]
    return MultiPointDistillationLoss(
        {
            point: loss_class.from_settings(int(student_shapes[point][0]), int(teacher_shapes[point][0]), settings)
            for point in points
        }
    )


#: what every run records of its settings, whatever the method (the rest: what its loss reads, ``SETTINGS``)
COMMON_RECORDED_SETTINGS = ("method", "distillation_points", "inherit_from_teacher")


def recorded_settings(settings: DistillationSettings) -> dict[str, Any]:
    """The settings a run records and its model card lists: the common ones, the ACAM-KD variant for ``acamkd``,
    and those its loss reads (``DISTILLATION_LOSSES[method].SETTINGS``); an MSE run lists no mask normaliser."""
    read = set(COMMON_RECORDED_SETTINGS) | ({"acamkd_variant"} if settings.method == "acamkd" else set())
    if settings.distilling:
        read |= set(DISTILLATION_LOSSES[settings.method].SETTINGS.values())
    return {name: value for name, value in settings.to_dict().items() if name in read}


__all__ = ["Distiller", "DistillerOutput", "build_distillation_loss", "recorded_settings"]

