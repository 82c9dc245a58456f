"""Where each supported detection family exposes its distillation points: the neck levels the decoder reads
(``neck1`` = finest), then the backbone maps the detector consumes, named by backbone stage.

Detectors offer no ``logits`` point: their logits are per-query class scores, not a dense map. One function per
family, ``model -> {point name: TapSpec}``; :data:`DETECTION_FAMILIES` maps the model class name to it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .spec import BackboneMap, EncoderMap, FeatureMap, TapSpec, identity, stage_name


def _detector_backbone_points(conv_encoder: nn.Module, path: str) -> dict[str, TapSpec]:
    """{stem/stageN: TapSpec} for the maps a DETR-family conv encoder returns, named by backbone stage.

    `conv_encoder.model` is a transformers backbone (`out_features` are already "stem"/"stageN") or, for timm
    backbones in DETR / Deformable DETR, the unwrapped timm `FeatureListNet` (feature index 0 = stem, i = stage i)."""
    inner = conv_encoder.model
    names: list[str] = []
    out_features = getattr(inner, "out_features", None)
    if out_features is not None and all(name == "stem" or name.startswith("stage") for name in out_features):
        names = list(out_features)
    else:
        timm_model = inner if hasattr(inner, "feature_info") else getattr(inner, "_backbone", None)
        feature_info = getattr(timm_model, "feature_info", None)
        out_indices = getattr(inner, "out_indices", None) or getattr(feature_info, "out_indices", None)
        total = len(feature_info.info) if feature_info is not None and hasattr(feature_info, "info") else None
        if out_indices is None or total is None:
            return {}  # unknown backbone layout: no stage points, the neck points still work
        names = [stage_name(int(i) % total) for i in out_indices]
    return {name: TapSpec(path, BackboneMap(position)) for position, name in enumerate(names)}


def _rtdetr_points(model: nn.Module) -> dict[str, TapSpec]:
    # RT-DETR, RT-DETRv2 and D-FINE (one hybrid encoder design; D-FINE's blocks are RepNCSPELAN4). Hook the hybrid
    # encoder (`model.encoder`) itself: its return value holds the PAN outputs, encoder_hidden_dim channels each at
    # config.feat_strides (8, 16, 32 for 3 levels; D-FINE-N: 16, 32), exactly what the decoder's input projections
    # read. Backbone: `model.backbone` (RT-DETR's ResNet-vd, D-FINE's HGNetV2) returns (map, mask) pairs for its
    # out_features (stage2..4: strides 8, 16, 32).
    levels = len(model.config.encoder_in_channels)
    points = {f"neck{i + 1}": TapSpec("model.encoder", EncoderMap(i)) for i in range(levels)}
    points.update(_detector_backbone_points(model.model.backbone, "model.backbone"))
    return points


def _deimv2_points(model: nn.Module) -> dict[str, TapSpec]:
    # DEIMv2: `model.encoder` returns `Deimv2EncoderOutput.feature_maps`, encoder_hidden_dim channels each: the hybrid
    # encoder's PAN outputs at config.feat_strides (one per encoder_in_channels entry), or the lite encoder's two
    # maps (Atto/Femto/Pico: strides 16, 32). The backbone is `model.conv_encoder` (backbone + its projections):
    # an HGNetV2 (`conv_encoder.model`, a BackboneOutput: out_features stage2..4 at strides 8, 16, 32) gives stage
    # points; a DINOv3 ViT (`conv_encoder.backbone`, S/M/L/X) gives none (its layers are all at the patch stride).
    levels = 2 if model.config.encoder_type == "lite" else len(model.config.encoder_in_channels)
    points = {f"neck{i + 1}": TapSpec("model.encoder", FeatureMap(i)) for i in range(levels)}
    backbone = getattr(model.model.conv_encoder, "model", None)
    if backbone is not None:
        for position, name in enumerate(backbone.out_features):
            points[name] = TapSpec("model.conv_encoder.model", FeatureMap(position))
    return points


def _detr_points(model: nn.Module) -> dict[str, TapSpec]:
    # DETR and Conditional DETR project only the last backbone map: one neck level, d_model channels, stride 32.
    points = {"neck1": TapSpec("model.input_projection", identity)}
    points.update(_detector_backbone_points(model.model.backbone, "model.backbone"))
    return points


def _dab_detr_points(model: nn.Module) -> dict[str, TapSpec]:
    # DAB-DETR: as DETR (`model.input_projection`: hidden_size channels, stride 32), but its conv encoder sits one
    # level down (`model.backbone.conv_encoder`; `model.backbone` also returns the position embeddings).
    points = {"neck1": TapSpec("model.input_projection", identity)}
    points.update(_detector_backbone_points(model.model.backbone.conv_encoder, "model.backbone.conv_encoder"))
    return points


def _deformable_detr_points(model: nn.Module) -> dict[str, TapSpec]:
    # One input projection (1x1 conv + GroupNorm) per backbone map, then 3x3 stride-2 convs for the extra levels:
    # num_feature_levels maps of d_model channels, finest first.
    levels = len(model.model.input_proj)
    points = {f"neck{i + 1}": TapSpec(f"model.input_proj.{i}", identity) for i in range(levels)}
    points.update(_detector_backbone_points(model.model.backbone, "model.backbone"))
    return points


def _lw_detr_points(model: nn.Module) -> dict[str, TapSpec]:
    # LW-DETR: a windowed ViT (`model.backbone.backbone`) whose selected layers are all on the patch grid (stride
    # patch_size, 16), then the multi-scale projector: one `projector.scale_layers.{i}` per
    # config.projector_scale_factors entry (2.0: stride 8, 1.0: stride 16, 0.5: stride 32), each a (B, d_model, H, W)
    # map the decoder reads. Named finest first (largest scale factor first). The ViT's layers are tokens on one
    # grid, not stages: no stage points.
    scales = model.config.projector_scale_factors
    order = sorted(range(len(scales)), key=lambda i: -scales[i])
    return {f"neck{rank + 1}": TapSpec(f"model.backbone.projector.scale_layers.{i}", identity)
            for rank, i in enumerate(order)}


def _rf_detr_points(model: nn.Module) -> dict[str, TapSpec]:
    # RF-DETR: a windowed DINOv2 (`model.backbone.backbone`, all layers on the patch grid) and one projector
    # (`model.backbone.projector`: the selected layers concatenated, C2f block, LayerNorm): a single (B, d_model,
    # H / patch_size, W / patch_size) map, stride 14 (DINOv2 patch 14) or 16, the only map the decoder reads. No
    # stage points, as for LW-DETR.
    return {"neck1": TapSpec("model.backbone.projector", identity)}


DETECTION_FAMILIES: dict[str, Callable[[nn.Module], dict[str, TapSpec]]] = {
    "DetrForObjectDetection": _detr_points,
    "ConditionalDetrForObjectDetection": _detr_points,
    "DabDetrForObjectDetection": _dab_detr_points,
    "DeformableDetrForObjectDetection": _deformable_detr_points,
    "RTDetrForObjectDetection": _rtdetr_points,
    "RTDetrV2ForObjectDetection": _rtdetr_points,
    "DFineForObjectDetection": _rtdetr_points,
    "Deimv2ForObjectDetection": _deimv2_points,
    "LwDetrForObjectDetection": _lw_detr_points,
    "RfDetrForObjectDetection": _rf_detr_points,
}

#: model class name -> dotted path of its backbone (what ``--inherit_from_teacher`` leaves to the student).
#: The ViT families' backbone is the ViT alone: their projector (the neck, whose points are distilled) is inherited
#: where shapes match. DEIMv2's `conv_encoder` holds the backbone with its input projections (and, for DINOv3, the
#: spatial tuning adapter): all of it counts as the backbone.
DETECTION_BACKBONES: dict[str, str] = {
    "DetrForObjectDetection": "model.backbone",
    "ConditionalDetrForObjectDetection": "model.backbone",
    "DabDetrForObjectDetection": "model.backbone",
    "DeformableDetrForObjectDetection": "model.backbone",
    "RTDetrForObjectDetection": "model.backbone",
    "RTDetrV2ForObjectDetection": "model.backbone",
    "DFineForObjectDetection": "model.backbone",
    "Deimv2ForObjectDetection": "model.conv_encoder",
    "LwDetrForObjectDetection": "model.backbone.backbone",
    "RfDetrForObjectDetection": "model.backbone.backbone",
}
