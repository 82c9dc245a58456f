"""Named segmentation models for the CLI and the tests, plus loading by Hub id / folder.

Two kinds of presets:
- the paper's architectures at full size (`deeplabv3-resnet101` teacher; `deeplabv3-resnet18`,
  `deeplabv3-mobilenetv2` students; plus `deeplabv3-resnet50` and `segformer-b0`). The DeepLabV3 ones start from
  timm's ImageNet backbones as in the paper, so building them downloads backbone weights once.
- tiny random-init models (`tiny-*`) for the tests and the CPU default run. They never touch the network.

Every builder has the signature `builder(id2label: dict[int, str], **overrides) -> PreTrainedModel`; `overrides`
replace config fields (e.g. `use_pretrained_backbone=False`, `output_stride=16`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping

from transformers import (
    AutoModelForSemanticSegmentation,
    MobileNetV2Config,
    MobileNetV2ForSemanticSegmentation,
    PreTrainedModel,
    ResNetConfig,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .deeplabv3 import DeepLabV3Config, DeepLabV3ForSemanticSegmentation


def _label_maps(id2label: Mapping[int, str]) -> dict:
    """{"id2label": {int: str}, "label2id": {str: int}}; keys coerced to int (JSON round-trips make them strings)."""
    if not id2label:
        raise ValueError("id2label must name at least one class, e.g. {0: 'road', 1: 'sidewalk', ...}")
    id2label = {int(k): str(v) for k, v in id2label.items()}
    if len(set(id2label.values())) != len(id2label):
        raise ValueError(f"id2label has duplicate class names: {sorted(id2label.values())}")
    return {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}


def _deeplabv3(id2label: Mapping[int, str], defaults: dict, overrides: dict) -> DeepLabV3ForSemanticSegmentation:
    config = DeepLabV3Config(**{**defaults, **overrides}, **_label_maps(id2label))
    return DeepLabV3ForSemanticSegmentation(config)


# Paper setting (Cityscapes, CIRKD-style DeepLabV3): output stride 8, ASPP rates 12/24/36, 256-wide head, FCN
# auxiliary head on stage 3 with weight 0.4, ImageNet-initialised backbone.
_PAPER_DEEPLABV3 = dict(
    output_stride=8,
    atrous_rates=(12, 24, 36),
    aspp_channels=256,
    use_auxiliary_head=True,
    auxiliary_channels=256,
    auxiliary_loss_weight=0.4,
    use_pretrained_backbone=True,
)


def deeplabv3_resnet101(id2label: Mapping[int, str], **overrides) -> DeepLabV3ForSemanticSegmentation:
    """The paper's segmentation teacher (DeepLabV3-R101, OS 8), ImageNet backbone (downloads from the Hub)."""
    return _deeplabv3(id2label, dict(_PAPER_DEEPLABV3, backbone="resnet101"), overrides)


def deeplabv3_resnet50(id2label: Mapping[int, str], **overrides) -> DeepLabV3ForSemanticSegmentation:
    """DeepLabV3-R50, OS 8, ImageNet backbone (downloads from the Hub)."""
    return _deeplabv3(id2label, dict(_PAPER_DEEPLABV3, backbone="resnet50"), overrides)


def deeplabv3_resnet18(id2label: Mapping[int, str], **overrides) -> DeepLabV3ForSemanticSegmentation:
    """The paper's DeepLabV3-R18 student, OS 8, ImageNet backbone (downloads from the Hub)."""
    return _deeplabv3(id2label, dict(_PAPER_DEEPLABV3, backbone="resnet18"), overrides)


def deeplabv3_mobilenetv2(id2label: Mapping[int, str], **overrides) -> DeepLabV3ForSemanticSegmentation:
    """The paper's DeepLabV3-MobileNetV2 student, OS 8, ImageNet backbone (downloads from the Hub)."""
    return _deeplabv3(id2label, dict(_PAPER_DEEPLABV3, backbone="mobilenetv2_100"), overrides)


def _segformer(id2label: Mapping[int, str], defaults: dict, overrides: dict) -> SegformerForSemanticSegmentation:
    return SegformerForSemanticSegmentation(SegformerConfig(**{**defaults, **overrides}, **_label_maps(id2label)))


def segformer_b0(id2label: Mapping[int, str], **overrides) -> SegformerForSemanticSegmentation:
    """SegFormer-B0 (transformers' `SegformerConfig` defaults), random init. For ImageNet-pretrained MiT-B0 weights
    load a Hub checkpoint through `load_segmentation_model` instead."""
    return _segformer(id2label, {}, overrides)


