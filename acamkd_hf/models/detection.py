"""Object detectors: loading by preset name / Hub id / folder, and each family's image processor.

Ten transformers families, each with its neck (the paper's distillation points, :mod:`acamkd_hf.families.detection`):
DETR, Conditional DETR, DAB-DETR (one projected stride-32 map), Deformable DETR (multi-scale input projections),
RT-DETR, RT-DETRv2, D-FINE, DEIMv2 (the hybrid encoder's FPN/PAN maps), LW-DETR and RF-DETR (a ViT's projector
maps). The deformable-attention families run on CPU: transformers' `MultiScaleDeformableAttention` is pure PyTorch
(`grid_sample`) unless hub kernels are requested with `use_kernels=True`.

:data:`DETECTORS` is the one table of what differs per family outside its points: its name in messages, its model
class, and the image processor its public checkpoints ship with their resizing, normalisation and input-size
constraint. The COCO metric and `pipeline("object-detection")` go through that processor's own
`post_process_object_detection`, which matches the family's loss: a sigmoid per class (focal / varifocal / MAL losses,
no "no object" class) everywhere but DETR (softmax with a "no object" class). The presets are in
:mod:`acamkd_hf.models.detection_presets`, backbone freezing in :mod:`acamkd_hf.models.freezing`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import (
    AutoModelForObjectDetection,
    ConditionalDetrImageProcessor,
    DeformableDetrImageProcessor,
    DetrImageProcessor,
    PreTrainedModel,
    RfDetrImageProcessor,
    RTDetrImageProcessor,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .detection_presets import DETECTION_PRESET_FAMILIES, DETECTION_PRESETS
from .freezing import set_backbone_frozen
from .loading import load_model


@dataclass(frozen=True)
class Detector:
    """What the package needs to know of one detection family besides its points.

    title: its name in messages ("RT-DETR").
    model_class: its detection class, the family's key in :data:`acamkd_hf.families.DETECTION_FAMILIES`.
    processor: the image processor class its public checkpoints ship (what `AutoImageProcessor` loads for them).
    square: True: every image resized to ``input_size x input_size`` (aspect ratio not kept); False: shortest edge
        ``input_size``, longest at most ``input_size * 1333 / 800``, aspect ratio kept, batches padded with a
        ``pixel_mask``.
    input_size: the side (square) or shortest edge of its public checkpoints' processors.
    normalize: ImageNet mean / std after rescaling to [0, 1] (False: rescaled only).
    pad: the processor pads (and returns a ``pixel_mask``); irrelevant to the size when ``square``.
    size_multiple: the input side must be a multiple of it (1: anything).
    windows_field: the windowed-ViT families' backbone config field that holds the windows per side; the multiple is
        then the model's backbone ``patch_size`` times it (unknown without the model).
    size_reason: why, for the error message.
    proposal_strides: for the two-stage families, config -> the strides of the maps whose positions the encoder picks
        its ``num_queries`` queries from (top-k): an input must give at least that many positions.
    normalize_backbones: backbone model_types with which its checkpoints normalise although ``normalize`` is False.
    size_from_backbone: the default side is the backbone config's ``image_size`` (RF-DETR's converted checkpoints).
    """

    title: str
    model_class: str
    processor: type
    square: bool
    input_size: int
    normalize: bool
    pad: bool = True
    size_multiple: int = 1
    windows_field: str = ""
    size_reason: str = ""
    normalize_backbones: tuple[str, ...] = ()
    size_from_backbone: bool = False
    proposal_strides: Callable[[Any], list[float]] | None = None


def _pan_strides(config: Any) -> list[float]:
    """The real-time DETRs' decoder levels: config.feat_strides, then a stride-2 level per extra feature level."""
    strides = [float(stride) for stride in config.feat_strides]
    extra = max(0, config.num_feature_levels - len(strides))
    return strides + [strides[-1] * 2 ** (k + 1) for k in range(extra)]


def _projector_strides(config: Any) -> list[float]:
    """LW-DETR's projector maps: patch size / scale factor (2.0: 8, 0.5: 32 for patch 16); RF-DETR's one map at the
    patch size."""
    scales = getattr(config, "projector_scale_factors", None) or [1.0]
    return [config.backbone_config.patch_size / scale for scale in scales]


