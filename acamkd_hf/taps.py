"""Distillation points: named (B, C, H, W) maps of one forward pass, and the forward hooks that collect them.

Names are shared across families so that a teacher and a student of different families can be paired by name:

    "logits"                    the model's output logits (the paper's segmentation point; segmenters only)
    "neck1" ... "neckN"         a detector's neck levels, finest first (the paper's detection points): the maps its
                                decoder reads (RT-DETR's hybrid-encoder FPN/PAN outputs, DETR's projected stride-32
                                map, Deformable DETR's multi-scale input projections, ...)
    "stem", "stage1" ... "stage4"  backbone stages at strides ~2, 4, 8, 16, 32 (less where the backbone is dilated);
                                for detectors, the backbone maps the detector consumes (e.g. stage2..4 for RT-DETR)
    "module:PATH", "module:PATH[i]"  any submodule of any model, by its dotted path (``model.named_modules()``): its
                                forward output, or item ``i`` of a tuple / list / ModelOutput output

Where each family's points are is in :mod:`acamkd_hf.families` (one function per family, matched by class name along
the MRO). A segmenter without a family entry still has ``logits`` (any model that returns dense ``.logits`` of shape
(B, K, H, W)); any model has ``module:`` points.

In-place safety: a forward hook keeps a reference to a module's output; if a later op modified that tensor in place
(timm's `ReLU(inplace=True)`, a residual `+=`), the stored map would silently change and the student's backward
would fail. The chosen modules are ones whose outputs are only read afterwards (stage outputs that feed a conv or
a non-inplace add), and `FeatureTaps.collect` checks each tensor's version counter, so a violation is an error,
never a wrong number (for a ``module:`` point too: the error names the module).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .families import FAMILIES
from .families.segmentation import mask_classification_problem
from .families.spec import LOGITS, TapSpec, family_of, read_logits

#: the prefix of a point given by module path.
MODULE_POINT_PREFIX = "module:"
_MODULE_POINT = re.compile(r"^module:(?P<path>[A-Za-z0-9_.]*?)(?:\[(?P<index>\d+)\])?$")


class ModuleOutput:
    """pick = the module's output (``index`` None: it must be a tensor) or its item ``index`` (a tuple / list, or a
    ModelOutput's ``index``-th field). A wrong kind of output is an error that says what the output holds."""

    def __init__(self, point: str, index: int | None):
        self.point, self.index = point, index

    def __call__(self, output: Any) -> torch.Tensor:
        if self.index is None:
            if isinstance(output, torch.Tensor):
                return output
            items = output.to_tuple() if hasattr(output, "to_tuple") else output
            maps = [i for i, item in enumerate(items) if isinstance(item, torch.Tensor) and item.dim() == 4] \
                if isinstance(items, (tuple, list)) else []
            advice = (f"name one of its (B, C, H, W) items: {', '.join(f'{self.point}[{i}]' for i in maps)}" if maps
                      else "none of its items is a (B, C, H, W) map: name another module")
            raise RuntimeError(f"{self.point}: the module returns {_describe(output)}, not a tensor; {advice}.")
        items = output.to_tuple() if hasattr(output, "to_tuple") else output
        if not isinstance(items, (tuple, list)) or self.index >= len(items):
            raise RuntimeError(f"{self.point}: the module returns {_describe(output)}, which has no item {self.index}.")
        item = items[self.index]
        if not isinstance(item, torch.Tensor):
            raise RuntimeError(f"{self.point}: item {self.index} of the module's output is {_describe(item)}, not a "
                               "tensor.")
        return item

    def __repr__(self) -> str:
        return "output" if self.index is None else f"output[{self.index}]"


def _describe(value: Any) -> str:
    """A short description of a module output: a tensor's shape, or a sequence's items' shapes."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    items = value.to_tuple() if hasattr(value, "to_tuple") else value
    if isinstance(items, (tuple, list)):
        shapes = ", ".join(f"[{i}] {tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__}"
                           for i, item in enumerate(items[:8]))
        return f"a {type(value).__name__} of {len(items)} items ({shapes}{', ...' if len(items) > 8 else ''})"
    return f"a {type(value).__name__}"


def is_module_point(name: str) -> bool:
    """Whether ``name`` names a point by module path (``module:PATH`` or ``module:PATH[i]``)."""
    return name.startswith(MODULE_POINT_PREFIX)


def module_point_spec(model: nn.Module, name: str) -> TapSpec:
    """The TapSpec of ``module:PATH`` / ``module:PATH[i]``. A path that is not a submodule of ``model`` raises
    ValueError naming the closest real paths."""
    match = _MODULE_POINT.match(name)
    if match is None or not match["path"]:
        raise ValueError(f"{name!r} is not a module point; spell it module:PATH or module:PATH[i], with PATH a dotted "
                         "submodule path from model.named_modules(), e.g. module:model.encoder.fpn_blocks.0")
    path = match["path"]
    modules = dict(model.named_modules())
    if path not in modules:
        close = difflib.get_close_matches(path, [p for p in modules if p], n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ValueError(f"{type(model).__name__} has no submodule {path!r}{hint}")
    index = match["index"]
    return TapSpec(path, ModuleOutput(name, None if index is None else int(index)))


def point_key(name: str) -> str:
    """The point's key in an ``nn.ModuleDict`` / a state dict: the name itself, with a ``module:`` path's dots as
    ``/`` (keys may not contain dots)."""
    return name.replace(".", "/")


def _is_dense_segmenter(model: nn.Module) -> bool:
    """A model without a family entry that `AutoModelForSemanticSegmentation` would load: its class name says so."""
    return any(cls.__name__.endswith("ForSemanticSegmentation") for cls in type(model).__mro__)


def family_point_specs(model: nn.Module) -> dict[str, TapSpec]:
    """{point name: TapSpec} of the model's family: the family's table entry, else ``logits`` alone for a semantic
    segmenter (the generic fallback), else nothing (only ``module:`` points)."""
    family = family_of(model, FAMILIES)
    if family is not None:
        return FAMILIES[family](model)
    if _is_dense_segmenter(model):
        return {LOGITS: TapSpec("", read_logits)}
    return {}


def point_specs(model: nn.Module, points: Sequence[str] = ()) -> dict[str, TapSpec]:
    """{point name: TapSpec}: the model's family points, plus the ``module:`` points among ``points`` (the model as
    built, not wrapped in DDP or a Distiller)."""
    specs = family_point_specs(model)
    for name in points:
        if is_module_point(name):
            specs[name] = module_point_spec(model, name)
    return specs


def available_points(model: nn.Module) -> list[str]:
    """Names of the model's family points: "logits" first (segmenters) or the neck levels "neck1".. (detectors,
    finest first), then the backbone stages in order. (Every model also has ``module:`` points.)"""
    return list(family_point_specs(model))


def _check_points(model: nn.Module, points: Sequence[str]) -> dict[str, TapSpec]:
    if isinstance(points, str):
        points = [points]
    specs = point_specs(model, points)
    listed = ", ".join(specs) or "none (no family entry; name a submodule: module:PATH)"
    mask_classifier = mask_classification_problem(model)
    if mask_classifier:
        listed += f". {mask_classifier}"
    if not points:
        raise ValueError(f"No distillation points given; available for {type(model).__name__}: {listed}")
    for name in points:
        if name not in specs:
            raise ValueError(
                f"Unknown distillation point {name!r} for {type(model).__name__}; available: {listed}"
                + (f"; or any submodule, {MODULE_POINT_PREFIX}PATH" if specs else
                   f". Supported families: {', '.join(FAMILIES)}")
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
