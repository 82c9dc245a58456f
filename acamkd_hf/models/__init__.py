"""Segmentation models: DeepLabV3 on timm backbones (registered with the Auto* factories on import), named presets."""

from transformers import AutoConfig, AutoModelForSemanticSegmentation

from .deeplabv3 import DeepLabV3Config, DeepLabV3ForSemanticSegmentation
from .presets import (
    SEGMENTATION_PRESETS,
    default_image_processor,
    describe_label_mismatch,
    load_segmentation_model,
)

# With the package imported, `AutoConfig` / `AutoModelForSemanticSegmentation` / `pipeline()` resolve
# model_type "timm_deeplabv3" to the classes above (no trust_remote_code needed). exist_ok: re-import is harmless.
AutoConfig.register(DeepLabV3Config.model_type, DeepLabV3Config, exist_ok=True)
AutoModelForSemanticSegmentation.register(DeepLabV3Config, DeepLabV3ForSemanticSegmentation, exist_ok=True)

__all__ = [
    "DeepLabV3Config",
    "DeepLabV3ForSemanticSegmentation",
    "SEGMENTATION_PRESETS",
    "default_image_processor",
    "describe_label_mismatch",
    "load_segmentation_model",
]