def tiny_deeplabv3_resnet(id2label: Mapping[int, str], **overrides) -> DeepLabV3ForSemanticSegmentation:
    """Tiny teacher (~0.84 M params with 19 classes): timm ResNet-18 layout with 16/32/64/128 channels and a
    deep 8-wide stem, OS 8, 32-wide ASPP, auxiliary head. Random init."""
    defaults = dict(
        backbone="resnet18",
        backbone_kwargs={"channels": (16, 32, 64, 128), "stem_type": "deep", "stem_width": 8},
        use_pretrained_backbone=False,
        output_stride=8,
        atrous_rates=(2, 4, 6),  # tiny inputs (stride-8 maps of ~8x16): 12/24/36 would sample only padding
        aspp_channels=32,
        use_auxiliary_head=True,
        auxiliary_channels=16,
    )
    return _deeplabv3(id2label, defaults, overrides)


def tiny_deeplabv3_mobilenetv2(id2label: Mapping[int, str], **overrides) -> DeepLabV3ForSemanticSegmentation:
    """Tiny student (~0.22 M params with 19 classes): timm MobileNetV2 x0.35, half depth, OS 8, 16-wide ASPP,
    auxiliary head. Random init."""
    defaults = dict(
        backbone="mobilenetv2_035",
        backbone_kwargs={"depth_multiplier": 0.5},
        use_pretrained_backbone=False,
        output_stride=8,
        atrous_rates=(2, 4, 6),
        aspp_channels=16,
        use_auxiliary_head=True,
        auxiliary_channels=16,
    )
    return _deeplabv3(id2label, defaults, overrides)


def tiny_segformer(id2label: Mapping[int, str], **overrides) -> SegformerForSemanticSegmentation:
    """Tiny SegFormer (MiT layout, one block per stage, 16..128 channels, 32-wide decoder). Random init."""
    defaults = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 4, 8], decoder_hidden_size=32)
    return _segformer(id2label, defaults, overrides)


def micro_segformer(id2label: Mapping[int, str], **overrides) -> SegformerForSemanticSegmentation:
    """Micro SegFormer (~0.11 M params; 8..64 channels, one block per stage, 16-wide decoder): the quality
    benchmark's student, small and fast enough for 5 seeds per row on 2 CPU cores, with room below its teacher.
    Random init."""
    defaults = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 4], decoder_hidden_size=16)
    return _segformer(id2label, defaults, overrides)


def small_segformer(id2label: Mapping[int, str], **overrides) -> SegformerForSemanticSegmentation:
    """Small SegFormer (~2.1 M params; 32..256 channels, 1/2/2/1 blocks, 64-wide decoder): the teacher of the
    CPU default run, where it learns the synthetic task within a minute. Random init."""
    defaults = dict(hidden_sizes=[32, 64, 128, 256], depths=[1, 2, 2, 1], num_attention_heads=[1, 2, 4, 8], decoder_hidden_size=64)
    return _segformer(id2label, defaults, overrides)


def tiny_mobilenetv2_deeplabv3(id2label: Mapping[int, str], **overrides) -> MobileNetV2ForSemanticSegmentation:
    """transformers' MobileNetV2 with its DeepLabV3 head, depth multiplier 0.35, OS 8. Random init.

    The head's 256 width is fixed by transformers, so this model is head-heavy."""
    defaults = dict(
        depth_multiplier=0.35,
        output_stride=8,
        finegrained_output=False,  # the unused 1280-wide last conv would otherwise be most of the parameters
        classifier_dropout_prob=0.1,
    )
    return MobileNetV2ForSemanticSegmentation(MobileNetV2Config(**{**defaults, **overrides}, **_label_maps(id2label)))


def tiny_upernet(id2label: Mapping[int, str], **overrides) -> UperNetForSemanticSegmentation:
    """UperNet on a tiny transformers ResNet (basic blocks, 16..128 channels), passed as a sub-config (never a Hub
    name, so nothing is downloaded). Logits come out at full input resolution (UperNet upsamples them)."""
    backbone_config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    defaults = dict(backbone_config=backbone_config, hidden_size=32, auxiliary_channels=16, use_auxiliary_head=True)
    return UperNetForSemanticSegmentation(UperNetConfig(**{**defaults, **overrides}, **_label_maps(id2label)))


SEGMENTATION_PRESETS: dict[str, Callable[..., PreTrainedModel]] = {
    "deeplabv3-resnet101": deeplabv3_resnet101,
    "deeplabv3-resnet50": deeplabv3_resnet50,
    "deeplabv3-resnet18": deeplabv3_resnet18,
    "deeplabv3-mobilenetv2": deeplabv3_mobilenetv2,
    "segformer-b0": segformer_b0,
    "tiny-deeplabv3-resnet": tiny_deeplabv3_resnet,
    "tiny-deeplabv3-mobilenetv2": tiny_deeplabv3_mobilenetv2,
    "tiny-segformer": tiny_segformer,
    "micro-segformer": micro_segformer,
    "small-segformer": small_segformer,
    "tiny-mobilenetv2-deeplabv3": tiny_mobilenetv2_deeplabv3,
    "tiny-upernet": tiny_upernet,
}


