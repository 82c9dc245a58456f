"""What a distillation point is: a named place in a model's forward pass and the function that reads the
(B, C, H, W) map from what that place returns. The picks are small named callables (not lambdas) so that a point's
description prints readably (``repr``) in errors and docs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def family_of(model: Any, table: Mapping[str, Any]) -> str | None:
    """The key of ``table`` (model class names) that names ``model``'s class or one of its bases, else None. By name,
    along the MRO: a model loaded through ``trust_remote_code`` (another class object, the same name) matches too."""
    return next((cls.__name__ for cls in type(model).__mro__ if cls.__name__ in table), None)


#: the segmenters' output point: the model's dense logits.
LOGITS = "logits"


@dataclass(frozen=True)
class TapSpec:
    """How to obtain one point.

    module: dotted path of the submodule whose forward output holds the map; "" means the model's own output (read
        from the `outputs` given to `FeatureTaps.collect`, not from a hook).
    pick: function from that output to the (B, C, H, W) tensor.
    """

    module: str
    pick: Callable[[Any], torch.Tensor]


def read_logits(outputs: Any) -> torch.Tensor:
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise TypeError(
            f"Expected a ModelOutput with `.logits`, got {type(outputs).__name__}; "
            "call the model with return_dict=True."
        )
    return logits


def identity(output: torch.Tensor) -> torch.Tensor:
    return output


class Item:
    """pick = output[index] (timm `features_only` returns a list of maps)."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, output: Sequence[torch.Tensor]) -> torch.Tensor:
        return output[self.index]

    def __repr__(self) -> str:
        return f"output[{self.index}]"


class FeatureMap:
    """pick = output.feature_maps[index] (transformers `BackboneOutput`, DEIMv2's encoder output)."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, output: Any) -> torch.Tensor:
        return output.feature_maps[self.index]

    def __repr__(self) -> str:
        return f"output.feature_maps[{self.index}]"


class BackboneMap:
    """pick = output[index][0]: the DETR-family conv encoders (`model.model.backbone`) return a list of
    `(feature_map, mask)` pairs, one per backbone output."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, output: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return output[self.index][0]

    def __repr__(self) -> str:
        return f"output[{self.index}][0]"


class EncoderMap:
    """pick = output.last_hidden_state[index]: RT-DETR's hybrid encoder returns its FPN/PAN maps as a list (finest
    first) in `last_hidden_state` (a tuple output when return_dict is off: output[0][index])."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, output: Any) -> torch.Tensor:
        maps = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        return maps[self.index]

    def __repr__(self) -> str:
        return f"output.last_hidden_state[{self.index}]"


def stage_name(index: int) -> str:
    return "stem" if index == 0 else f"stage{index}"
