"""``f_align``: the student-to-teacher adapter that every per-point loss uses.

``F_S' = f_align(F_S)``: bilinear resize to the teacher's ``H x W`` when the sizes differ, then a 1x1 convolution
to the teacher's channel count. It is a training-only module: it is never part of the saved student.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .choices import require_choice

ALIGNMENT_KINDS = ("conv1x1", "identity")
#: How much the height and width scale factors of the resize may differ (odd sizes from padding differ a little).
MAX_ASPECT_DISTORTION = 0.25


def check_alignable(point: str, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], kind: str = "conv1x1") -> None:
    """Raises ``ValueError`` when ``f_align`` cannot map the student's feature at ``point`` onto the teacher's.

    ``student_shape`` / ``teacher_shape`` are ``(C, H, W)`` from the dry run. Refused: a feature that is not a map
    (token sequences), ``identity`` with different channel counts, and strides that differ between the two axes
    (the resize would stretch the student's map: e.g. a student at stride 8x16 against a teacher at 8x8).
    """
    for side, shape in (("student", student_shape), ("teacher", teacher_shape)):
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"distillation point {point!r}: the {side}'s feature has shape (B, {', '.join(map(str, shape))}), not a "
                f"(B, C, H, W) map; choose a point that is a feature map (logits, stage*, neck*)."
            )
    (student_channels, student_height, student_width), (teacher_channels, teacher_height, teacher_width) = (
        student_shape,
        teacher_shape,
    )
    if kind == "identity" and student_channels != teacher_channels:
        raise ValueError(
            f"distillation point {point!r}: --alignment identity needs equal channels, but the student has "
            f"{student_channels} and the teacher {teacher_channels}; use --alignment conv1x1."
        )
    scale_height, scale_width = teacher_height / student_height, teacher_width / student_width
    if abs(scale_height - scale_width) > MAX_ASPECT_DISTORTION * max(scale_height, scale_width):
        raise ValueError(
            f"distillation point {point!r}: the student's {student_height}x{student_width} map and the teacher's "
            f"{teacher_height}x{teacher_width} map have different strides along height and width (scale "
            f"x{scale_height:.2f} vs x{scale_width:.2f}), so resizing one onto the other would distort it. Distil at "
            f"a point where both models have the same stride ratio in both directions."
        )


class StudentAligner(nn.Module):
    """Maps a student feature ``(B, C_s, H_s, W_s)`` to the teacher's ``(B, C_t, H_t, W_t)``.

    Args:
        student_channels: ``C_s``.
        teacher_channels: ``C_t``.
        kind: ``"conv1x1"`` (the paper's adapter, the default) or ``"identity"`` (no parameters: only when
            ``C_s == C_t``, e.g. logits of the same label set, where a learnable adapter could absorb part of the
            imitation that should reach the student).
    """

    def __init__(self, student_channels: int, teacher_channels: int, kind: str = "conv1x1") -> None:
        super().__init__()
        require_choice("alignment", kind, ALIGNMENT_KINDS)
        if kind == "identity" and student_channels != teacher_channels:
            raise ValueError(
                f"alignment 'identity' needs equal channels, but the student has {student_channels} and the teacher "
                f"{teacher_channels}; use alignment 'conv1x1'"
            )
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1) if kind == "conv1x1" else None

    def forward(self, student: Tensor, teacher_size: tuple[int, int]) -> Tensor:
        """``(B, C_s, H_s, W_s)`` -> ``(B, C_t, *teacher_size)``."""
        if student.shape[1] != self.student_channels:
            raise ValueError(
                f"the aligner was built for {self.student_channels} student channels, got {student.shape[1]}"
            )
        if tuple(student.shape[-2:]) != tuple(teacher_size):
            student = F.interpolate(student, size=teacher_size, mode="bilinear", align_corners=False)
        return student if self.proj is None else self.proj(student)
