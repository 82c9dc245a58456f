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

from torch import Tensor, nn
from transformers.utils import ModelOutput

from .alignment import check_alignable
from .losses import DISTILLATION_LOSSES, MultiPointDistillationLoss
from .taps import FeatureTaps

#: ``--method`` values: the per-point losses plus ``none`` (the student trained alone, same script and recipe).
METHODS = (*DISTILLATION_LOSSES, "none")
#: Each method's published imitation weight, used when ``alpha`` is not given (MGD: alpha_mgd for detection).
DEFAULT_ALPHA = {"acamkd": 1.0, "mse": 1.0, "cwd": 1.0, "mgd": 2e-5}


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
        inputs = {"pixel_values": pixel_values, "labels": labels}
        if pixel_mask is not None:
            inputs["pixel_mask"] = pixel_mask
        outputs = self.student(**inputs)
        student_features = self.student_taps.collect(outputs) if self.student_taps is not None else {}
        predictions = {"logits": outputs.logits, "pred_boxes": getattr(outputs, "pred_boxes", None)}
        if teacher_features is None or self.distillation_loss is None:
            return DistillerOutput(loss=outputs.loss, **predictions)
        distillation = self.distillation_loss(student_features, teacher_features)
        terms = {"task": outputs.loss.detach(), "distillation": distillation["loss"].detach()}
        terms.update({name: value.detach() for name, value in distillation.items() if name != "loss"})
        return DistillerOutput(loss=outputs.loss + distillation["loss"], distillation_terms=terms, **predictions)


def build_point_loss(
    method: str,
    student_channels: int,
    teacher_channels: int,
    *,
    alpha: float | None = None,
    lambda_div: float = 1.0,
    num_masks: int = 6,
    eps: float = 1e-6,
    fusion_mode: str = "teacher_query",
    mask_kinds: str = "both",
    detach_student_in_fusion: bool = True,
    alignment: str = "conv1x1",
    detach_masks_in_imitation: bool = False,
    mask_normalizer: str = "sum",
    cwd_tau: float = 1.0,
    mgd_mask_ratio: float = 0.65,
) -> nn.Module:
    """One per-point loss for ``--method``. ``alpha`` is the imitation weight of every method; ``None`` takes the
    method's published default (:data:`DEFAULT_ALPHA`)."""
    if method not in DISTILLATION_LOSSES:
        raise ValueError(f"unknown distillation method {method!r}; choose one of {', '.join(METHODS)}")
    weight = DEFAULT_ALPHA[method] if alpha is None else alpha
    loss_class = DISTILLATION_LOSSES[method]
    if method == "acamkd":
        return loss_class(
            student_channels,
            teacher_channels,
            num_masks=num_masks,
            alpha=weight,
            lambda_div=lambda_div,
            eps=eps,
            fusion_mode=fusion_mode,
            mask_kinds=mask_kinds,
            detach_student_in_fusion=detach_student_in_fusion,
            alignment=alignment,
            detach_masks_in_imitation=detach_masks_in_imitation,
            mask_normalizer=mask_normalizer,
        )
    if method == "cwd":
        return loss_class(student_channels, teacher_channels, weight=weight, tau=cwd_tau, alignment=alignment)
    if method == "mgd":
        return loss_class(student_channels, teacher_channels, weight=weight, mask_ratio=mgd_mask_ratio, alignment=alignment)
    return loss_class(student_channels, teacher_channels, weight=weight, alignment=alignment)


def build_distillation_loss(
    method: str,
    points: Sequence[str],
    student_shapes: Mapping[str, Sequence[int]],
    teacher_shapes: Mapping[str, Sequence[int]],
    **settings,
) -> MultiPointDistillationLoss | None:
    """One loss module per point, each sized from the dry-run ``(C, H, W)`` shapes; ``None`` for method ``none``.

    The student's maps may be smaller than the teacher's (the adapter resizes them); channel counts may differ
    (the adapter projects them), unless ``alignment='identity'``.
    """
    if method == "none":
        return None
    if method not in DISTILLATION_LOSSES:
        raise ValueError(f"unknown distillation method {method!r}; choose one of {', '.join(METHODS)}")
    if not points:
        raise ValueError(f"method {method!r} needs at least one distillation point")
    for point in points:
        check_alignable(point, tuple(student_shapes[point]), tuple(teacher_shapes[point]), settings.get("alignment", "conv1x1"))
    return MultiPointDistillationLoss(
        {
            point: build_point_loss(method, int(student_shapes[point][0]), int(teacher_shapes[point][0]), **settings)
            for point in points
        }
    )


__all__ = ["Distiller", "DistillerOutput", "METHODS", "DEFAULT_ALPHA", "build_point_loss", "build_distillation_loss"]

