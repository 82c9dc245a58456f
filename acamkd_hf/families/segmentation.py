"""Where each supported segmentation family exposes its distillation points: ``logits`` first, then the stages
``stage1``..``stage4`` (strides 4, 8, 16, 32, finest first; less where a backbone is dilated), always (B, C, H, W)
maps: for the ViT families (DPT, BEiT) the patch tokens as the neck reassembles them, never (B, N, C) tokens.

One function per family, ``model -> {point name: TapSpec}``; :data:`SEGMENTATION_FAMILIES` maps the model class
name to it. A segmenter without an entry still has the ``logits`` point (``acamkd_hf.taps.point_specs``). Also here:
the one family input-size rule (:func:`input_size_problem`: DPT) and the mask classifiers, refused
(:func:`mask_classification_problem`).
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
    # out_features ("stage1".."stage4", possibly "stem"); channels its config's hidden_sizes (Swin: embed_dim x 1, 2,
    # 4, 8). Strides 4, 8, 16, 32 for ResNet, ConvNeXt, Swin and DINOv3-ConvNeXt (its raw stage outputs); a plain
    # ViT backbone (DINOv3-ViT: its layers' patch tokens on the patch grid, layer-normed) gives every stage at its
    # patch size (16), hidden_size channels. UperNet upsamples its logits to the input size (stride 1).
    points = {LOGITS: TapSpec("", read_logits)}
    for position, name in enumerate(model.backbone.out_features):
        points[name] = TapSpec("backbone", FeatureMap(position))
    return points


def _dpt_points(model: nn.Module) -> dict[str, TapSpec]:
    # DPTForSemanticSegmentation, ViT and DPT-Hybrid. `neck.reassemble_stage` returns the list of four (B, C, H, W)
    # maps the neck's 3x3 convs read next (`neck.convs.{i}`), channels config.neck_hidden_sizes:
    # - ViT: the tokens of the encoder layers config.backbone_out_indices, on the patch grid (stride patch_size, 16),
    #   projected and resized by config.reassemble_factors (4, 2, 1, 0.5): strides 4, 8, 16, 32.
    # - Hybrid: items 0 and 1 are the BiT backbone's stage1 / stage2 maps passed through (strides 4, 8), items 2 and 3
    #   the reassembled ViT tokens (factors 1, 0.5: strides 16, 32).
    # Logits at stride 1 (the head upsamples the stride-2 fusion output). A DPT without a reassemble stage (a Swinv2
    # backbone, which transformers builds for depth estimation) has logits alone here.
    points = {LOGITS: TapSpec("", read_logits)}
    if model.neck.reassemble_stage is not None:
        for i in range(len(model.config.neck_hidden_sizes)):
            points[f"stage{i + 1}"] = TapSpec("neck.reassemble_stage", Item(i))
    return points


def _beit_points(model: nn.Module) -> dict[str, TapSpec]:
    # BeitForSemanticSegmentation. `fpn` (BeitFPNNeck) returns the four (B, C, H, W) maps the UperNet head reads: the
    # tokens of the encoder outputs picked by config.out_indices on the patch grid (stride patch_size, 16),
    # upsampled 4x (fpn1: stride 4) and 2x (fpn2: stride 8), as they are (stride 16) and max-pooled (fpn4: stride
    # 32); all config.hidden_size channels. Logits at stride 4 (the head's finest level).
    points = {LOGITS: TapSpec("", read_logits)}
    for i in range(4):
        points[f"stage{i + 1}"] = TapSpec("fpn", Item(i))
    return points


def _mobilevit_layers(prefix: str) -> dict[str, TapSpec]:
    # MobileViT / MobileViTV2 encoders: `encoder.layer.0` at stride 2 (not offered: no other family has a stride-2
    # stage), then `encoder.layer.1..4` at strides 4, 8, 16, 32; config.output_stride 16 dilates layer 4 (strides
    # 4, 8, 16, 16), 8 layers 3 and 4 (4, 8, 8, 8). The DeepLabV3 head reads layer 4 alone; each layer's output is
    # only read by the next layer's (not in-place) downsampling block.
    points = {LOGITS: TapSpec("", read_logits)}
    for stage in range(1, 5):
        points[f"stage{stage}"] = TapSpec(f"{prefix}.encoder.layer.{stage}", identity)
    return points


def _mobilevit_points(model: nn.Module) -> dict[str, TapSpec]:
    # MobileViTForSemanticSegmentation: channels config.neck_hidden_sizes[2:6] (64, 96, 128, 160 in MobileViT-S).
    return _mobilevit_layers("mobilevit")


def _mobilevitv2_points(model: nn.Module) -> dict[str, TapSpec]:
    # MobileViTV2ForSemanticSegmentation: channels 128, 256, 384, 512 x config.width_multiplier (rounded to 8).
    return _mobilevit_layers("mobilevitv2")


def input_size_problem(model: nn.Module, size: tuple[int, int]) -> str | None:
    """Why ``model`` cannot take inputs of ``size`` = (H, W), or None when it can. One family has a rule: transformers'
    DPTForSemanticSegmentation reshapes its patch tokens to a square grid (its reassemble stage is called without the
    grid's height and width), so a non-square input fails, or is silently scrambled when its number of tokens happens
    to be a square; DPT-Hybrid also checks the input against config.image_size."""
    if "DPTForSemanticSegmentation" not in {cls.__name__ for cls in type(model).__mro__}:
        return None
    height, width = (int(s) for s in size)
    if model.config.is_hybrid:
        side = model.config.image_size
        expected = tuple(side) if isinstance(side, (list, tuple)) else (side, side)
        if (height, width) != expected:
            return f"DPT-Hybrid takes {expected[0]}x{expected[1]} inputs only (its config.image_size)"
    elif height != width:
        return "transformers' DPT reads its patch tokens as a square grid, so its inputs must be square"
    return None


SEGMENTATION_FAMILIES: dict[str, Callable[[nn.Module], dict[str, TapSpec]]] = {
    "DeepLabV3ForSemanticSegmentation": _deeplabv3_points,
    "SegformerForSemanticSegmentation": _segformer_points,
    "MobileNetV2ForSemanticSegmentation": _mobilenetv2_points,
    "UperNetForSemanticSegmentation": _upernet_points,
    "DPTForSemanticSegmentation": _dpt_points,
    "BeitForSemanticSegmentation": _beit_points,
    "MobileViTForSemanticSegmentation": _mobilevit_points,
    "MobileViTV2ForSemanticSegmentation": _mobilevitv2_points,
}

#: model class name -> dotted path of its backbone (what ``--inherit_from_teacher`` leaves to the student).
SEGMENTATION_BACKBONES: dict[str, str] = {
    "DeepLabV3ForSemanticSegmentation": "backbone",
    "UperNetForSemanticSegmentation": "backbone",
    "SegformerForSemanticSegmentation": "segformer",
    "MobileNetV2ForSemanticSegmentation": "mobilenet_v2",
    "DPTForSemanticSegmentation": "dpt",  # the ViT (and a hybrid's BiT, dpt.embeddings.backbone); neck and head inherit
    "BeitForSemanticSegmentation": "beit",  # the ViT; fpn and the heads inherit
    "MobileViTForSemanticSegmentation": "mobilevit",
    "MobileViTV2ForSemanticSegmentation": "mobilevitv2",
}

#: Class-name endings of transformers' mask-classification segmenters (Mask2Former, MaskFormer, OneFormer, EoMT, DETR's
#: panoptic head): per-query masks and classes, no per-pixel logits. Not supported yet (docs/architecture.md, "Not yet
#: supported: mask classification").
MASK_CLASSIFICATION_SUFFIXES = ("ForUniversalSegmentation", "ForInstanceSegmentation", "DetrForSegmentation")


def mask_classification_problem(model: nn.Module) -> str | None:
    """Why ``model`` is not distilled as a segmenter, when it is a mask classifier (:data:`MASK_CLASSIFICATION_SUFFIXES`,
    matched along the MRO); None for any other model."""
    if not any(cls.__name__.endswith(MASK_CLASSIFICATION_SUFFIXES) for cls in type(model).__mro__):
        return None
    return (f"{type(model).__name__} is a mask-classification model (per-query masks and classes, no per-pixel logits), "
            "which is not supported yet (docs/architecture.md)")


def segmentation_support() -> str:
    """What distils, in words for messages (from :data:`SEGMENTATION_FAMILIES`): the clause that ends a sentence naming
    transformers' semantic-segmentation models."""
    names = [name.removesuffix("ForSemanticSegmentation") for name in SEGMENTATION_FAMILIES]
    return (
        f"any of them distils at logits; the stages too for {', '.join(names[:-1])} and {names[-1]}; mask "
        "classification (Mask2Former, MaskFormer, OneFormer, EoMT) is not supported yet"
    )
