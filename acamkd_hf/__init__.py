"""acamkd-hf: ACAM-KD knowledge distillation for Hugging Face dense-prediction models.

Every name below loads on first use (PEP 562 module ``__getattr__``), so importing one submodule imports only what
that submodule needs: ``import acamkd_hf.functional`` does not load transformers, and
``import acamkd_hf.mask_rendering`` (numpy and PIL) loads neither torch nor transformers.
"""

from importlib import import_module

__version__ = "0.1.0.dev0"

# name -> module that defines it, imported on first attribute access
_LAZY = {
    "StudentAligner": "acamkd_hf.alignment",
    "StudentTeacherCrossAttention": "acamkd_hf.fusion",
    "AdaptiveSpatialChannelMasking": "acamkd_hf.masking",
    "ACAMKDLoss": "acamkd_hf.acamkd_loss",
    "FeatureMSELoss": "acamkd_hf.baseline_losses",
    "MGDLoss": "acamkd_hf.baseline_losses",
    "CWDLoss": "acamkd_hf.baseline_losses",
    "PKDLoss": "acamkd_hf.baseline_losses",
    "DISTILLATION_LOSSES": "acamkd_hf.losses",
    "MultiPointDistillationLoss": "acamkd_hf.losses",
    "DistillationArguments": "acamkd_hf.config",
    "DistillationSettings": "acamkd_hf.settings",
    "DistillationTrainer": "acamkd_hf.trainer",
    "Distiller": "acamkd_hf.distiller",
    "FeatureTaps": "acamkd_hf.taps",
}


def __getattr__(name: str):
    if name == "functional":  # the submodule; importing it also sets it as this package's attribute
        return import_module("acamkd_hf.functional")
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module 'acamkd_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "functional",
    *_LAZY,
]
