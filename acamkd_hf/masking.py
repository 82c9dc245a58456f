"""ASCM: adaptive spatial-channel masking (paper Sec. 3.3).

Learnable selection units turn the fused feature into ``M`` channel masks ``M^c = sigma(m_c v^T)`` (``v`` the
globally pooled fused feature) and ``M`` spatial masks ``M^s = sigma(m_s z)`` (``z`` the fused feature as
``C x HW``). ``m_c`` and ``m_s`` start from normal(0, 0.01), so every mask starts near 0.5 everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .fusion import FactoredFusion
from .functional import MASK_ACTIVATIONS, activate_masks, channel_masks_from_pooled, channel_selection, spatial_selection

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
            collapse), see :data:`acamkd_hf.functional.MASK_ACTIVATIONS`.
    """

    def __init__(
        self, channels: int, num_masks: int, kinds: str = "both", init_std: float = 0.01, activation: str = "sigmoid"
    ) -> None:
        super().__init__()
        if activation not in MASK_ACTIVATIONS:
            raise ValueError(f"unknown mask activation {activation!r}; choose one of {', '.join(MASK_ACTIVATIONS)}")
        self.activation = activation
        if kinds not in MASK_KINDS:
            raise ValueError(f"unknown mask kinds {kinds!r}; choose one of {', '.join(MASK_KINDS)}")
        if num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {num_masks}")
        self.kinds = kinds
        self.num_masks = num_masks
        self.channel_units = nn.Parameter(torch.empty(num_masks, 1)) if kinds != "spatial" else None  # m_c
        self.spatial_units = nn.Parameter(torch.empty(num_masks, channels)) if kinds != "channel" else None  # m_s
        for units in (self.channel_units, self.spatial_units):
            if units is not None:
                nn.init.normal_(units, mean=0.0, std=init_std)

    def forward(self, fused: Tensor | FactoredFusion) -> tuple[Tensor | None, Tensor | None]:
        """``F_fused`` ``(B, C, H, W)`` (dense, or factored as :class:`~acamkd_hf.fusion.FactoredFusion`: the same
        masks without forming the map) -> (spatial masks ``(B, M, H, W)`` or None, channel masks ``(B, M, C)`` or None)."""
        if isinstance(fused, FactoredFusion):
            # m_s F_fused and GAP(F_fused) through the factors, then the same activations as below
            spatial = channel = None
            if self.spatial_units is not None:
                spatial = activate_masks(fused.project(self.spatial_units), self.activation)
            if self.channel_units is not None:
                channel = channel_masks_from_pooled(fused.spatial_mean(), self.channel_units, self.activation)
            return spatial, channel
        spatial = spatial_selection(fused, self.spatial_units, self.activation) if self.spatial_units is not None else None
        channel = channel_selection(fused, self.channel_units, self.activation) if self.channel_units is not None else None
        return spatial, channel
