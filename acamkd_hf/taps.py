"""Distillation points: where each supported model family exposes its feature maps, and hooks that collect them.

A distillation point is a named (B, C, H, W) map of one forward pass. Names are shared across families so that a
teacher and a student of different families can be paired by name:

    "logits"                    the model's output logits (the paper's segmentation point; segmenters only)
    "neck1" ... "neckN"         a detector's neck levels, finest first (the paper's detection points): RT-DETR's
                                hybrid-encoder FPN/PAN outputs, DETR's projected stride-32 map (one level),
                                Deformable DETR's multi-scale input projections
    "stem", "stage1" ... "stage4"  backbone stages at strides ~2, 4, 8, 16, 32 (less where the backbone is dilated);
                                for detectors, the backbone maps the detector consumes (e.g. stage2..4 for RT-DETR)

Detectors offer no "logits" point: their logits are per-query class scores, not a dense map.

Names never contain dots (they become `nn.ModuleDict` keys). The per-family table `_FAMILIES` maps a model class
name to a function returning `{point: TapSpec}`; adding a family is one function and one table entry. Families are
matched by class name along the MRO, so a model loaded through `trust_remote_code` (a different class object with
the same name) is recognised too.

In-place safety: a forward hook keeps a reference to a module's output; if a later op modified that tensor in place
(timm's `ReLU(inplace=True)`, a residual `+=`), the stored map would silently change and the student's backward
would fail. The chosen modules are ones whose outputs are only read afterwards (stage outputs that feed a conv or
a non-inplace add), and `FeatureTaps.collect` checks each tensor's version counter, so a violation is an error,
never a wrong number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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


def _logits(outputs: Any) -> torch.Tensor:
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise TypeError(
            f"Expected a ModelOutput with `.logits`, got {type(outputs).__name__}; "
            "call the model with return_dict=True."
        )
    return logits


def _identity(output: torch.Tensor) -> torch.Tensor:
    return output


class _Item:
    """pick = output[index] (timm `features_only` returns a list of maps)."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, output: Sequence[torch.Tensor]) -> torch.Tensor:
        return output[self.index]

    def __repr__(self) -> str:
        return f"output[{self.index}]"


