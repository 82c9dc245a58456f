"""Named object-detection models for the CLI and the tests, plus loading by Hub id / folder.

Three transformers families, each with its neck (the paper's distillation points, see `acamkd_hf.taps`):

- DETR (`DetrForObjectDetection`): one projected stride-32 map (`model.input_projection`).
- RT-DETR (`RTDetrForObjectDetection`): the hybrid encoder's FPN/PAN maps at strides 8, 16, 32.
- Deformable DETR (`DeformableDetrForObjectDetection`): the multi-scale `model.input_proj` maps. It runs on CPU:
  transformers' `MultiScaleDeformableAttention` is pure PyTorch (`grid_sample`) unless hub kernels are requested
  with `use_kernels=True`.

Two kinds of presets:
- the paper-scale architectures (`detr-resnet101`, `detr-resnet50`, `rtdetr-resnet101`, `rtdetr-resnet50`,
  `rtdetr-resnet18`, `deformable-detr-resnet50`), laid out as the public checkpoints (facebook/detr-resnet-50,
  PekingU/rtdetr_r50vd, SenseTime/deformable-detr, ...) but RANDOMLY initialised: nothing is downloaded. For
  pretrained detectors pass the Hub id to `load_detection_model` instead.
- tiny random-init models (`tiny-*`): a teacher and a ~3-5x smaller student per family for the tests and the CPU
  default run. Teacher and student of a family share the neck and head widths and differ in the backbone, as the
  paper's R101 -> R50 pairs do, so `acamkd_hf.inheritance.inherit_from_teacher` copies everything but the backbone.

Every builder has the signature `builder(id2label, *, freeze_backbone=False, **overrides) -> PreTrainedModel`;
`overrides` replace config fields. Backbone freezing is decided explicitly by `freeze_backbone` (transformers'
own choice depends on a name-matching quirk: DETR / Deformable DETR with a transformers ResNet come out with the
whole backbone frozen, with a timm ResNet fully trainable).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn
from transformers import (
    AutoModelForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DeformableDetrImageProcessor,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessor,
    PreTrainedModel,
    ResNetConfig,
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrImageProcessor,
    RTDetrResNetConfig,
    TimmBackboneConfig,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .loading import label_maps, load_model

# ---------------------------------------------------------------------------------------------------------------------
# Backbone freezing


def set_backbone_frozen(model: PreTrainedModel, frozen: bool) -> PreTrainedModel:
    """Freeze (`requires_grad=False`) or unfreeze every backbone parameter, whatever transformers decided at
    construction. Uses the family's own `model.model.freeze_backbone()` / `unfreeze_backbone()`; other detectors
    need a `model.model.backbone` (or `model.backbone`) module. Frozen BatchNorm statistics are buffers and are not
    affected; a trainable BatchNorm (the tiny RT-DETR presets) still updates its running statistics in train mode
    even when frozen here. Returns the model."""
    base = getattr(model, "model", None)
    method = getattr(base, "freeze_backbone" if frozen else "unfreeze_backbone", None)
    if callable(method):
        method()
        return model
    for owner in (base, model):
        backbone = getattr(owner, "backbone", None)
        if isinstance(backbone, nn.Module):
            backbone.requires_grad_(not frozen)
            return model
    raise TypeError(f"{type(model).__name__} has no backbone module that could be (un)frozen.")


def _finish(model: PreTrainedModel, freeze_backbone: bool) -> PreTrainedModel:
    return set_backbone_frozen(model, bool(freeze_backbone))


# ---------------------------------------------------------------------------------------------------------------------
# Paper-scale architectures (random init)


def _detr(id2label, defaults: dict, overrides: dict, freeze_backbone: bool) -> DetrForObjectDetection:
    config = DetrConfig(**{**defaults, **overrides}, **label_maps(id2label))
    return _finish(DetrForObjectDetection(config), freeze_backbone)


def _rtdetr(id2label, defaults: dict, overrides: dict, freeze_backbone: bool) -> RTDetrForObjectDetection:
    config = RTDetrConfig(**{**defaults, **overrides}, **label_maps(id2label))
    return _finish(RTDetrForObjectDetection(config), freeze_backbone)


def _deformable(id2label, defaults: dict, overrides: dict, freeze_backbone: bool) -> DeformableDetrForObjectDetection:
    config = DeformableDetrConfig(**{**defaults, **overrides}, **label_maps(id2label))
    return _finish(DeformableDetrForObjectDetection(config), freeze_backbone)


def _timm_resnet(name: str, out_indices: list[int]) -> TimmBackboneConfig:
    # The layout of facebook/detr-resnet-50 and SenseTime/deformable-detr (timm ResNet, features_only).
    return TimmBackboneConfig(backbone=name, out_indices=out_indices)


def detr_resnet101(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> DetrForObjectDetection:
    """DETR-R101 (facebook/detr-resnet-101 layout: timm ResNet-101, 6+6 layers, d_model 256, 100 queries)."""
    return _detr(id2label, dict(backbone_config=_timm_resnet("resnet101", [1, 2, 3, 4])), overrides, freeze_backbone)


def detr_resnet50(id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides) -> DetrForObjectDetection:
    """DETR-R50 (facebook/detr-resnet-50 layout: timm ResNet-50, 6+6 layers, d_model 256, 100 queries)."""
    return _detr(id2label, dict(backbone_config=_timm_resnet("resnet50", [1, 2, 3, 4])), overrides, freeze_backbone)


def _rtdetr_resnet_backbone(depths, layer_type="bottleneck", hidden_sizes=(256, 512, 1024, 2048), embedding_size=64):
    return RTDetrResNetConfig(
        embedding_size=embedding_size,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        layer_type=layer_type,
        out_indices=[2, 3, 4],
    )


def rtdetr_resnet101(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> RTDetrForObjectDetection:
    """RT-DETR-R101vd (PekingU/rtdetr_r101vd layout: 384-wide hybrid encoder with a 2048 FFN, 256-wide decoder)."""
    defaults = dict(
        backbone_config=_rtdetr_resnet_backbone([3, 4, 23, 3]),
        encoder_hidden_dim=384,
        encoder_ffn_dim=2048,
        decoder_in_channels=[384, 384, 384],
    )
    return _rtdetr(id2label, defaults, overrides, freeze_backbone)


def rtdetr_resnet50(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> RTDetrForObjectDetection:
    """RT-DETR-R50vd (PekingU/rtdetr_r50vd layout = transformers' RTDetrConfig defaults)."""
    return _rtdetr(id2label, dict(backbone_config=_rtdetr_resnet_backbone([3, 4, 6, 3])), overrides, freeze_backbone)


def rtdetr_resnet18(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> RTDetrForObjectDetection:
    """RT-DETR-R18vd (PekingU/rtdetr_r18vd layout: basic blocks, half-width CSP blocks, 3 decoder layers)."""
    defaults = dict(
        backbone_config=_rtdetr_resnet_backbone([2, 2, 2, 2], "basic", (64, 128, 256, 512)),
        encoder_in_channels=[128, 256, 512],
        hidden_expansion=0.5,
        decoder_layers=3,
    )
    return _rtdetr(id2label, defaults, overrides, freeze_backbone)


def deformable_detr_resnet50(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> DeformableDetrForObjectDetection:
    """Deformable DETR-R50 (SenseTime/deformable-detr layout: timm ResNet-50 stages 2-4 + one extra level, 6+6
    layers, 300 queries). Pure-PyTorch deformable attention on CPU."""
    return _deformable(id2label, dict(backbone_config=_timm_resnet("resnet50", [2, 3, 4])), overrides, freeze_backbone)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny CPU models. Backbones are transformers ResNets given as sub-configs (timm's channel widths cannot be set
# through TimmBackboneConfig). Teacher/student pairs share every non-backbone width.


def _tiny_resnet(widths, out_features, *, rtdetr: bool = False):
    kwargs = dict(embedding_size=widths[0], hidden_sizes=list(widths), depths=[1, 1, 1, 1], layer_type="basic")
    if rtdetr:  # RT-DETR's basic ResNet needs embedding_size == hidden_sizes[0]
        return RTDetrResNetConfig(**kwargs, out_features=out_features)
    return ResNetConfig(**kwargs, out_features=out_features)


_TINY_TEACHER_WIDTHS = (32, 64, 128, 256)
_TINY_STUDENT_WIDTHS = (16, 32, 48, 64)

_TINY_DETR = dict(
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    num_queries=20,
    dropout=0.0,
)


def _tiny_detr(id2label, widths, overrides, freeze_backbone) -> DetrForObjectDetection:
    backbone = _tiny_resnet(widths, ["stage1", "stage2", "stage3", "stage4"])
    return _detr(id2label, dict(_TINY_DETR, backbone_config=backbone), overrides, freeze_backbone)


def tiny_detr_resnet(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> DetrForObjectDetection:
    """Tiny DETR teacher: ResNet 32/64/128/256 (basic, one block per stage), 2+2 layers, d_model 64, 20 queries."""
    return _tiny_detr(id2label, _TINY_TEACHER_WIDTHS, overrides, freeze_backbone)


def tiny_detr_resnet_student(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> DetrForObjectDetection:
    """Tiny DETR student: the teacher's transformer and heads on a ResNet 16/32/48/64."""
    return _tiny_detr(id2label, _TINY_STUDENT_WIDTHS, overrides, freeze_backbone)


_TINY_RTDETR = dict(
    encoder_hidden_dim=64,
    encoder_ffn_dim=128,
    encoder_attention_heads=4,
    hidden_expansion=0.5,
    d_model=64,
    decoder_in_channels=[64, 64, 64],
    decoder_ffn_dim=128,
    decoder_layers=2,
    decoder_attention_heads=4,
    num_queries=30,
    num_denoising=30,
    # From scratch the backbone needs working BatchNorm (transformers' default freezes it: right for ImageNet
    # weights, but a random-init frozen BN is the identity and the tiny ResNet then barely trains).
    freeze_backbone_batch_norms=False,
)


def _tiny_rtdetr(id2label, widths, overrides, freeze_backbone) -> RTDetrForObjectDetection:
    backbone = _tiny_resnet(widths, ["stage2", "stage3", "stage4"], rtdetr=True)
    defaults = dict(_TINY_RTDETR, backbone_config=backbone, encoder_in_channels=list(widths[1:]))
    return _rtdetr(id2label, defaults, overrides, freeze_backbone)


def tiny_rtdetr_resnet(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> RTDetrForObjectDetection:
    """Tiny RT-DETR teacher: ResNet-vd 32/64/128/256 (basic), 64-wide hybrid encoder, 2 decoder layers, 30 queries."""
    return _tiny_rtdetr(id2label, _TINY_TEACHER_WIDTHS, overrides, freeze_backbone)


def tiny_rtdetr_resnet_student(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> RTDetrForObjectDetection:
    """Tiny RT-DETR student: the teacher's encoder/decoder widths on a ResNet-vd 16/32/48/64."""
    return _tiny_rtdetr(id2label, _TINY_STUDENT_WIDTHS, overrides, freeze_backbone)


_TINY_DEFORMABLE = dict(
    d_model=64,  # a multiple of 32: the input projections use GroupNorm(32, d_model)
    encoder_layers=1,
    decoder_layers=2,  # transformers 5.x: 1 decoder layer fails in post_init (bbox_embed weight tying)
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    num_queries=20,
    num_feature_levels=4,
    encoder_n_points=2,
    decoder_n_points=2,
    dropout=0.0,
)


def _tiny_deformable(id2label, widths, overrides, freeze_backbone) -> DeformableDetrForObjectDetection:
    backbone = _tiny_resnet(widths, ["stage2", "stage3", "stage4"])
    return _deformable(id2label, dict(_TINY_DEFORMABLE, backbone_config=backbone), overrides, freeze_backbone)


def tiny_deformable_detr(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> DeformableDetrForObjectDetection:
    """Tiny Deformable DETR teacher: ResNet 32/64/128/256 stages 2-4 + one extra level, 1+2 layers, d_model 64."""
    return _tiny_deformable(id2label, _TINY_TEACHER_WIDTHS, overrides, freeze_backbone)


def tiny_deformable_detr_student(
    id2label: Mapping[int, str], *, freeze_backbone: bool = False, **overrides
) -> DeformableDetrForObjectDetection:
    """Tiny Deformable DETR student: the teacher's transformer on a ResNet 16/32/48/64."""
    return _tiny_deformable(id2label, _TINY_STUDENT_WIDTHS, overrides, freeze_backbone)


DETECTION_PRESETS: dict[str, Callable[..., PreTrainedModel]] = {
    "detr-resnet101": detr_resnet101,
    "detr-resnet50": detr_resnet50,
    "rtdetr-resnet101": rtdetr_resnet101,
    "rtdetr-resnet50": rtdetr_resnet50,
    "rtdetr-resnet18": rtdetr_resnet18,
    "deformable-detr-resnet50": deformable_detr_resnet50,
    "tiny-detr-resnet": tiny_detr_resnet,
    "tiny-detr-resnet-student": tiny_detr_resnet_student,
    "tiny-rtdetr-resnet": tiny_rtdetr_resnet,
    "tiny-rtdetr-resnet-student": tiny_rtdetr_resnet_student,
    "tiny-deformable-detr": tiny_deformable_detr,
    "tiny-deformable-detr-student": tiny_deformable_detr_student,
}

#: preset name -> transformers model_type ("detr", "rt_detr", "deformable_detr")
DETECTION_PRESET_FAMILIES: dict[str, str] = {
    name: ("rt_detr" if "rtdetr" in name else "deformable_detr" if "deformable" in name else "detr")
    for name in DETECTION_PRESETS
}


def load_detection_model(
    name_or_path: str,
    id2label: dict[int, str] | None = None,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    freeze_backbone: bool | None = None,
    role: str = "model",
) -> PreTrainedModel:
    """Build a preset by name, or load a detector from a local folder / Hub id.

    Args:
        name_or_path: a key of `DETECTION_PRESETS`, a folder written by `save_pretrained`, or a Hub id ("org/name",
            e.g. "facebook/detr-resnet-50", "PekingU/rtdetr_r50vd").
        id2label: the dataset's classes; required for presets. For a loaded detector whose label set differs (80
            COCO classes on a 4-class dataset), it is loaded with these labels and ``ignore_mismatched_sizes=True``
            (as transformers' run_object_detection.py does): the class heads start anew, one line names them. None:
            loaded with its own labels.
        trust_remote_code, revision: passed to `AutoModelForObjectDetection.from_pretrained`.
        freeze_backbone: True freezes every backbone parameter, False makes them all trainable. None (default)
            means False for presets and loaded models alike: the result never depends on transformers' constructor
            (which freezes a transformers-ResNet DETR backbone entirely and a timm one not at all).
        role: how the model is named in messages ("student", "teacher").

    Raises:
        ValueError: a preset without `id2label`; a checkpoint of an architecture without a detection head.
        FileNotFoundError: a name that is neither a preset nor an existing folder nor shaped like a Hub id.
    """
    frozen = bool(freeze_backbone)  # None: trainable, decided here, not by transformers' name matching
    model = load_model(
        name_or_path,
        id2label,
        DETECTION_PRESETS,
        auto_class=AutoModelForObjectDetection,
        what="detection preset",
        task="object-detection",
        families="DETR, RT-DETR and Deformable DETR",
        role=role,
        trust_remote_code=trust_remote_code,
        revision=revision,
        preset_options={"freeze_backbone": frozen},
    )
    # A preset's builder has set its backbone's freezing already; a loaded model's is transformers' choice until here.
    return model if name_or_path in DETECTION_PRESETS else set_backbone_frozen(model, frozen)


# ---------------------------------------------------------------------------------------------------------------------
# Image processors

_FAMILY_ALIASES = {
    "detr": "detr",
    "rt_detr": "rt_detr",
    "rtdetr": "rt_detr",
    "rt-detr": "rt_detr",
    "deformable_detr": "deformable_detr",
    "deformable-detr": "deformable_detr",
    "deformabledetr": "deformable_detr",
}


def detection_family(model_or_name: Any) -> str:
    """The transformers model_type of a detector ("detr", "rt_detr" or "deformable_detr") from a model, a config, a
    preset name or a family name / alias."""
    if isinstance(model_or_name, str):
        if model_or_name in DETECTION_PRESET_FAMILIES:
            return DETECTION_PRESET_FAMILIES[model_or_name]
        key = model_or_name.lower()
    else:
        config = getattr(model_or_name, "config", model_or_name)
        key = str(getattr(config, "model_type", ""))
    if key not in _FAMILY_ALIASES:
        raise ValueError(
            f"Unknown detection family {model_or_name!r}; expected one of detr, rt_detr, deformable_detr "
            f"or a preset name ({', '.join(DETECTION_PRESETS)})."
        )
    return _FAMILY_ALIASES[key]


#: Each family's input size on real data when its checkpoint brings no processor, as the family's public processors:
#: RT-DETR a fixed square side (640, a multiple of its stride 32); DETR / Deformable DETR the shortest edge (800,
#: the longest at most 1333), aspect ratio kept, batches padded with a ``pixel_mask``.
DETECTION_INPUT_SIZES = {"rt_detr": 640, "detr": 800, "deformable_detr": 800}
#: DETR's longest edge per unit of its shortest (1333 / 800), kept when the shortest edge is set.
DETR_LONGEST_PER_SHORTEST = 1333 / 800
#: RT-DETR's encoder merges levels at strides 8, 16, 32 (its FPN upsamples by 2 and concatenates): an input side
#: that is not a multiple of 32 gives levels of mismatched size (a crash inside the model's forward).
RTDETR_SIZE_MULTIPLE = 32


def detection_input_size_error(family: Any, input_size: int) -> str | None:
    """Why ``input_size`` cannot be ``family``'s input size (``None`` when it can)."""
    if input_size < 1:
        return f"--image_size must be a positive number of pixels, got {input_size}"
    if detection_family(family) == "rt_detr" and input_size % RTDETR_SIZE_MULTIPLE:
        lower = max(RTDETR_SIZE_MULTIPLE, input_size // RTDETR_SIZE_MULTIPLE * RTDETR_SIZE_MULTIPLE)
        return (f"--image_size {input_size}: RT-DETR needs a multiple of {RTDETR_SIZE_MULTIPLE} (its encoder merges "
                f"strides 8, 16 and 32); use {lower} or {lower + RTDETR_SIZE_MULTIPLE}")
    return None


def default_detection_image_processor(family: Any, input_size: int | None = None):
    """The processor to save next to a detection checkpoint so `pipeline("object-detection")` and
    `post_process_object_detection` work, built without the Hub, with the family's own conventions:

    * RT-DETR: every image resized to ``input_size x input_size`` (a multiple of 32; default 640), rescaled to
      [0, 1], no normalisation, no padding (as its public checkpoints);
    * DETR / Deformable DETR: shortest edge ``input_size`` (default 800), longest at most ``input_size * 1333 / 800``,
      aspect ratio kept, ImageNet normalisation, padded per batch with a ``pixel_mask``.

    COCO-detection annotations are converted to boxes normalised by each image's own size, so predictions
    post-processed with the original sizes land on the original images, whatever the resize.

    `family`: "detr", "rt_detr", "deformable_detr" (or a preset name, a model, a config)."""
    family = detection_family(family)
    input_size = int(input_size or DETECTION_INPUT_SIZES[family])
    problem = detection_input_size_error(family, input_size)
    if problem is not None:
        raise ValueError(problem)
    common = dict(do_resize=True, do_rescale=True, do_convert_annotations=True)
    if family == "rt_detr":
        return RTDetrImageProcessor(**common, size={"height": input_size, "width": input_size}, do_pad=False,
                                    do_normalize=False)
    processor_class = DetrImageProcessor if family == "detr" else DeformableDetrImageProcessor
    longest = max(input_size, round(input_size * DETR_LONGEST_PER_SHORTEST))
    return processor_class(
        **common, size={"shortest_edge": input_size, "longest_edge": longest}, do_pad=True, do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
    )
