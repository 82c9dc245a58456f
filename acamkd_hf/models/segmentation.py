"""Named segmentation models for the CLI and the tests, loading by Hub id / folder, and the processor saved with a
segmentation checkpoint.

Two kinds of presets:
- the paper's architectures at full size (`deeplabv3-resnet101` teacher; `deeplabv3-resnet18`,
  `deeplabv3-mobilenetv2` students; plus `deeplabv3-resnet50` and `segformer-b0`). The DeepLabV3 ones start from
  timm's ImageNet backbones as in the paper, so building them downloads backbone weights once (offline:
  `pretrained_backbone=False` for a random-initialised backbone, or `backbone_weights=<local file or folder>`;
  `--pretrained_backbone false` / `--backbone_weights PATH` on the command line; see `backbone_weights`).
- tiny random-init models (`tiny-*`, `micro-*`, `small-*`) for the tests and the CPU default run. They never touch
  the network. `tiny-deeplabv3-mobilenetv2-timm` is our DeepLabV3 (ASPP head) on a timm MobileNetV2;
  `tiny-mobilenetv2-hf-deeplabv3` is transformers' own `MobileNetV2ForSemanticSegmentation` (its DeepLabV3 head);
  one per transformers family (`tiny-dpt`, `tiny-dpt-hybrid`, `tiny-beit`, `tiny-mobilevit`, `tiny-mobilevitv2`,
  UperNet on each backbone: `tiny-upernet` (ResNet), `-convnext`, `-swin`, `-dinov3` (ViT), `-dinov3-convnext`),
  every backbone a sub-config.

Every builder has the signature `builder(id2label: dict[int, str], **overrides) -> PreTrainedModel`; `overrides`
replace config fields (e.g. `use_pretrained_backbone=False`, `output_stride=16`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from transformers import (
    AutoModelForSemanticSegmentation,
    BeitConfig,
    BeitForSemanticSegmentation,
    BitConfig,
    ConvNextConfig,
    DINOv3ConvNextConfig,
    DINOv3ViTConfig,
    DPTConfig,
    DPTForSemanticSegmentation,
    MobileNetV2Config,
    MobileNetV2ForSemanticSegmentation,
    MobileViTConfig,
    MobileViTForSemanticSegmentation,
    MobileViTV2Config,
    MobileViTV2ForSemanticSegmentation,
    PreTrainedModel,
    ResNetConfig,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    SwinConfig,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..families.segmentation import segmentation_support
from .backbone_weights import build_deeplabv3
from .deeplabv3 import DeepLabV3Config, DeepLabV3ForSemanticSegmentation
from .loading import label_maps, load_model


def _deeplabv3(
    id2label: Mapping[int, str], defaults: dict, overrides: dict, backbone_weights: str | None = None
) -> DeepLabV3ForSemanticSegmentation:
    """``backbone_weights``: a local copy of the backbone's ImageNet weights (file or folder), used instead of the
    download (with ``use_pretrained_backbone`` true; the config records no path)."""
    config = DeepLabV3Config(**{**defaults, **overrides}, **label_maps(id2label))
    return build_deeplabv3(config, backbone_weights)


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


def deeplabv3_resnet101(
    id2label: Mapping[int, str], *, backbone_weights: str | None = None, **overrides
) -> DeepLabV3ForSemanticSegmentation:
    """The paper's segmentation teacher (DeepLabV3-R101, OS 8), ImageNet backbone (downloads from the Hub)."""
    return _deeplabv3(id2label, dict(_PAPER_DEEPLABV3, backbone="resnet101"), overrides, backbone_weights)


def deeplabv3_resnet50(
    id2label: Mapping[int, str], *, backbone_weights: str | None = None, **overrides
) -> DeepLabV3ForSemanticSegmentation:
    """DeepLabV3-R50, OS 8, ImageNet backbone (downloads from the Hub)."""
    return _deeplabv3(id2label, dict(_PAPER_DEEPLABV3, backbone="resnet50"), overrides, backbone_weights)