class _FeatureMap:
    """pick = output.feature_maps[index] (transformers `BackboneOutput`)."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, output: Any) -> torch.Tensor:
        return output.feature_maps[self.index]

    def __repr__(self) -> str:
        return f"output.feature_maps[{self.index}]"


# ---------------------------------------------------------------------------------------------------------------------
# One function per family: {point name: TapSpec}, logits first, then stages in order.


def _deeplabv3_points(model: nn.Module) -> dict[str, TapSpec]:
    # Ours (acamkd_hf.models.deeplabv3). `backbone` is timm `features_only`: its forward returns the list of maps
    # for config.out_indices, exactly what the heads consume. timm index 0 is the stride-2 stem, 1..4 the stages.
    points = {LOGITS: TapSpec("", _logits)}
    for position, index in enumerate(model.config.out_indices):
        points["stem" if int(index) == 0 else f"stage{int(index)}"] = TapSpec("backbone", _Item(position))
    return points


def _segformer_points(model: nn.Module) -> dict[str, TapSpec]:
    # transformers 5.x: `segformer.stages.{i}` (4.x had `segformer.encoder.block`). Each stage ends with a reshape
    # to (B, C, H, W) (a fresh tensor from .contiguous()), except the last one when config.reshape_last_stage=False
    # (then it is (B, N, C) tokens and not offered).
    points = {LOGITS: TapSpec("", _logits)}
    num_stages = len(model.segformer.stages)
    for i in range(num_stages):
        if i < num_stages - 1 or getattr(model.config, "reshape_last_stage", True):
            points[f"stage{i + 1}"] = TapSpec(f"segformer.stages.{i}", _identity)
    return points


# transformers' MobileNetV2 has 16 inverted-residual layers (`mobilenet_v2.layer.{0..15}`); the last layer of each
# resolution/width group gives the same four maps as timm's MobileNetV2 out_indices 1..4: 24, 32, 96 and 320
# channels (x depth_multiplier) at strides 4, 8, 16, 32 (before dilation).
_MOBILENETV2_STAGE_LAYERS = (1, 4, 11, 15)


def _mobilenetv2_points(model: nn.Module) -> dict[str, TapSpec]:
    points = {LOGITS: TapSpec("", _logits)}
    for stage, layer in enumerate(_MOBILENETV2_STAGE_LAYERS, start=1):
        points[f"stage{stage}"] = TapSpec(f"mobilenet_v2.layer.{layer}", _identity)
    return points


def _upernet_points(model: nn.Module) -> dict[str, TapSpec]:
    # Tap the backbone's `feature_maps` (what the UperNet heads consume) rather than the stage modules: for ConvNeXt /
    # Swin backbones the feature maps are layer-normed copies of the stage outputs. Names are the backbone's own
    # out_features ("stage1".."stage4", possibly "stem"). Note UperNet upsamples its logits to the input size.
    points = {LOGITS: TapSpec("", _logits)}
    for position, name in enumerate(model.backbone.out_features):
        points[name] = TapSpec("backbone", _FeatureMap(position))
    return points


# ---------------------------------------------------------------------------------------------------------------------
# Detectors (transformers DETR family). Neck levels first ("neck1" = finest), then the backbone maps.


class _BackboneMap:
    """pick = output[index][0]: the DETR-family conv encoders (`model.model.backbone`) return a list of
    `(feature_map, mask)` pairs, one per backbone output."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, output: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return output[self.index][0]

    def __repr__(self) -> str:
        return f"output[{self.index}][0]"


class _EncoderMap:
    """pick = output.last_hidden_state[index]: RT-DETR's hybrid encoder returns its FPN/PAN maps as a list (finest
    first) in `last_hidden_state` (a tuple output when return_dict is off: output[0][index])."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, output: Any) -> torch.Tensor:
        maps = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        return maps[self.index]

    def __repr__(self) -> str:
        return f"output.last_hidden_state[{self.index}]"


def _stage_name(index: int) -> str:
    return "stem" if index == 0 else f"stage{index}"


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
        names = [_stage_name(int(i) % total) for i in out_indices]
    return {name: TapSpec(path, _BackboneMap(position)) for position, name in enumerate(names)}


def _rtdetr_points(model: nn.Module) -> dict[str, TapSpec]:
    # Hook the hybrid encoder (`model.encoder`) itself: its return value holds the PAN outputs (strides 8, 16, 32
    # for the default 3 levels, encoder_hidden_dim channels), exactly what the decoder's input projections read.
    levels = len(model.config.encoder_in_channels)
    points = {f"neck{i + 1}": TapSpec("model.encoder", _EncoderMap(i)) for i in range(levels)}
    points.update(_detector_backbone_points(model.model.backbone, "model.backbone"))
    return points


def _detr_points(model: nn.Module) -> dict[str, TapSpec]:
    # DETR projects only the last backbone map: one neck level, d_model channels, stride 32.
    points = {"neck1": TapSpec("model.input_projection", _identity)}
    points.update(_detector_backbone_points(model.model.backbone, "model.backbone"))
    return points


def _deformable_detr_points(model: nn.Module) -> dict[str, TapSpec]:
    # One input projection (1x1 conv + GroupNorm) per backbone map, then 3x3 stride-2 convs for the extra levels:
    # num_feature_levels maps of d_model channels, finest first.
    levels = len(model.model.input_proj)
    points = {f"neck{i + 1}": TapSpec(f"model.input_proj.{i}", _identity) for i in range(levels)}
    points.update(_detector_backbone_points(model.model.backbone, "model.backbone"))
    return points


_FAMILIES: dict[str, Callable[[nn.Module], dict[str, TapSpec]]] = {
    "DeepLabV3ForSemanticSegmentation": _deeplabv3_points,
    "SegformerForSemanticSegmentation": _segformer_points,
    "MobileNetV2ForSemanticSegmentation": _mobilenetv2_points,
    "UperNetForSemanticSegmentation": _upernet_points,
    "RTDetrForObjectDetection": _rtdetr_points,
    "DetrForObjectDetection": _detr_points,
    "DeformableDetrForObjectDetection": _deformable_detr_points,
}


def point_specs(model: nn.Module) -> dict[str, TapSpec]:
    """{point name: TapSpec} for the model's family (the model as built, not wrapped in DDP or a Distiller)."""
    for cls in type(model).__mro__:
        if cls.__name__ in _FAMILIES:
            return _FAMILIES[cls.__name__](model)
    raise TypeError(
        f"No distillation points are defined for {type(model).__name__}; supported model classes: "
        f"{', '.join(_FAMILIES)}. (Pass the model itself, not a DDP/Distiller wrapper.)"
    )


