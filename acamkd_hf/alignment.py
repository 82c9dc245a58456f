"""``f_align``: the student-to-teacher adapter that every per-point loss uses.

``F_S' = f_align(F_S)``: bilinear resize to the teacher's ``H x W`` when the sizes differ, then a 1x1 convolution
to the teacher's channel count. It is a training-only module: it is never part of the saved student.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

ALIGNMENT_KINDS = ("conv1x1", "identity")


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
        if kind not in ALIGNMENT_KINDS:
            raise ValueError(f"unknown alignment kind {kind!r}; choose one of {', '.join(ALIGNMENT_KINDS)}")
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
