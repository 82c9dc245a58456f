"""The losses of ``--method``: one per-point loss class per method (:data:`DISTILLATION_LOSSES`), and the container
that sums them over the distillation points (:class:`MultiPointDistillationLoss`)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from .acamkd_loss import ACAMKDLoss
from .baseline_losses import CWDLoss, FeatureMSELoss, MGDLoss, PKDLoss
from .point_loss import PointDistillationLoss
from .taps import point_key

#: The CLI's ``--method`` names (``none`` = the student trained alone, no module).
DISTILLATION_LOSSES: dict[str, type[PointDistillationLoss]] = {
    "acamkd": ACAMKDLoss,
    "mse": FeatureMSELoss,
    "mgd": MGDLoss,
    "cwd": CWDLoss,
    "pkd": PKDLoss,
}


class MultiPointDistillationLoss(nn.Module):
    """One per-point loss module per distillation point (e.g. per FPN level); the total is their sum.

    Args:
        point_losses: ``{point name: per-point loss module}``; a ``module:`` point's dots become ``/`` in the
            ``nn.ModuleDict`` key (:func:`acamkd_hf.taps.point_key`); ``point_names`` keeps the names.

    Forward takes ``{point: student feature}`` and ``{point: teacher feature}`` and returns
    ``{"loss": sum over points, "<point>/<term>": each unweighted term, "<point>/loss": each point's total}``.
    """

    def __init__(self, point_losses: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not point_losses:
            raise ValueError("at least one distillation point is needed")
        if any(not name for name in point_losses):
            raise ValueError(f"distillation point names may not be empty: {list(point_losses)}")
        self.point_names: list[str] = list(point_losses)
        self.points = nn.ModuleDict({point_key(name): loss for name, loss in point_losses.items()})

    def forward(self, student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        missing = [
            f"{name} ({side})"
            for name in self.point_names
            for side, features in (("student", student_features), ("teacher", teacher_features))
            if name not in features
        ]
        if missing:
            raise KeyError(f"features missing for distillation points: {', '.join(missing)}")
        terms: dict[str, Tensor] = {}
        total = None
        for name, point_loss in self.named_point_losses():
            point_terms = point_loss(student_features[name], teacher_features[name])
            total = point_terms["loss"] if total is None else total + point_terms["loss"]
            terms.update({f"{name}/{term}": value for term, value in point_terms.items()})
        return {"loss": total, **terms}

    def named_point_losses(self) -> list[tuple[str, nn.Module]]:
        """``[(point name, its loss module)]`` in the order given."""
        return list(zip(self.point_names, self.points.values()))

    def set_optimizer_step(self, step: int) -> None:
        """Set the clock of every point's adversarial ramp (``mask_steps``) to ``step`` optimizer updates, so that
        the micro-batches of one accumulated update see the same reversal strength (1 x 8 equals 8 x 1)."""
        for point_loss in self.points.values():
            if hasattr(point_loss, "mask_steps"):
                point_loss.mask_steps.fill_(step)


__all__ = ["DISTILLATION_LOSSES", "MultiPointDistillationLoss"]