def available_points(model: nn.Module) -> list[str]:
    """Names of the model's distillation points: "logits" first (segmenters) or the neck levels "neck1".. (detectors,
    finest first), then the backbone stages in order."""
    return list(point_specs(model))


def _check_points(model: nn.Module, points: Sequence[str]) -> dict[str, TapSpec]:
    if isinstance(points, str):
        points = [points]
    specs = point_specs(model)
    if not points:
        raise ValueError(f"No distillation points given; available for {type(model).__name__}: {', '.join(specs)}")
    for name in points:
        if name not in specs:
            raise ValueError(
                f"Unknown distillation point {name!r} for {type(model).__name__}; available: {', '.join(specs)}"
            )
    duplicates = sorted({name for name in points if list(points).count(name) > 1})
    if duplicates:
        raise ValueError(f"Distillation points listed more than once: {', '.join(duplicates)}")
    return {name: specs[name] for name in points}


class FeatureTaps:
    """Forward hooks that record the model's distillation points on every forward pass.

    Hooks are registered on the submodules themselves, so they keep firing when the model is later wrapped (DDP, a
    Distiller module, torch.compile of the wrapper). "logits" is not hooked: it is read from the outputs passed to
    `collect`, i.e. what the caller received (under DDP that is the tensor autograd should see).

    Usage:
        taps = FeatureTaps(model, ["logits", "stage4"])
        outputs = model(pixel_values=x)
        feats = taps.collect(outputs)   # {"logits": (B, K, h, w), "stage4": (B, C, h', w')}
        taps.remove()
    """

    def __init__(self, model: nn.Module, points: Sequence[str]):
        self.model_class = type(model).__name__
        self._specs = _check_points(model, points)
        self.points: tuple[str, ...] = tuple(self._specs)
        # point -> (tensor, version counter when recorded)
        self._stored: dict[str, tuple[torch.Tensor, int]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        by_module: dict[str, list[tuple[str, Callable]]] = {}
        for name, spec in self._specs.items():
            if spec.module:
                by_module.setdefault(spec.module, []).append((name, spec.pick))
        for path, picks in by_module.items():
            module = model.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._make_hook(picks)))

    def _make_hook(self, picks: list[tuple[str, Callable]]):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            for name, pick in picks:
                tensor = pick(output)
                self._stored[name] = (tensor, tensor._version)  # noqa: SLF001 (torch's in-place counter)

        return hook

    def collect(self, outputs: Any = None) -> dict[str, torch.Tensor]:
        """The points of the last forward pass, in the order given at construction: {point: (B, C, H, W)}.

        `outputs` is the ModelOutput of that forward (needed for "logits"). Clears the stored tensors, so each
        forward is collected once. Raises RuntimeError if a point was not recorded (no forward since the last
        collect) or was modified in place after it was recorded.
        """
        stored, self._stored = self._stored, {}
        features: dict[str, torch.Tensor] = {}
        for name, spec in self._specs.items():
            if not spec.module:
                if outputs is None:
                    raise ValueError(f"collect() needs the model outputs to read the {name!r} point.")
                tensor = spec.pick(outputs)
            else:
                if name not in stored:
                    raise RuntimeError(
                        f"Point {name!r} of {self.model_class} was not recorded: no forward pass since the last "
                        "collect(), or the hooks were removed."
                    )
                tensor, version = stored[name]
                if tensor._version != version:  # noqa: SLF001
                    raise RuntimeError(
                        f"Point {name!r} of {self.model_class} was modified in place after it was recorded; this tap "
                        f"location ({spec.module!r}) is unsafe for this model."
                    )
            if tensor.dim() != 4:
                raise RuntimeError(
                    f"Point {name!r} of {self.model_class} has shape {tuple(tensor.shape)}; expected (B, C, H, W)."
                )
            features[name] = tensor
        return features

    def remove(self) -> None:
        """Remove the hooks and drop stored tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._stored = {}


def _input_channels(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    channels = getattr(config, "num_channels", None)
    if channels is None:  # UperNet keeps it on the backbone config
        channels = getattr(getattr(config, "backbone_config", None), "num_channels", None)
    return int(channels or 3)


def probe_feature_shapes(
    model: nn.Module, points: Sequence[str], image_size: tuple[int, int]
) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of each point for an input of `image_size` = (height, width), by one dry forward.

    Runs in eval mode under no_grad on a random batch of one, on the model's device and dtype; restores every
    submodule's train/eval flag afterwards. Used to size the distillation adapters.
    """
    modes = {module: module.training for module in model.modules()}
    parameter = next(model.parameters())
    height, width = (int(s) for s in image_size)
    # A private generator: a dry run must not move the global RNG that the run's seed and resume depend on.
    generator = torch.Generator(device=parameter.device).manual_seed(0)
    pixel_values = torch.randn(
        1, _input_channels(model), height, width, generator=generator, device=parameter.device, dtype=parameter.dtype
    )
    taps = FeatureTaps(model, points)
    try:
        model.eval()
        with torch.no_grad():
            features = taps.collect(model(pixel_values=pixel_values))
    finally:
        taps.remove()
        for module, training in modes.items():
            module.training = training
    return {name: tuple(int(s) for s in feature.shape[1:]) for name, feature in features.items()}


