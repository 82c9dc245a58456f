"""Segmentation models: DeepLabV3 on timm backbones (registered with the Auto* factories on import), named presets."""

from transformers import AutoConfig, AutoModelForSemanticSegmentation

from .backbone_weights import PRETRAINED_BACKBONE_PRESETS, BackboneDownloadError, preset_options
from .deeplabv3 import DeepLabV3Config, DeepLabV3ForSemanticSegmentation
from .labels import describe_label_mismatch
from .segmentation import (
    SEGMENTATION_PRESETS,
    default_image_processor,
    load_segmentation_model,
)

# With the package imported, `AutoConfig` / `AutoModelForSemanticSegmentation` / `pipeline()` resolve
# model_type "timm_deeplabv3" to the classes above (no trust_remote_code needed). exist_ok: re-import is harmless.
AutoConfig.register(DeepLabV3Config.model_type, DeepLabV3Config, exist_ok=True)
AutoModelForSemanticSegmentation.register(DeepLabV3Config, DeepLabV3ForSemanticSegmentation, exist_ok=True)

__all__ = [
    "BackboneDownloadError",
    "PRETRAINED_BACKBONE_PRESETS",
    "preset_options",
    "DeepLabV3Config",
    "DeepLabV3ForSemanticSegmentation",
    "SEGMENTATION_PRESETS",
    "default_image_processor",
    "describe_label_mismatch",
    "load_segmentation_model",
]

# Detection: presets of ten families, loading, processors, explicit backbone freezing.
from .detection import (  # noqa: E402
    DETECTION_PRESET_FAMILIES,
    DETECTION_PRESETS,
    DETECTORS,
    default_detection_image_processor,
    detection_family,
    detection_family_names,
    load_detection_model,
    set_backbone_frozen,
)

__all__ += [
    "DETECTION_PRESETS",
    "DETECTION_PRESET_FAMILIES",
    "DETECTORS",
    "default_detection_image_processor",
    "detection_family",
    "detection_family_names",
    "load_detection_model",
    "set_backbone_frozen",
]
