"""ASCM: adaptive spatial-channel masking (paper Sec. 3.3).

Learnable selection units turn the fused feature into ``M`` channel masks and ``M`` spatial masks. Two forms:

* the paper's (``--mask_objective imitation``, the ``paper`` variant): ``M^c = sigma(m_c v^T)`` (``v`` the globally
  pooled fused feature) and ``M^s = sigma(m_s z)`` (``z`` the fused feature as ``C x HW``), or a softmax across
  the ``M`` masks with ``--mask_activation softmax``. ``m_c`` and ``m_s`` start from normal(0, 0.01), so every
  sigmoid mask starts near 0.5 everywhere (a softmax mask near ``1/M``).
* **budgeted** masks, for the learned mask objectives (:mod:`acamkd_hf.mask_objectives`), the default through the
  recommended variant's ``adversarial`` objective: each mask is ``L softmax(scores / T)`` over its ``L`` positions
  or channels (mean 1: it can concentrate, never shrink), and the channel scores get per-channel capacity
  (``a (.) v + b``, see :class:`AdaptiveSpatialChannelMasking`).

The ``uniform`` objective (the control) has no selection units at all.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .choices import require_choice
from .functional import MASK_ACTIVATIONS, activate_masks
from .fusion import FactoredFusion
from .mask_objectives import budget_masks

#: Paper Table 8: spatial masks only, channel masks only, or both (the default).
MASK_KINDS = ("both", "spatial", "channel")


class AdaptiveSpatialChannelMasking(nn.Module):
    """Selection units for ``M`` spatial and/or ``M`` channel masks.

    Args:
        channels: ``C`` of the fused feature.
        num_masks: ``M`` (6 for detection, the number of classes for segmentation in the paper).
        kinds: one of :data:`MASK_KINDS`; a disabled kind has no parameters and yields ``None``.
        init_std: standard deviation of the normal initialisation of ``m_c`` and ``m_s``.
        activation: ``"sigmoid"`` (the paper's) or ``"softmax"`` across the masks (a partition that cannot
            collapse), see :data:`acamkd_hf.functional.MASK_ACTIVATIONS`. Not read when ``budgeted``.
        budgeted: the masks of the learned mask objectives (:mod:`acamkd_hf.mask_objectives`): each mask is
            ``L softmax_l(scores)`` over its ``L`` positions / channels (weights summing to ``L``: it can
            concentrate, never shrink), and the channel scores get per-channel capacity:
            ``u_{m,k} = a_{m,k} v_k + b_{m,k}`` (``a``, ``b`` ``(M, C)``; ``b`` starts at 0, so every mask starts
            near uniform). The paper's ``m_c[m] v_k`` is one scalar per mask, monotone in ``v_k``: it cannot pick
            channels freely, whatever trains it. The bias lets each mask favour any set of channels; the scale
            keeps the choice adaptive to the fused feature ``v`` (the cooperation).
    """

    def __init__(
        self,
        channels: int,
        num_masks: int,
        kinds: str = "both",
        init_std: float = 0.01,
        activation: str = "sigmoid",
        budgeted: bool = False,
    ) -> None:
        super().__init__()
        require_choice("mask_activation", activation, MASK_ACTIVATIONS)
        self.activation = activation
        self.budgeted = budgeted
        require_choice("mask_kinds", kinds, MASK_KINDS)
        if num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {num_masks}")
        self.kinds = kinds
        self.num_masks = num_masks
        channel_width = channels if budgeted else 1
        self.channel_units = nn.Parameter(torch.empty(num_masks, channel_width)) if kinds != "spatial" else None  # m_c / a
        self.channel_bias = (
            nn.Parameter(torch.zeros(num_masks, channels)) if budgeted and kinds != "spatial" else None  # b
        )
        self.spatial_units = nn.Parameter(torch.empty(num_masks, channels)) if kinds != "channel" else None  # m_s
        for units in (self.channel_units, self.spatial_units):
            if units is not None:
                nn.init.normal_(units, mean=0.0, std=init_std)

    def scores(self, fused: Tensor | FactoredFusion) -> tuple[Tensor | None, Tensor | None]:
        """The selection units' scores before the activation: spatial ``m_s z`` ``(B, M, H, W)`` and channel
        ``m_c (.) v (+ b)`` ``(B, M, C)`` (None for a disabled kind), from the dense ``F_fused`` ``(B, C, H, W)`` or
        its :class:`~acamkd_hf.fusion.FactoredFusion` (the same numbers without forming the map)."""
        factored = isinstance(fused, FactoredFusion)
        spatial = channel = None
        if self.spatial_units is not None:
            spatial = fused.project(self.spatial_units) if factored else torch.einsum("mc,bchw->bmhw", self.spatial_units, fused)
        if self.channel_units is not None:
            pooled = fused.spatial_mean() if factored else fused.mean(dim=(2, 3))  # v = GAP(F_fused): (B, C)
            channel = self.channel_units.unsqueeze(0) * pooled.unsqueeze(1)  # (B, M, C); m_c (M, 1) broadcasts
            if self.channel_bias is not None:
                channel = channel + self.channel_bias
        return spatial, channel

    def forward(self, fused: Tensor | FactoredFusion) -> tuple[Tensor | None, Tensor | None]:
        """``F_fused`` ``(B, C, H, W)`` (dense, or factored as :class:`~acamkd_hf.fusion.FactoredFusion`) -> (spatial
        masks ``(B, M, H, W)`` or None, channel masks ``(B, M, C)`` or None)."""
        return tuple(None if scores is None else self.activate(scores) for scores in self.scores(fused))

    def activate(self, scores: Tensor) -> Tensor:
        """Scores ``(B, M, ...)`` -> masks: budgeted over the trailing dimensions, or the activation across ``M``."""
        if self.budgeted:
            return budget_masks(scores.flatten(2)).view_as(scores)
        return activate_masks(scores, self.activation)