_REALTIME = dict(processor=RTDetrImageProcessor, square=True, input_size=640, normalize=False, pad=False,
                 size_multiple=32, size_reason="its encoder merges levels up to stride 32", proposal_strides=_pan_strides)
_SHORTEST_EDGE = dict(square=False, input_size=800, normalize=True)
_WINDOWED_VIT = dict(square=True, normalize=True, size_reason="its ViT's patch size times its windows per side",
                     proposal_strides=_projector_strides)

#: transformers model_type -> its :class:`Detector`. Hub checkpoints: facebook/detr-resnet-50,
#: microsoft/conditional-detr-resnet-50, IDEA-Research/dab-detr-resnet-50 (a ConditionalDetrImageProcessor, as
#: transformers' conversion script writes), SenseTime/deformable-detr, PekingU/rtdetr_r50vd,
#: PekingU/rtdetr_v2_r18vd, ustc-community/dfine-*-coco, the DEIMv2 conversions (an RTDetrImageProcessor; the
#: DINOv3 ones normalise), AnnaZhang/lwdetr_*_coco (a DeformableDetrImageProcessor at 640 x 640),
#: Roboflow/rf-detr-* (an RfDetrImageProcessor at the backbone's resolution, e.g. 560 for RF-DETR-B).
DETECTORS: dict[str, Detector] = {
    "detr": Detector("DETR", "DetrForObjectDetection", DetrImageProcessor, **_SHORTEST_EDGE),
    "conditional_detr": Detector("Conditional DETR", "ConditionalDetrForObjectDetection",
                                 ConditionalDetrImageProcessor, **_SHORTEST_EDGE),
    "dab-detr": Detector("DAB-DETR", "DabDetrForObjectDetection", ConditionalDetrImageProcessor, **_SHORTEST_EDGE),
    "deformable_detr": Detector("Deformable DETR", "DeformableDetrForObjectDetection", DeformableDetrImageProcessor,
                                **_SHORTEST_EDGE),
    "rt_detr": Detector("RT-DETR", "RTDetrForObjectDetection", **_REALTIME),
    "rt_detr_v2": Detector("RT-DETRv2", "RTDetrV2ForObjectDetection", **_REALTIME),
    "d_fine": Detector("D-FINE", "DFineForObjectDetection", **_REALTIME),
    "deimv2": Detector("DEIMv2", "Deimv2ForObjectDetection", **_REALTIME, normalize_backbones=("dinov3_vit",)),
    "lw_detr": Detector("LW-DETR", "LwDetrForObjectDetection", DeformableDetrImageProcessor, input_size=640,
                        windows_field="num_windows_side", **_WINDOWED_VIT),
    "rf_detr": Detector("RF-DETR", "RfDetrForObjectDetection", RfDetrImageProcessor, input_size=560,
                        windows_field="num_windows", size_from_backbone=True, **_WINDOWED_VIT),
}
#: Each family's input size on real data when its checkpoint brings no processor (see :class:`Detector`).
DETECTION_INPUT_SIZES = {family: detector.input_size for family, detector in DETECTORS.items()}
#: DETR's longest edge per unit of its shortest (1333 / 800), kept when the shortest edge is set.
DETR_LONGEST_PER_SHORTEST = 1333 / 800


def detection_family_names() -> str:
    """"DETR, Conditional DETR, ... and RF-DETR": the families this package distils, for messages."""
    titles = [detector.title for detector in DETECTORS.values()]
    return ", ".join(titles[:-1]) + " and " + titles[-1]


