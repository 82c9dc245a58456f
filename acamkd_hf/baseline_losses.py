"""The baselines ACAM-KD is measured against, each at one distillation point with the same interface: FitNet-style
MSE, PKD, MGD and CWD (:class:`~acamkd_hf.point_loss.PointDistillationLoss`)."""

from __future__ import annotations

from torch import Tensor, nn

from . import functional as KD
from .alignment import StudentAligner
from .choices import require_choice
from .point_loss import PointDistillationLoss, float32_region, imitated_pair
from .settings import check_mgd_mask_ratio, method_defaults

#: what ``--method <name>`` uses when no flag is given: the constructors' defaults below (one home: the settings)
_MSE, _PKD, _MGD, _CWD = (method_defaults(name) for name in ("mse", "pkd", "mgd", "cwd"))


class FeatureMSELoss(PointDistillationLoss):
    """FitNet-style baseline (the paper's "no mask" row): ``weight * mean((F_T - f_align(F_S))^2)``; with
    ``standardize``, of the per-channel standardised features (statistics over ``standardize_over``: the batch, then
    twice PKD's loss, or each image).

    Forward returns ``{"loss", "mse"}``.
    """

    SETTINGS = {"weight": "alpha", "alignment": "alignment", "standardize": "imitation_standardize",
                "standardize_over": "standardize_over"}

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        *,
        weight: float = _MSE.alpha,
        alignment: str = _MSE.alignment,
        standardize: bool = _MSE.imitation_standardize,
        standardize_over: str = _MSE.standardize_over,
    ) -> None:
        super().__init__()
        require_choice("standardize_over", standardize_over, KD.STANDARDIZE_OVER)
        self.weight = weight
        self.standardize = standardize
        self.standardize_over = standardize_over
        self.align = StudentAligner(student_channels, teacher_channels, alignment)

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        teacher = teacher.detach()  # the teacher is frozen, whatever graph its feature came from
        aligned = self.align(student, teacher.shape[-2:])
        with float32_region(aligned):
            mse = KD.feature_mse(*imitated_pair(teacher, aligned, self.standardize, self.standardize_over))
        return {"loss": self.weight * mse, "mse": mse}

class PKDLoss(PointDistillationLoss):
    """PKD baseline (Cao et al., NeurIPS 2022; mmrazor's ``PKDLoss``): ``weight * mean((F_hat_T - F_hat_S')^2) / 2``
    with both features standardised per channel over batch and positions (``1 - Pearson r``): scale-free imitation.
    The default weight is mmrazor's published one per FPN level (:data:`~acamkd_hf.settings.DEFAULT_ALPHA`).

    Forward returns ``{"loss", "pkd"}``.
    """

    SETTINGS = {"weight": "alpha", "alignment": "alignment"}

    def __init__(
        self, student_channels: int, teacher_channels: int, *, weight: float = _PKD.alpha, alignment: str = _PKD.alignment
    ) -> None:
        super().__init__()
        self.weight = weight
        self.align = StudentAligner(student_channels, teacher_channels, alignment)

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        teacher = teacher.detach()  # the teacher is frozen, whatever graph its feature came from
        aligned = self.align(student, teacher.shape[-2:])
        with float32_region(aligned):
            pkd = KD.pearson_distillation(teacher.float(), aligned.float())
        return {"loss": self.weight * pkd, "pkd": pkd}

class MGDLoss(PointDistillationLoss):
    """MGD baseline (Yang et al., 2022): mask the aligned student at random, regenerate the teacher feature.

    ``weight * sum((G(M (.) f_align(F_S)) - F_T)^2) / B`` with ``G`` = conv3x3 -> ReLU -> conv3x3 and ``M`` dropping
    each position with probability ``mask_ratio``. Defaults are MGD's detection ones (``alpha_mgd``, ``lambda_mgd``:
    the settings' ``alpha`` and ``mgd_mask_ratio``). The random mask draws from torch's global RNG, which the
    Trainer checkpoints, so resume is exact.

    Forward returns ``{"loss", "mgd"}``.
    """

    SETTINGS = {"weight": "alpha", "mask_ratio": "mgd_mask_ratio", "alignment": "alignment"}

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        *,
        weight: float = _MGD.alpha,
        mask_ratio: float = _MGD.mgd_mask_ratio,
        alignment: str = _MGD.alignment,
    ) -> None:
        super().__init__()
        check_mgd_mask_ratio(mask_ratio)
        self.weight = weight
        self.mask_ratio = mask_ratio
        self.align = StudentAligner(student_channels, teacher_channels, alignment)
        self.generator = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
        )

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        teacher = teacher.detach()  # the teacher is frozen, whatever graph its feature came from
        aligned = self.align(student, teacher.shape[-2:])
        batch, _, height, width = aligned.shape
        mask = KD.mgd_random_mask(batch, height, width, self.mask_ratio, device=aligned.device, dtype=aligned.dtype)
        generated = self.generator(aligned * mask)
        with float32_region(generated):
            mgd = KD.masked_generative_loss(teacher.float(), generated.float())
        return {"loss": self.weight * mgd, "mgd": mgd}

class CWDLoss(PointDistillationLoss):
    """CWD baseline (Shu et al., 2021): ``weight * tau^2 KL(softmax_HW(F_T / tau) || softmax_HW(F_S' / tau))``.

    Forward returns ``{"loss", "cwd"}``.
    """

    SETTINGS = {"weight": "alpha", "tau": "cwd_tau", "alignment": "alignment"}

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        *,
        weight: float = _CWD.alpha,
        tau: float = _CWD.cwd_tau,
        alignment: str = _CWD.alignment,
    ) -> None:
        super().__init__()
        self.weight = weight
        self.tau = tau
        self.align = StudentAligner(student_channels, teacher_channels, alignment)

    def forward(self, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
        teacher = teacher.detach()  # the teacher is frozen, whatever graph its feature came from
        aligned = self.align(student, teacher.shape[-2:])
        with float32_region(aligned):
            cwd = KD.channel_wise_distillation(teacher.float(), aligned.float(), self.tau)
        return {"loss": self.weight * cwd, "cwd": cwd}


__all__ = ["CWDLoss", "FeatureMSELoss", "MGDLoss", "PKDLoss"]
