"""acamkd-hf: ACAM-KD knowledge distillation for Hugging Face dense-prediction models.

The method's modules import only torch; the Trainer side (which imports transformers) loads on first use, so
``import acamkd_hf.functional`` stays cheap.
"""

from importlib import import_module

from . import functional
from .alignment import StudentAligner
from .fusion import StudentTeacherCrossAttention
from .losses import (
    DISTILLATION_LOSSES,
    ACAMKDLoss,
    CWDLoss,
    FeatureMSELoss,
    MGDLoss,
    MultiPointDistillationLoss,
    PKDLoss,
)
from .masking import AdaptiveSpatialChannelMasking

__version__ = "0.1.0.dev0"

# name -> module that defines it, imported on first attribute access
_LAZY = {
    "DistillationArguments": "acamkd_hf.config",
    "DistillationSettings": "acamkd_hf.settings",
    "DistillationTrainer": "acamkd_hf.trainer",
    "Distiller": "acamkd_hf.distiller",
    "FeatureTaps": "acamkd_hf.taps",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'acamkd_hf' has no attribute {name!r}")


__all__ = [
    "functional",
    "StudentAligner",
    "StudentTeacherCrossAttention",
    "AdaptiveSpatialChannelMasking",
    "ACAMKDLoss",
    "FeatureMSELoss",
    "MGDLoss",
    "CWDLoss",
    "PKDLoss",
    "DISTILLATION_LOSSES",
    "MultiPointDistillationLoss",
    *_LAZY,
]
