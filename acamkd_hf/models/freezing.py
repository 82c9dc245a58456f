"""Explicit backbone freezing for detectors: the backbone is the module at the family's backbone path
(:data:`acamkd_hf.families.BACKBONE_PREFIXES`, the same path ``--inherit_from_teacher`` leaves alone), whatever
transformers decided at construction.

transformers' own choices are not used: they depend on a name-matching quirk (DETR / Deformable DETR with a
transformers ResNet come out with the whole backbone frozen, with a timm ResNet fully trainable), and in 5.25 the
``freeze_backbone()`` methods of LW-DETR, RF-DETR and DEIMv2 name modules their models do not have.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from ..inheritance import find_backbone_prefix


def set_backbone_frozen(model: PreTrainedModel, frozen: bool) -> PreTrainedModel:
    """Freeze (`requires_grad=False`) or unfreeze every parameter of the model's backbone module; nothing else is
    touched. Frozen BatchNorm statistics are buffers and are not affected; a trainable BatchNorm (the tiny RT-DETR
    presets) still updates its running statistics in train mode even when frozen here. Returns the model.

    Raises TypeError for a model with neither a known family nor a ``model.backbone`` / ``backbone`` module."""
    try:
        path = find_backbone_prefix(model)
    except TypeError:
        raise TypeError(f"{type(model).__name__} has no backbone module that could be (un)frozen.") from None
    model.get_submodule(path).requires_grad_(not frozen)
    return model


__all__ = ["set_backbone_frozen"]