def detection_size_conventions() -> str:
    """Each family's input-size convention in words (from :data:`DETECTORS`), for ``--image_size``'s help."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for detector in DETECTORS.values():
        if detector.square:
            multiple = ("patch size x windows" if detector.windows_field else
                        f"{detector.size_multiple}" if detector.size_multiple > 1 else "")
            rule = f"every image resized to N x N{f' (a multiple of {multiple})' if multiple else ''}"
        else:
            rule = "the shortest edge N (the longest at most N * 1333 / 800; aspect ratio kept, batches padded)"
        groups.setdefault(rule, []).append((detector.title, detector.input_size))
    parts = []
    for rule, members in groups.items():
        sizes = {size for _, size in members}
        names = (f"{', '.join(title for title, _ in members)} (default {sizes.pop()})" if len(sizes) == 1 else
                 ", ".join(f"{title} (default {size})" for title, size in members))
        parts.append(f"{names}: {rule}")
    return "; ".join(parts)


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
            e.g. "facebook/detr-resnet-50", "PekingU/rtdetr_r50vd", "ustc-community/dfine-nano-coco").
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
        families=detection_family_names(),
        role=role,
        trust_remote_code=trust_remote_code,
        revision=revision,
        preset_options={"freeze_backbone": frozen},
    )
    # A preset's builder has set its backbone's freezing already; a loaded model's is transformers' choice until here.
    return model if name_or_path in DETECTION_PRESETS else set_backbone_frozen(model, frozen)


# ---------------------------------------------------------------------------------------------------------------------
# Families and image processors


def _squash(name: str) -> str:
    return "".join(character for character in name.lower() if character.isalnum())


#: "rtdetr", "rtdetrv2", "dfine", "dabdetr", "conditionaldetr", ...: a family's model_type or title, squashed.
_FAMILY_ALIASES = {_squash(alias): family for family, detector in DETECTORS.items()
                   for alias in (family, detector.title)}


def _config_of(model_or_config: Any) -> Any:
    """The config of a model, a config itself, or None for a name."""
    if isinstance(model_or_config, str):
        return None
    return getattr(model_or_config, "config", model_or_config)


def detection_family(model_or_name: Any) -> str:
    """The transformers model_type of a detector ("detr", "rt_detr", "d_fine", ...: a key of :data:`DETECTORS`)
    from a model, a config, a preset name or a family name / alias ("RT-DETR", "dfine", "dab_detr", ...)."""
    if isinstance(model_or_name, str) and model_or_name in DETECTION_PRESET_FAMILIES:
        return DETECTION_PRESET_FAMILIES[model_or_name]
    config = _config_of(model_or_name)
    key = _squash(model_or_name if config is None else str(getattr(config, "model_type", "")))
    if key not in _FAMILY_ALIASES:
        raise ValueError(
            f"Unknown detection family {model_or_name if config is None else type(config).__name__!r}; expected one "
            f"of {', '.join(DETECTORS)} (or {detection_family_names()} by name), a preset name or a model of one."
        )
    return _FAMILY_ALIASES[key]


def _size_multiple(detector: Detector, config: Any) -> int | None:
    """The multiple every input side must be; None when it depends on a model that was not given."""
    if not detector.windows_field:
        return detector.size_multiple
    backbone = getattr(config, "backbone_config", None)
    if backbone is None:
        return None
    return int(backbone.patch_size) * int(getattr(backbone, detector.windows_field))


def detection_input_problem(family: Any, size: tuple[int, int]) -> str | None:
    """Why inputs of ``size`` = (H, W) break one of the family's rules, else None. ``family``: a family or preset name
    (the family's rules), or a model or config (also the rules that depend on it: the ViT families' multiple, and the
    two-stage families' query count, which the positions of their maps must reach: fewer fail in the model's top-k)."""
    detector = DETECTORS[detection_family(family)]
    config = _config_of(family)
    height, width = (int(side) for side in size)
    multiple = _size_multiple(detector, config)
    if multiple is not None and (height % multiple or width % multiple):
        return f"{detector.title} needs a multiple of {multiple} ({detector.size_reason})"
    queries = getattr(config, "num_queries", None)
    if config is None or detector.proposal_strides is None or queries is None:
        return None
    strides = detector.proposal_strides(config)
    positions = sum(math.ceil(height / stride) * math.ceil(width / stride) for stride in strides)
    if positions >= queries:
        return None
    shown = ("strides " if len(strides) > 1 else "stride ") + ", ".join(f"{stride:g}" for stride in strides)
    return (f"{detector.title} picks its {queries} queries among the positions of its maps ({shown}), and "
            f"{height}x{width} px give only {positions}")


def detection_input_size_error(family: Any, input_size: int) -> str | None:
    """Why ``input_size`` cannot be the input side of ``family`` (:func:`detection_input_problem` for square
    inputs), with the nearest sides that can be, as a ``--image_size`` error; ``None`` when it can."""
    if input_size < 1:
        return f"--image_size must be a positive number of pixels, got {input_size}"
    problem = detection_input_problem(family, (input_size, input_size))
    return None if problem is None else f"--image_size {input_size}: {problem}; use {nearest_input_sides(family, input_size)}"


def nearest_input_sides(family: Any, input_size: int) -> str:
    """The square sides nearest to ``input_size`` that ``family`` takes, in words: "96 or 128" (or one side when
    none is smaller)."""
    step = _size_multiple(DETECTORS[detection_family(family)], _config_of(family)) or 1
    lower = [side for side in range(step, input_size, step) if detection_input_problem(family, (side, side)) is None]
    upper = next(side for side in itertools.count(input_size // step * step + step, step)
                 if detection_input_problem(family, (side, side)) is None)
    return f"{lower[-1]} or {upper}" if lower else f"{upper}"


def _default_input_size(detector: Detector, config: Any) -> int:
    backbone = getattr(config, "backbone_config", None)
    if detector.size_from_backbone and backbone is not None:
        return int(backbone.image_size)
    return detector.input_size


def default_detection_image_processor(family: Any, input_size: int | None = None):
    """The processor to save next to a detection checkpoint so `pipeline("object-detection")` and
    `post_process_object_detection` work, built without the Hub: the class the family's public checkpoints ship,
    with their conventions (:data:`DETECTORS`):

    * square families (RT-DETR, RT-DETRv2, D-FINE, DEIMv2, LW-DETR, RF-DETR): every image resized to ``input_size x
      input_size`` (default 640; RF-DETR its backbone's resolution), rescaled to [0, 1], ImageNet-normalised for the
      ViT families (and DEIMv2 on DINOv3), not padded by the RT-DETR lineage;
    * DETR, Conditional DETR, DAB-DETR, Deformable DETR: shortest edge ``input_size`` (default 800), longest at most
      ``input_size * 1333 / 800``, aspect ratio kept, ImageNet normalisation, padded per batch with a ``pixel_mask``.

    COCO-detection annotations are converted to boxes normalised by each image's own size, so predictions
    post-processed with the original sizes land on the original images, whatever the resize.

    `family`: a family or preset name, or a model / config (then its backbone decides the ViT families' input-size
    multiple, and DEIMv2's normalisation). Raises ValueError for a size the family cannot take."""
    detector = DETECTORS[detection_family(family)]
    config = _config_of(family)
    input_size = int(input_size or _default_input_size(detector, config))
    problem = detection_input_size_error(family, input_size)
    if problem is not None:
        raise ValueError(problem)
    backbone_type = getattr(getattr(config, "backbone_config", None), "model_type", None)
    normalize = detector.normalize or backbone_type in detector.normalize_backbones
    if detector.square:
        size = {"height": input_size, "width": input_size}
    else:
        longest = max(input_size, round(input_size * DETR_LONGEST_PER_SHORTEST))
        size = {"shortest_edge": input_size, "longest_edge": longest}
    statistics = dict(image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD)) if normalize else {}
    return detector.processor(do_resize=True, do_rescale=True, do_convert_annotations=True, size=size,
                              do_pad=detector.pad, do_normalize=normalize, **statistics)


__all__ = [
    "nearest_input_sides",
    "detection_size_conventions",
    "DETECTION_INPUT_SIZES",
    "DETECTION_PRESETS",
    "DETECTION_PRESET_FAMILIES",
    "DETECTORS",
    "Detector",
    "default_detection_image_processor",
    "detection_family",
    "detection_family_names",
    "detection_input_problem",
    "detection_input_size_error",
    "load_detection_model",
    "set_backbone_frozen",
]