def deeplabv3_resnet18(
    id2label: Mapping[int, str], *, backbone_weights: str | None = None, **overrides
) -> DeepLabV3ForSemanticSegmentation:
    """The paper's DeepLabV3-R18 student, OS 8, ImageNet backbone (downloads from the Hub)."""
    return _deeplabv3(id2label, dict(_PAPER_DEEPLABV3, backbone="resnet18"), overrides, backbone_weights)


def deeplabv3_mobilenetv2(
    id2label: Mapping[int, str], *, backbone_weights: str | None = None, **overrides
) -> DeepLabV3ForSemanticSegmentation:
    """The paper's DeepLabV3-MobileNetV2 student, OS 8, ImageNet backbone (downloads from the Hub)."""
    return _deeplabv3(id2label, dict(_PAPER_DEEPLABV3, backbone="mobilenetv2_100"), overrides, backbone_weights)


def _segformer(id2label: Mapping[int, str], defaults: dict, overrides: dict) -> SegformerForSemanticSegmentation:
    return SegformerForSemanticSegmentation(SegformerConfig(**{**defaults, **overrides}, **label_maps(id2label)))


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


def tiny_deeplabv3_mobilenetv2_timm(id2label: Mapping[int, str], **overrides) -> DeepLabV3ForSemanticSegmentation:
    """Tiny student (~0.22 M params with 19 classes): our DeepLabV3 (ASPP head, `timm_deeplabv3`) on a timm
    MobileNetV2 x0.35, half depth, OS 8, 16-wide ASPP, auxiliary head. Random init."""
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


def tiny_mobilenetv2_hf_deeplabv3(id2label: Mapping[int, str], **overrides) -> MobileNetV2ForSemanticSegmentation:
    """transformers' `MobileNetV2ForSemanticSegmentation` (its own DeepLabV3 head), depth multiplier 0.35, OS 8.
    Random init.

    The head's 256 width is fixed by transformers, so this model is head-heavy."""
    defaults = dict(
        depth_multiplier=0.35,
        output_stride=8,
        finegrained_output=False,  # the unused 1280-wide last conv would otherwise be most of the parameters
        classifier_dropout_prob=0.1,
    )
    return MobileNetV2ForSemanticSegmentation(MobileNetV2Config(**{**defaults, **overrides}, **label_maps(id2label)))


def _upernet(id2label: Mapping[int, str], backbone_config, overrides: dict) -> UperNetForSemanticSegmentation:
    """UperNet (32-wide head, 16-wide auxiliary FCN head) on ``backbone_config``, a sub-config (never a Hub name, so
    nothing is downloaded). Logits come out at full input resolution (UperNet upsamples them)."""
    defaults = dict(backbone_config=backbone_config, hidden_size=32, auxiliary_channels=16, use_auxiliary_head=True)
    return UperNetForSemanticSegmentation(UperNetConfig(**{**defaults, **overrides}, **label_maps(id2label)))


_FOUR_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def tiny_upernet(id2label: Mapping[int, str], **overrides) -> UperNetForSemanticSegmentation:
    """UperNet on a tiny transformers ResNet (basic blocks, 16..128 channels, strides 4..32). Random init."""
    backbone_config = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic",
        out_features=_FOUR_STAGES,
    )
    return _upernet(id2label, backbone_config, overrides)


def tiny_upernet_convnext(id2label: Mapping[int, str], **overrides) -> UperNetForSemanticSegmentation:
    """UperNet on a tiny ConvNeXt (one block per stage, 8..32 channels, strides 4..32). Random init."""
    backbone_config = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=_FOUR_STAGES)
    return _upernet(id2label, backbone_config, overrides)


def tiny_upernet_swin(id2label: Mapping[int, str], **overrides) -> UperNetForSemanticSegmentation:
    """UperNet on a tiny Swin (one block per stage, 8..64 channels, 4x4 windows, strides 4..32). Random init."""
    backbone_config = SwinConfig(
        patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4], window_size=4, out_features=_FOUR_STAGES
    )
    return _upernet(id2label, backbone_config, overrides)