def _looks_local(name_or_path: str) -> bool:
    # Hub ids are "org/name" (one slash, no leading dot/slash/tilde); anything else can only be a folder.
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or name_or_path.count("/") > 1
        or "\\" in name_or_path
        or "/" not in name_or_path
    )


def resolve_model_path(name_or_path: str, presets: Mapping[str, Callable], what: str) -> str:
    """The folder (``~`` expanded) or Hub id to load; a local-looking name that is neither one of ``presets`` nor an
    existing folder raises FileNotFoundError with the closest preset and the list of them."""
    expanded = os.path.expanduser(name_or_path)
    if os.path.exists(expanded):
        return expanded
    if _looks_local(name_or_path):
        close = difflib.get_close_matches(name_or_path, list(presets), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FileNotFoundError(
            f"{name_or_path!r} is not a {what} name and no such folder exists.{hint} "
            f"Presets: {', '.join(presets)}. Hub ids look like 'org/name'."
        )
    return name_or_path


def load_segmentation_model(
    name_or_path: str,
    id2label: dict[int, str] | None = None,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> PreTrainedModel:
    """Build a preset by name, or load a model from a local folder / Hub id.

    Args:
        name_or_path: a key of `SEGMENTATION_PRESETS`, a folder written by `save_pretrained`, or a Hub id ("org/name").
        id2label: the dataset's classes; required for presets. For loaded models it is NOT applied: the head is
            never silently resized. Compare the label sets with `describe_label_mismatch(model.config.id2label,
            id2label)` and decide.
        trust_remote_code, revision: passed to `AutoModelForSemanticSegmentation.from_pretrained`.

    Raises:
        ValueError: a preset without `id2label`.
        FileNotFoundError: a name that is neither a preset nor an existing folder nor shaped like a Hub id.
    """
    if name_or_path in SEGMENTATION_PRESETS:
        if id2label is None:
            raise ValueError(f"Preset {name_or_path!r} needs id2label (the dataset's classes) to size its classifier.")
        return SEGMENTATION_PRESETS[name_or_path](id2label)
    return AutoModelForSemanticSegmentation.from_pretrained(
        resolve_model_path(name_or_path, SEGMENTATION_PRESETS, "preset"),
        trust_remote_code=trust_remote_code,
        revision=revision,
    )


def describe_label_mismatch(
    id2label_a: Mapping[int, str], id2label_b: Mapping[int, str], *, name_a: str = "A", name_b: str = "B"
) -> str | None:
    """None when both maps give the same class to every id; otherwise a one-paragraph message naming the classes
    only in A, only in B, and the ids whose class differs (same classes in a different order)."""
    a = {int(k): str(v) for k, v in id2label_a.items()}
    b = {int(k): str(v) for k, v in id2label_b.items()}
    if a == b:
        return None
    only_a = [name for _, name in sorted(a.items()) if name not in set(b.values())]
    only_b = [name for _, name in sorted(b.items()) if name not in set(a.values())]
    parts = [f"Label sets differ ({name_a}: {len(a)} classes, {name_b}: {len(b)} classes)."]
    if only_a:
        parts.append(f"Only in {name_a}: {', '.join(map(repr, only_a))}.")
    if only_b:
        parts.append(f"Only in {name_b}: {', '.join(map(repr, only_b))}.")
    common = set(a.values()) & set(b.values())
    a_ids = {name: i for i, name in a.items()}
    b_ids = {name: i for i, name in b.items()}
    moved = sorted((name for name in common if a_ids[name] != b_ids[name]), key=lambda n: a_ids[n])
    if moved:
        shown = ", ".join(f"{name!r} ({name_a} id {a_ids[name]}, {name_b} id {b_ids[name]})" for name in moved[:10])
        more = f" and {len(moved) - 10} more" if len(moved) > 10 else ""
        parts.append(f"Different order: {shown}{more}.")
    return " ".join(parts)


def default_image_processor(image_size: tuple[int, int]) -> SegformerImageProcessor:
    """The processor to save next to a segmentation checkpoint so `pipeline("image-segmentation")` works: resize to
    `image_size` = (height, width) (the training resolution), rescale to [0, 1], ImageNet mean/std, labels kept as
    they are (`do_reduce_labels=False`: 255 is already the ignore value)."""
    height, width = (int(s) for s in image_size)
    return SegformerImageProcessor(
        do_resize=True,
        size={"height": height, "width": width},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_reduce_labels=False,
    )
