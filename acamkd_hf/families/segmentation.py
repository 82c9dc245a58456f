"""Where each supported segmentation family exposes its distillation points: ``logits`` first, then the stages.

One function per family, ``model -> {point name: TapSpec}``; :data:`SEGMENTATION_FAMILIES` maps the model class
name to it. A segmenter without an entry still has the ``logits`` point (``acamkd_hf.taps.point_specs``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .spec import LOGITS, FeatureMap, Item, TapSpec, identity, read_logits


def _deeplabv3_points(model: nn.Module) -> dict[str, TapSpec]:
    # Ours (acamkd_hf.models.deeplabv3). `backbone` is timm `features_only`: its forward returns the list of maps
    # for config.out_indices, exactly what the heads consume. timm index 0 is the stride-2 stem, 1..4 the stages.
    points = {LOGITS: TapSpec("", read_logits)}
    for position, index in enumerate(model.config.out_indices):
        points["stem" if int(index) == 0 else f"stage{int(index)}"] = TapSpec("backbone", Item(position))
    return points


def _segformer_points(model: nn.Module) -> dict[str, TapSpec]:
    # transformers 5.x: `segformer.stages.{i}` (4.x had `segformer.encoder.block`). Each stage ends with a reshape
    # to (B, C, H, W) (a fresh tensor from .contiguous()), except the last one when config.reshape_last_stage=False
    # (then it is (B, N, C) tokens and not offered).
    points = {LOGITS: TapSpec("", read_logits)}
    num_stages = len(model.segformer.stages)
    for i in range(num_stages):
        if i < num_stages - 1 or getattr(model.config, "reshape_last_stage", True):
            points[f"stage{i + 1}"] = TapSpec(f"segformer.stages.{i}", identity)
    return points


# transformers' MobileNetV2 has 16 inverted-residual layers (`mobilenet_v2.layer.{0..15}`); the last layer of each
# resolution/width group gives the same four maps as timm's MobileNetV2 out_indices 1..4: 24, 32, 96 and 320
# channels (x depth_multiplier) at strides 4, 8, 16, 32 (before dilation).
_MOBILENETV2_STAGE_LAYERS = (1, 4, 11, 15)


def _mobilenetv2_points(model: nn.Module) -> dict[str, TapSpec]:
    points = {LOGITS: TapSpec("", read_logits)}
    for stage, layer in enumerate(_MOBILENETV2_STAGE_LAYERS, start=1):
        points[f"stage{stage}"] = TapSpec(f"mobilenet_v2.layer.{layer}", identity)
    return points


def _upernet_points(model: nn.Module) -> dict[str, TapSpec]:
    # Tap the backbone's `feature_maps` (what the UperNet heads consume) rather than the stage modules: for ConvNeXt /
    # Swin backbones the feature maps are layer-normed copies of the stage outputs. Names are the backbone's own
    # out_features ("stage1".."stage4", possibly "stem"). Note UperNet upsamples its logits to the input size.
    points = {LOGITS: TapSpec("", read_logits)}
    for position, name in enumerate(model.backbone.out_features):
        points[name] = TapSpec("backbone", FeatureMap(position))
    return points


SEGMENTATION_FAMILIES: dict[str, Callable[[nn.Module], dict[str, TapSpec]]] = {
    "DeepLabV3ForSemanticSegmentation": _deeplabv3_points,
    "SegformerForSemanticSegmentation": _segformer_points,
    "MobileNetV2ForSemanticSegmentation": _mobilenetv2_points,
    "UperNetForSemanticSegmentation": _upernet_points,
}

#: model class name -> dotted path of its backbone (what ``--inherit_from_teacher`` leaves to the student).
SEGMENTATION_BACKBONES: dict[str, str] = {
    "DeepLabV3ForSemanticSegmentation": "backbone",
    "UperNetForSemanticSegmentation": "backbone",
    "SegformerForSemanticSegmentation": "segformer",
    "MobileNetV2ForSemanticSegmentation": "mobilenet_v2",
}
