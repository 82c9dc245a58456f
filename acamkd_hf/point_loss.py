"""The interface every per-point distillation loss shares, and what the losses compute in float32.

Every per-point loss is an ``nn.Module`` built by ``from_settings(student_channels, teacher_channels, settings)``
(:class:`~acamkd_hf.settings.DistillationSettings`, resolved) or from explicit keywords, whose
``forward(student, teacher)`` takes the raw student feature ``(B, C_s, H_s, W_s)`` and the teacher feature
``(B, C_t, H_t, W_t)`` and returns a dict of scalars: ``"loss"`` is the weighted total of that point, every other key
is one unweighted term (so the trainer can log each). Each owns its own adapter
:class:`~acamkd_hf.alignment.StudentAligner`.

Mixed precision (``--bf16`` / ``--fp16``): the adapter, the fusion attention and MGD's generator run in the autocast
compute dtype; the selection units, the masks and every loss run in float32 with autocast off (masked sums over
``HW`` positions lose too much in bf16/fp16, and autocast would otherwise cast their einsums back down).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import functional as KD
from .settings import DistillationSettings


class PointDistillationLoss(nn.Module):
    """The interface every per-point loss shares: ``SETTINGS`` maps each constructor keyword to the
    :class:`~acamkd_hf.settings.DistillationSettings` field it comes from (the settings this loss reads: what the run
    record and the model card list for it), and :meth:`from_settings` builds the loss from resolved settings."""

    SETTINGS: dict[str, str] = {}

    @classmethod
    def from_settings(cls, student_channels: int, teacher_channels: int, settings: DistillationSettings):
        """The loss for resolved ``settings`` (see :meth:`DistillationSettings.resolved`)."""
        return cls(student_channels, teacher_channels, **{kw: getattr(settings, name) for kw, name in cls.SETTINGS.items()})


def float32_region(like: Tensor) -> torch.autocast:
    """Autocast off on ``like``'s device: what runs inside keeps the float32 it is given."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def imitated_pair(teacher: Tensor, aligned: Tensor, standardize: bool, over: str = "batch") -> tuple[Tensor, Tensor]:
    """``(F_T, F_S')`` in float32 as the imitation compares them: raw, or each standardised per channel (statistics
    ``over`` the batch or each image, :data:`~acamkd_hf.functional.STANDARDIZE_OVER`)."""
    teacher32, aligned32 = teacher.float(), aligned.float()
    if standardize:
        return KD.channel_standardize(teacher32, over=over), KD.channel_standardize(aligned32, over=over)
    return teacher32, aligned32


__all__ = ["PointDistillationLoss", "float32_region", "imitated_pair"]