def tiny_upernet_dinov3(id2label: Mapping[int, str], **overrides) -> UperNetForSemanticSegmentation:
    """UperNet on a tiny DINOv3 ViT (4 layers of width 32, patch 16, 4 register tokens): its four stages are the
    layers' patch tokens as maps, all at stride 16 (a plain ViT has no pyramid). Random init."""
    backbone_config = DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=16,
        out_features=_FOUR_STAGES,
    )
    return _upernet(id2label, backbone_config, overrides)


def tiny_upernet_dinov3_convnext(id2label: Mapping[int, str], **overrides) -> UperNetForSemanticSegmentation:
    """UperNet on a tiny DINOv3 ConvNeXt (one block per stage, 8..32 channels, strides 4..32). Random init."""
    backbone_config = DINOv3ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=_FOUR_STAGES)
    return _upernet(id2label, backbone_config, overrides)


# A ViT of 4 layers, width 32, 16x16 patches, shared by the DPT and BEiT presets.
_TINY_VIT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=16)


def tiny_dpt(id2label: Mapping[int, str], **overrides) -> DPTForSemanticSegmentation:
    """DPT on a tiny ViT (every layer reassembled to 8/16/32/64 channels at strides 4..32, 16-wide fusion), logits at
    full resolution. Random init. Inputs must be square: transformers' DPT reads its token grid as a square."""
    defaults = dict(
        _TINY_VIT, image_size=64, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 64],
        fusion_hidden_size=16,
    )
    return DPTForSemanticSegmentation(DPTConfig(**{**defaults, **overrides}, **label_maps(id2label)))


