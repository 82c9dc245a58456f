"""Where each supported detection family exposes its distillation points: the neck levels the decoder reads
(``neck1`` = finest), then the backbone maps the detector consumes, named by backbone stage.

Detectors offer no ``logits`` point: their logits are per-query class scores, not a dense map. One function per
family, ``model -> {point name: TapSpec}``; :data:`DETECTION_FAMILIES` maps the model class name to it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .spec import BackboneMap, EncoderMap, TapSpec, identity, stage_name


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
    # Hook the hybrid encoder (`model.encoder`) itself: its return value holds the PAN outputs (strides 8, 16, 32
    # for the default 3 levels, encoder_hidden_dim channels), exactly what the decoder's input projections read.
    levels = len(model.config.encoder_in_channels)
    points = {f"neck{i + 1}": TapSpec("model.encoder", EncoderMap(i)) for i in range(levels)}
    points.update(_detector_backbone_points(model.model.backbone, "model.backbone"))
    return points


def _detr_points(model: nn.Module) -> dict[str, TapSpec]:
    # DETR projects only the last backbone map: one neck level, d_model channels, stride 32.
    points = {"neck1": TapSpec("model.input_projection", identity)}
    points.update(_detector_backbone_points(model.model.backbone, "model.backbone"))
    return points


def _deformable_detr_points(model: nn.Module) -> dict[str, TapSpec]:
    # One input projection (1x1 conv + GroupNorm) per backbone map, then 3x3 stride-2 convs for the extra levels:
    # num_feature_levels maps of d_model channels, finest first.
    levels = len(model.model.input_proj)
    points = {f"neck{i + 1}": TapSpec(f"model.input_proj.{i}", identity) for i in range(levels)}
    points.update(_detector_backbone_points(model.model.backbone, "model.backbone"))
    return points


DETECTION_FAMILIES: dict[str, Callable[[nn.Module], dict[str, TapSpec]]] = {
    "RTDetrForObjectDetection": _rtdetr_points,
    "DetrForObjectDetection": _detr_points,
    "DeformableDetrForObjectDetection": _deformable_detr_points,
}

#: model class name -> dotted path of its backbone (what ``--inherit_from_teacher`` leaves to the student).
DETECTION_BACKBONES: dict[str, str] = {
    "DetrForObjectDetection": "model.backbone",
    "RTDetrForObjectDetection": "model.backbone",
    "DeformableDetrForObjectDetection": "model.backbone",
}