def freeze_teacher(model: nn.Module) -> nn.Module:
    """Teacher hygiene: eval mode (BatchNorm uses running statistics, dropout off) and no parameter gradients.

    Returns the same model. Keep the teacher outside the module the Trainer calls `.train()` on, or call this again.
    """
    model.eval()
    model.requires_grad_(False)
    return model


def default_distillation_points(student: nn.Module, teacher: nn.Module) -> list[str]:
    """The paper's points: the logits for segmentation, every neck level both models have for detection."""
    student_points, teacher_points = available_points(student), available_points(teacher)
    necks = [point for point in student_points if point.startswith("neck") and point in teacher_points]
    return necks or [LOGITS]


def resolve_distillation_points(
    student: nn.Module,
    teacher: nn.Module,
    points: Sequence[str] | None,
    *,
    student_name: str = "student",
    teacher_name: str = "teacher",
) -> list[str]:
    """``points`` (or the paper's default ones) after checking that both models have each of them.

    Raises ``ValueError`` naming the model, the points and the available ones, with what to pass instead. The one
    check of distillation points: the trainer calls it, and the CLI calls it before anything trains.
    """
    points = list(points) if points else default_distillation_points(student, teacher)
    for model, role, name in ((teacher, "teacher", teacher_name), (student, "student", student_name)):
        try:
            _check_points(model, points)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"the {role} {name!r} cannot be distilled at {points}: {error}. Pass --distillation_points with "
                "names both models have, or leave the flag out for the task's default points."
            ) from error
    return points