def tiny_dpt_hybrid(id2label: Mapping[int, str], *, image_size: int = 64, **overrides) -> DPTForSemanticSegmentation:
    """DPT-Hybrid: a tiny BiT (bottleneck blocks, 16/32/64 channels at strides 4/8/16) under a tiny ViT on its
    stride-16 map; the neck reads BiT's stage1 and stage2 maps and the last two ViT layers. Random init. Inputs
    must be ``image_size`` x ``image_size`` exactly (transformers' DPT-Hybrid checks it)."""
    backbone_config = BitConfig(
        layer_type="bottleneck", global_padding="same", embedding_dynamic_padding=True, embedding_size=16,
        hidden_sizes=[16, 32, 64], depths=[1, 1, 1], num_groups=8, out_features=["stage1", "stage2", "stage3"],
    )
    defaults = dict(
        _TINY_VIT, is_hybrid=True, backbone_config=backbone_config, image_size=image_size,
        backbone_featmap_shape=[1, backbone_config.hidden_sizes[-1], image_size // 16, image_size // 16],
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[*backbone_config.hidden_sizes[:2], 32, 64],
        fusion_hidden_size=16,
    )
    return DPTForSemanticSegmentation(DPTConfig(**{**defaults, **overrides}, **label_maps(id2label)))


def tiny_beit(id2label: Mapping[int, str], **overrides) -> BeitForSemanticSegmentation:
    """BEiT on a tiny ViT (relative position bias), its FPN neck at strides 4..32 (32 channels) and UperNet head
    (logits at stride 4), auxiliary FCN head. Random init. As in every BEiT segmenter, the last layer's output is not
    read (config.out_indices [1, 2, 3, 4] pick the patch embeddings and layers 1..3)."""
    defaults = dict(
        _TINY_VIT, image_size=64, out_indices=[1, 2, 3, 4], use_relative_position_bias=True, use_auxiliary_head=True,
        auxiliary_channels=16,
    )
    return BeitForSemanticSegmentation(BeitConfig(**{**defaults, **overrides}, **label_maps(id2label)))


def tiny_mobilevit(id2label: Mapping[int, str], **overrides) -> MobileViTForSemanticSegmentation:
    """MobileViT (stages of 16/16/24/32 channels, transformer widths 16/24/32) with its DeepLabV3 head (16-wide
    ASPP), output stride 8. Random init."""
    defaults = dict(
        hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2,
        expand_ratio=2.0, output_stride=8, aspp_out_channels=16, atrous_rates=[2, 4, 6],
    )
    return MobileViTForSemanticSegmentation(MobileViTConfig(**{**defaults, **overrides}, **label_maps(id2label)))


def tiny_mobilevitv2(id2label: Mapping[int, str], **overrides) -> MobileViTV2ForSemanticSegmentation:
    """MobileViTV2 x0.25 (stages of 32/64/96/128 channels, one attention block each) with its DeepLabV3 head
    (16-wide ASPP), output stride 8. Random init."""
    defaults = dict(
        width_multiplier=0.25, n_attn_blocks=[1, 1, 1], output_stride=8, aspp_out_channels=16, atrous_rates=[2, 4, 6]
    )
    return MobileViTV2ForSemanticSegmentation(MobileViTV2Config(**{**defaults, **overrides}, **label_maps(id2label)))


SEGMENTATION_PRESETS: dict[str, Callable[..., PreTrainedModel]] = {
    "deeplabv3-resnet101": deeplabv3_resnet101,
    "deeplabv3-resnet50": deeplabv3_resnet50,
    "deeplabv3-resnet18": deeplabv3_resnet18,
    "deeplabv3-mobilenetv2": deeplabv3_mobilenetv2,
    "segformer-b0": segformer_b0,
    "tiny-deeplabv3-resnet": tiny_deeplabv3_resnet,
    "tiny-deeplabv3-mobilenetv2-timm": tiny_deeplabv3_mobilenetv2_timm,
    "tiny-segformer": tiny_segformer,
    "micro-segformer": micro_segformer,
    "small-segformer": small_segformer,
    "tiny-mobilenetv2-hf-deeplabv3": tiny_mobilenetv2_hf_deeplabv3,
    "tiny-upernet": tiny_upernet,
    "tiny-upernet-convnext": tiny_upernet_convnext,
    "tiny-upernet-swin": tiny_upernet_swin,
    "tiny-upernet-dinov3": tiny_upernet_dinov3,
    "tiny-upernet-dinov3-convnext": tiny_upernet_dinov3_convnext,
    "tiny-dpt": tiny_dpt,
    "tiny-dpt-hybrid": tiny_dpt_hybrid,
    "tiny-beit": tiny_beit,
    "tiny-mobilevit": tiny_mobilevit,
    "tiny-mobilevitv2": tiny_mobilevitv2,
}

def load_segmentation_model(
    name_or_path: str,
    id2label: dict[int, str] | None = None,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    role: str = "model",
    **preset_overrides,
) -> PreTrainedModel:
    """Build a preset by name, or load a model from a local folder / Hub id.

    Args:
        name_or_path: a key of `SEGMENTATION_PRESETS`, a folder written by `save_pretrained`, or a Hub id ("org/name").
        id2label: the dataset's classes; required for presets. For a loaded model whose label set differs, the model
            is loaded with these labels and ``ignore_mismatched_sizes=True`` (as transformers'
            run_semantic_segmentation.py does) and one line names the head weights that start anew
            (:func:`acamkd_hf.models.labels.load_pretrained_for_labels`). None: loaded with its own labels.
        trust_remote_code, revision: passed to `AutoModelForSemanticSegmentation.from_pretrained`.
        role: how the model is named in messages ("student", "teacher").
        preset_overrides: for presets only: config fields, and ``backbone_weights`` for the DeepLabV3 presets with
            an ImageNet backbone (see :func:`~acamkd_hf.models.backbone_weights.preset_options`).

    Raises:
        ValueError: a preset without `id2label`; a checkpoint of an architecture without a segmentation head.
        FileNotFoundError: a name that is neither a preset nor an existing folder nor shaped like a Hub id.
        BackboneDownloadError: a preset's ImageNet backbone could not be downloaded.
    """
    return load_model(
        name_or_path,
        id2label,
        SEGMENTATION_PRESETS,
        auto_class=AutoModelForSemanticSegmentation,
        what="preset",
        task="semantic-segmentation",
        families=segmentation_support(),
        role=role,
        trust_remote_code=trust_remote_code,
        revision=revision,
        preset_options=preset_overrides,
    )


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


__all__ = [
    "SEGMENTATION_PRESETS",
    "default_image_processor",
    "load_segmentation_model",
]
