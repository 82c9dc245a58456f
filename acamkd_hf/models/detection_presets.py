"""Named object-detection architectures for the CLI and the tests, random-init: nothing is downloaded. For pretrained
detectors pass a Hub id to :func:`acamkd_hf.models.load_detection_model` instead.

Two kinds of presets:
- the paper-scale architectures (`detr-resnet101`, `detr-resnet50`, `rtdetr-resnet101`, `rtdetr-resnet50`,
  `rtdetr-resnet18`, `deformable-detr-resnet50`), laid out as the public checkpoints (facebook/detr-resnet-50,
  PekingU/rtdetr_r50vd, SenseTime/deformable-detr, ...).
- tiny models (`tiny-*`), one teacher and one smaller student per family, for the tests and the CPU default run: DETR,
  Conditional DETR, DAB-DETR, Deformable DETR, RT-DETR, RT-DETRv2, D-FINE, DEIMv2, LW-DETR and RF-DETR. Each builds
  and runs a forward at 64..128 px in well under a second on CPU. Teacher and student of a family share the neck and
  head widths and differ in the backbone, as the paper's R101 -> R50 pairs do, so
  `acamkd_hf.inheritance.inherit_from_teacher` copies everything but the backbone (and the layers that read its
  channels). Backbones are sub-configs (transformers ResNet / ResNet-vd / HGNetV2, or the families' own ViTs), never a
  timm or Hub name that would download.

Every builder has the signature `builder(id2label, *, freeze_backbone=False, **overrides) -> PreTrainedModel`;
`overrides` replace config fields; backbone freezing is decided by `freeze_backbone` alone
(:func:`acamkd_hf.models.freezing.set_backbone_frozen`). :data:`DETECTION_PRESET_FAMILIES` gives each preset's
transformers model_type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from transformers import (
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    DabDetrConfig,
    DabDetrForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    Deimv2Config,
    Deimv2ForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    DFineConfig,
    DFineForObjectDetection,
    HGNetV2Config,
    LwDetrConfig,
    LwDetrForObjectDetection,
    LwDetrViTConfig,
    PreTrainedModel,
    ResNetConfig,
    RfDetrConfig,
    RfDetrForObjectDetection,
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrResNetConfig,
    RTDetrV2Config,
    RTDetrV2ForObjectDetection,
    TimmBackboneConfig,
)
from transformers.models.rf_detr.configuration_rf_detr import RfDetrDinov2Config

from .freezing import set_backbone_frozen
from .loading import label_maps

Labels = Mapping[int, str]


def _build(config_class, model_class, id2label, defaults: dict, overrides: dict, freeze_backbone: bool):
    """``model_class(config_class(defaults | overrides, labels))`` with the backbone frozen or trainable as asked."""
    config = config_class(**{**defaults, **overrides}, **label_maps(id2label))
    return set_backbone_frozen(model_class(config), bool(freeze_backbone))


# ---------------------------------------------------------------------------------------------------------------------
# Paper-scale architectures (random init)


def _timm_resnet(name: str, out_indices: list[int]) -> TimmBackboneConfig:
    # The layout of facebook/detr-resnet-50 and SenseTime/deformable-detr (timm ResNet, features_only).
    return TimmBackboneConfig(backbone=name, out_indices=out_indices)


def detr_resnet101(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> DetrForObjectDetection:
    """DETR-R101 (facebook/detr-resnet-101 layout: timm ResNet-101, 6+6 layers, d_model 256, 100 queries)."""
    defaults = dict(backbone_config=_timm_resnet("resnet101", [1, 2, 3, 4]))
    return _build(DetrConfig, DetrForObjectDetection, id2label, defaults, overrides, freeze_backbone)


def detr_resnet50(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> DetrForObjectDetection:
    """DETR-R50 (facebook/detr-resnet-50 layout: timm ResNet-50, 6+6 layers, d_model 256, 100 queries)."""
    defaults = dict(backbone_config=_timm_resnet("resnet50", [1, 2, 3, 4]))
    return _build(DetrConfig, DetrForObjectDetection, id2label, defaults, overrides, freeze_backbone)


def _rtdetr_resnet_backbone(depths, layer_type="bottleneck", hidden_sizes=(256, 512, 1024, 2048), embedding_size=64):
    return RTDetrResNetConfig(
        embedding_size=embedding_size,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        layer_type=layer_type,
        out_indices=[2, 3, 4],
    )


def rtdetr_resnet101(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> RTDetrForObjectDetection:
    """RT-DETR-R101vd (PekingU/rtdetr_r101vd layout: 384-wide hybrid encoder with a 2048 FFN, 256-wide decoder)."""
    defaults = dict(
        backbone_config=_rtdetr_resnet_backbone([3, 4, 23, 3]),
        encoder_hidden_dim=384,
        encoder_ffn_dim=2048,
        decoder_in_channels=[384, 384, 384],
    )
    return _build(RTDetrConfig, RTDetrForObjectDetection, id2label, defaults, overrides, freeze_backbone)


def rtdetr_resnet50(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> RTDetrForObjectDetection:
    """RT-DETR-R50vd (PekingU/rtdetr_r50vd layout = transformers' RTDetrConfig defaults)."""
    defaults = dict(backbone_config=_rtdetr_resnet_backbone([3, 4, 6, 3]))
    return _build(RTDetrConfig, RTDetrForObjectDetection, id2label, defaults, overrides, freeze_backbone)


def rtdetr_resnet18(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> RTDetrForObjectDetection:
    """RT-DETR-R18vd (PekingU/rtdetr_r18vd layout: basic blocks, half-width CSP blocks, 3 decoder layers)."""
    defaults = dict(
        backbone_config=_rtdetr_resnet_backbone([2, 2, 2, 2], "basic", (64, 128, 256, 512)),
        encoder_in_channels=[128, 256, 512],
        hidden_expansion=0.5,
        decoder_layers=3,
    )
    return _build(RTDetrConfig, RTDetrForObjectDetection, id2label, defaults, overrides, freeze_backbone)


def deformable_detr_resnet50(
    id2label: Labels, *, freeze_backbone: bool = False, **overrides
) -> DeformableDetrForObjectDetection:
    """Deformable DETR-R50 (SenseTime/deformable-detr layout: timm ResNet-50 stages 2-4 + one extra level, 6+6
    layers, 300 queries). Pure-PyTorch deformable attention on CPU."""
    defaults = dict(backbone_config=_timm_resnet("resnet50", [2, 3, 4]))
    return _build(DeformableDetrConfig, DeformableDetrForObjectDetection, id2label, defaults, overrides,
                  freeze_backbone)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny CPU models: a teacher and a smaller student per family, sharing every non-backbone width.

_TINY_TEACHER_WIDTHS = (32, 64, 128, 256)
_TINY_STUDENT_WIDTHS = (16, 32, 48, 64)


def _tiny_resnet(widths, out_features, *, rtdetr: bool = False):
    """A transformers ResNet of basic blocks, one per stage, stage widths ``widths`` (strides 4, 8, 16, 32). timm's
    channel widths cannot be set through TimmBackboneConfig, hence transformers' ResNet."""
    kwargs = dict(embedding_size=widths[0], hidden_sizes=list(widths), depths=[1, 1, 1, 1], layer_type="basic")
    if rtdetr:  # RT-DETR's basic ResNet needs embedding_size == hidden_sizes[0]
        return RTDetrResNetConfig(**kwargs, out_features=out_features)
    return ResNetConfig(**kwargs, out_features=out_features)


def _tiny_hgnetv2(widths) -> HGNetV2Config:
    """An HGNetV2 (D-FINE's and DEIMv2's backbone) with stage output widths ``widths`` at strides 4, 8, 16, 32, one
    block of two layers per stage, stages 2-4 out. Every channel list is derived from ``widths``: the backbone reports
    ``hidden_sizes`` as its channels, the stages build from ``stage_*_channels`` (they must agree)."""
    stem = widths[0] // 2
    return HGNetV2Config(
        stem_channels=[3, stem, stem], embedding_size=stem, stage_in_channels=[stem, *widths[:-1]],
        stage_mid_channels=[w // 2 for w in widths], stage_out_channels=list(widths), hidden_sizes=list(widths),
        depths=[1, 1, 1, 1], stage_num_blocks=[1, 1, 1, 1], stage_numb_of_layers=[2, 2, 2, 2],
        out_features=["stage2", "stage3", "stage4"],
    )


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


def _tiny_detr_like(config_class, model_class, id2label, widths, overrides, freeze_backbone, **extra):
    """DETR, Conditional DETR and DAB-DETR: the tiny transformer on a ResNet with stages 1-4 out."""
    backbone = _tiny_resnet(widths, ["stage1", "stage2", "stage3", "stage4"])
    defaults = dict(_TINY_DETR, backbone_config=backbone, **extra)
    return _build(config_class, model_class, id2label, defaults, overrides, freeze_backbone)


def tiny_detr_resnet(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> DetrForObjectDetection:
    """Tiny DETR teacher: ResNet 32/64/128/256 (basic, one block per stage), 2+2 layers, d_model 64, 20 queries."""
    return _tiny_detr_like(DetrConfig, DetrForObjectDetection, id2label, _TINY_TEACHER_WIDTHS, overrides,
                           freeze_backbone)


def tiny_detr_resnet_student(
    id2label: Labels, *, freeze_backbone: bool = False, **overrides
) -> DetrForObjectDetection:
    """Tiny DETR student: the teacher's transformer and heads on a ResNet 16/32/48/64."""
    return _tiny_detr_like(DetrConfig, DetrForObjectDetection, id2label, _TINY_STUDENT_WIDTHS, overrides,
                           freeze_backbone)


def tiny_conditional_detr(
    id2label: Labels, *, freeze_backbone: bool = False, **overrides
) -> ConditionalDetrForObjectDetection:
    """Tiny Conditional DETR teacher: tiny DETR's layout (ResNet 32..256, 2+2 layers, d_model 64, 20 queries)."""
    return _tiny_detr_like(ConditionalDetrConfig, ConditionalDetrForObjectDetection, id2label, _TINY_TEACHER_WIDTHS,
                           overrides, freeze_backbone)


def tiny_conditional_detr_student(
    id2label: Labels, *, freeze_backbone: bool = False, **overrides
) -> ConditionalDetrForObjectDetection:
    """Tiny Conditional DETR student: the teacher's transformer and heads on a ResNet 16/32/48/64."""
    return _tiny_detr_like(ConditionalDetrConfig, ConditionalDetrForObjectDetection, id2label, _TINY_STUDENT_WIDTHS,
                           overrides, freeze_backbone)


def _tiny_dab_detr(id2label, widths, overrides, freeze_backbone) -> DabDetrForObjectDetection:
    # DAB-DETR names its width hidden_size (d_model is derived)
    defaults = {key: value for key, value in _TINY_DETR.items() if key != "d_model"}
    backbone = _tiny_resnet(widths, ["stage1", "stage2", "stage3", "stage4"])
    defaults.update(hidden_size=_TINY_DETR["d_model"], backbone_config=backbone)
    return _build(DabDetrConfig, DabDetrForObjectDetection, id2label, defaults, overrides, freeze_backbone)


def tiny_dab_detr(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> DabDetrForObjectDetection:
    """Tiny DAB-DETR teacher: tiny DETR's layout (ResNet 32..256, 2+2 layers, width 64, 20 anchor queries)."""
    return _tiny_dab_detr(id2label, _TINY_TEACHER_WIDTHS, overrides, freeze_backbone)


def tiny_dab_detr_student(
    id2label: Labels, *, freeze_backbone: bool = False, **overrides
) -> DabDetrForObjectDetection:
    """Tiny DAB-DETR student: the teacher's transformer and heads on a ResNet 16/32/48/64."""
    return _tiny_dab_detr(id2label, _TINY_STUDENT_WIDTHS, overrides, freeze_backbone)


_TINY_DEFORMABLE = dict(
    _TINY_DETR,  # d_model 64: a multiple of 32, the input projections use GroupNorm(32, d_model)
    encoder_layers=1,
    decoder_layers=2,  # transformers 5.x: 1 decoder layer fails in post_init (bbox_embed weight tying)
    num_feature_levels=4,
    encoder_n_points=2,
    decoder_n_points=2,
)


def _tiny_deformable(id2label, widths, overrides, freeze_backbone) -> DeformableDetrForObjectDetection:
    defaults = dict(_TINY_DEFORMABLE, backbone_config=_tiny_resnet(widths, ["stage2", "stage3", "stage4"]))
    return _build(DeformableDetrConfig, DeformableDetrForObjectDetection, id2label, defaults, overrides,
                  freeze_backbone)


def tiny_deformable_detr(
    id2label: Labels, *, freeze_backbone: bool = False, **overrides
) -> DeformableDetrForObjectDetection:
    """Tiny Deformable DETR teacher: ResNet 32/64/128/256 stages 2-4 + one extra level, 1+2 layers, d_model 64."""
    return _tiny_deformable(id2label, _TINY_TEACHER_WIDTHS, overrides, freeze_backbone)


def tiny_deformable_detr_student(
    id2label: Labels, *, freeze_backbone: bool = False, **overrides
) -> DeformableDetrForObjectDetection:
    """Tiny Deformable DETR student: the teacher's transformer on a ResNet 16/32/48/64."""
    return _tiny_deformable(id2label, _TINY_STUDENT_WIDTHS, overrides, freeze_backbone)


#: The real-time DETRs (RT-DETR, RT-DETRv2, D-FINE, DEIMv2): 64-wide hybrid encoder and decoder, 30 queries.
_TINY_REALTIME = dict(
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
    # weights, but a random-init frozen BN is the identity and the tiny backbone then barely trains).
    freeze_backbone_batch_norms=False,
)
#: D-FINE / DEIMv2 blocks: round(3 * depth_mult) = 1 RepVGG block per CSP branch (D-FINE-S's 0.34).
_TINY_DFINE = dict(_TINY_REALTIME, depth_mult=0.34)


def _tiny_realtime(config_class, model_class, id2label, widths, overrides, freeze_backbone):
    """A real-time DETR on stages 2-4 (strides 8, 16, 32) of a tiny ResNet-vd (RT-DETR, RT-DETRv2) or HGNetV2."""
    if config_class in (RTDetrConfig, RTDetrV2Config):
        backbone = _tiny_resnet(widths, ["stage2", "stage3", "stage4"], rtdetr=True)
        defaults = dict(_TINY_REALTIME, backbone_config=backbone)
    else:
        defaults = dict(_TINY_DFINE, backbone_config=_tiny_hgnetv2(widths))
    defaults["encoder_in_channels"] = list(widths[1:])
    return _build(config_class, model_class, id2label, defaults, overrides, freeze_backbone)


def tiny_rtdetr_resnet(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> RTDetrForObjectDetection:
    """Tiny RT-DETR teacher: ResNet-vd 32/64/128/256 (basic), 64-wide hybrid encoder, 2 decoder layers, 30 queries."""
    return _tiny_realtime(RTDetrConfig, RTDetrForObjectDetection, id2label, _TINY_TEACHER_WIDTHS, overrides,
                          freeze_backbone)


def tiny_rtdetr_resnet_student(
    id2label: Labels, *, freeze_backbone: bool = False, **overrides
) -> RTDetrForObjectDetection:
    """Tiny RT-DETR student: the teacher's encoder/decoder widths on a ResNet-vd 16/32/48/64."""
    return _tiny_realtime(RTDetrConfig, RTDetrForObjectDetection, id2label, _TINY_STUDENT_WIDTHS, overrides,
                          freeze_backbone)


def tiny_rtdetrv2(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> RTDetrV2ForObjectDetection:
    """Tiny RT-DETRv2 teacher: tiny RT-DETR's layout (ResNet-vd 32..256) with RT-DETRv2's decoder."""
    return _tiny_realtime(RTDetrV2Config, RTDetrV2ForObjectDetection, id2label, _TINY_TEACHER_WIDTHS, overrides,
                          freeze_backbone)


def tiny_rtdetrv2_student(
    id2label: Labels, *, freeze_backbone: bool = False, **overrides
) -> RTDetrV2ForObjectDetection:
    """Tiny RT-DETRv2 student: the teacher's encoder/decoder widths on a ResNet-vd 16/32/48/64."""
    return _tiny_realtime(RTDetrV2Config, RTDetrV2ForObjectDetection, id2label, _TINY_STUDENT_WIDTHS, overrides,
                          freeze_backbone)


def tiny_dfine(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> DFineForObjectDetection:
    """Tiny D-FINE teacher: HGNetV2 32/64/128/256, 64-wide hybrid encoder, 2 decoder layers, 30 queries."""
    return _tiny_realtime(DFineConfig, DFineForObjectDetection, id2label, _TINY_TEACHER_WIDTHS, overrides,
                          freeze_backbone)


def tiny_dfine_student(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> DFineForObjectDetection:
    """Tiny D-FINE student: the teacher's encoder/decoder widths on an HGNetV2 16/32/48/64."""
    return _tiny_realtime(DFineConfig, DFineForObjectDetection, id2label, _TINY_STUDENT_WIDTHS, overrides,
                          freeze_backbone)


def tiny_deimv2(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> Deimv2ForObjectDetection:
    """Tiny DEIMv2 teacher (the HGNetV2 variant, hybrid encoder): HGNetV2 32/64/128/256, 64 wide, 30 queries."""
    return _tiny_realtime(Deimv2Config, Deimv2ForObjectDetection, id2label, _TINY_TEACHER_WIDTHS, overrides,
                          freeze_backbone)


def tiny_deimv2_student(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> Deimv2ForObjectDetection:
    """Tiny DEIMv2 student: the teacher's encoder/decoder widths on an HGNetV2 16/32/48/64."""
    return _tiny_realtime(Deimv2Config, Deimv2ForObjectDetection, id2label, _TINY_STUDENT_WIDTHS, overrides,
                          freeze_backbone)


#: LW-DETR / RF-DETR: decoder 64 wide (4 self- and 4 cross-attention heads), 20 queries, 3 query groups in training.
_TINY_VIT_DETR = dict(
    d_model=64,
    decoder_ffn_dim=128,
    decoder_layers=2,
    decoder_self_attention_heads=4,
    decoder_cross_attention_heads=4,
    decoder_n_points=2,
    num_queries=20,
    group_detr=3,
    c2f_num_blocks=1,
)
#: The ViTs: patch 16, position embeddings for 128 px, windows of 64 px (2x2 windows at 128 px) in every other layer.
_TINY_VIT = dict(image_size=128, patch_size=16, mlp_ratio=2)
#: (hidden size, layers, heads) of the teachers' and the students' ViTs.
_TINY_VIT_TEACHER, _TINY_VIT_STUDENT = (64, 4, 4), (32, 2, 2)


def _tiny_lw_detr(id2label, vit, overrides, freeze_backbone) -> LwDetrForObjectDetection:
    hidden, layers, heads = vit
    backbone = LwDetrViTConfig(**_TINY_VIT, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               pretrain_image_size=128, num_windows=4, window_block_indices=list(range(0, layers, 2)),
                               out_indices=list(range(1, layers + 1)))
    defaults = dict(_TINY_VIT_DETR, backbone_config=backbone, projector_scale_factors=[2.0, 0.5])
    return _build(LwDetrConfig, LwDetrForObjectDetection, id2label, defaults, overrides, freeze_backbone)


def tiny_lwdetr(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> LwDetrForObjectDetection:
    """Tiny LW-DETR teacher: ViT 64 wide, 4 layers (patch 16, 2x2 windows), projector at scales 2 and 0.5 (strides
    8 and 32, as LW-DETR-L/X), 2 decoder layers, 20 queries."""
    return _tiny_lw_detr(id2label, _TINY_VIT_TEACHER, overrides, freeze_backbone)


def tiny_lwdetr_student(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> LwDetrForObjectDetection:
    """Tiny LW-DETR student: the teacher's projector and decoder widths on a ViT 32 wide, 2 layers."""
    return _tiny_lw_detr(id2label, _TINY_VIT_STUDENT, overrides, freeze_backbone)


def _tiny_rf_detr(id2label, vit, overrides, freeze_backbone) -> RfDetrForObjectDetection:
    hidden, layers, heads = vit
    backbone = RfDetrDinov2Config(**_TINY_VIT, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                  num_windows=2, window_block_indexes=list(range(0, layers, 2)),
                                  out_indices=list(range(1, layers + 1)), use_mask_token=False)  # unused in detection
    # 16 queries: RF-DETR picks them among the positions of its one stride-16 map, 4 x 4 = 16 at 64 px
    defaults = dict(_TINY_VIT_DETR, backbone_config=backbone, dropout=0.0, num_queries=16)
    return _build(RfDetrConfig, RfDetrForObjectDetection, id2label, defaults, overrides, freeze_backbone)


def tiny_rfdetr(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> RfDetrForObjectDetection:
    """Tiny RF-DETR teacher: windowed DINOv2 64 wide, 4 layers (patch 16, 2x2 windows), one projector level (stride
    16), 2 decoder layers, 16 queries."""
    return _tiny_rf_detr(id2label, _TINY_VIT_TEACHER, overrides, freeze_backbone)


def tiny_rfdetr_student(id2label: Labels, *, freeze_backbone: bool = False, **overrides) -> RfDetrForObjectDetection:
    """Tiny RF-DETR student: the teacher's projector and decoder widths on a DINOv2 32 wide, 2 layers."""
    return _tiny_rf_detr(id2label, _TINY_VIT_STUDENT, overrides, freeze_backbone)


#: transformers model_type -> {preset name: builder}; a family's teacher comes before its student.
_PRESETS_BY_FAMILY: dict[str, dict[str, Callable[..., PreTrainedModel]]] = {
    "detr": {"detr-resnet101": detr_resnet101, "detr-resnet50": detr_resnet50, "tiny-detr-resnet": tiny_detr_resnet,
             "tiny-detr-resnet-student": tiny_detr_resnet_student},
    "conditional_detr": {"tiny-conditional-detr": tiny_conditional_detr,
                         "tiny-conditional-detr-student": tiny_conditional_detr_student},
    "dab-detr": {"tiny-dab-detr": tiny_dab_detr, "tiny-dab-detr-student": tiny_dab_detr_student},
    "deformable_detr": {"deformable-detr-resnet50": deformable_detr_resnet50,
                        "tiny-deformable-detr": tiny_deformable_detr,
                        "tiny-deformable-detr-student": tiny_deformable_detr_student},
    "rt_detr": {"rtdetr-resnet101": rtdetr_resnet101, "rtdetr-resnet50": rtdetr_resnet50,
                "rtdetr-resnet18": rtdetr_resnet18, "tiny-rtdetr-resnet": tiny_rtdetr_resnet,
                "tiny-rtdetr-resnet-student": tiny_rtdetr_resnet_student},
    "rt_detr_v2": {"tiny-rtdetrv2": tiny_rtdetrv2, "tiny-rtdetrv2-student": tiny_rtdetrv2_student},
    "d_fine": {"tiny-dfine": tiny_dfine, "tiny-dfine-student": tiny_dfine_student},
    "deimv2": {"tiny-deimv2": tiny_deimv2, "tiny-deimv2-student": tiny_deimv2_student},
    "lw_detr": {"tiny-lwdetr": tiny_lwdetr, "tiny-lwdetr-student": tiny_lwdetr_student},
    "rf_detr": {"tiny-rfdetr": tiny_rfdetr, "tiny-rfdetr-student": tiny_rfdetr_student},
}

#: preset name -> builder.
DETECTION_PRESETS: dict[str, Callable[..., PreTrainedModel]] = {
    name: builder for presets in _PRESETS_BY_FAMILY.values() for name, builder in presets.items()
}
#: preset name -> transformers model_type ("detr", "rt_detr", "d_fine", ...).
DETECTION_PRESET_FAMILIES: dict[str, str] = {
    name: family for family, presets in _PRESETS_BY_FAMILY.items() for name in presets
}

__all__ = ["DETECTION_PRESETS", "DETECTION_PRESET_FAMILIES"]
