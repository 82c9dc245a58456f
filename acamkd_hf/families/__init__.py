"""Model families: where each supported family exposes its distillation points (``segmentation.py``,
``detection.py``) and what a point is (``spec.py``).

:data:`FAMILIES` maps a model class name to its family's function ``model -> {point name: TapSpec}``. Families are
matched by class name along the MRO (``acamkd_hf.taps.point_specs``), so a model loaded through
``trust_remote_code`` (a different class object with the same name) is recognised too.

Adding a family: one function and one table entry in the task's module, its backbone's path (for
``--inherit_from_teacher``), and one tiny preset named ``tiny-...`` in ``acamkd_hf.models`` (the contract test,
``tests/test_family_contract.py``, fails for a family without one). A detection family also needs its entry in
``acamkd_hf.models.detection.DETECTORS`` (its image processor and input-size rules; ``tests/test_detection_families.py``
checks that both tables name the same classes).
"""

from __future__ import annotations

from .detection import DETECTION_BACKBONES, DETECTION_FAMILIES
from .segmentation import SEGMENTATION_BACKBONES, SEGMENTATION_FAMILIES
from .spec import LOGITS, TapSpec

#: model class name -> ``model -> {point name: TapSpec}``.
FAMILIES = {**SEGMENTATION_FAMILIES, **DETECTION_FAMILIES}
#: model class name -> dotted path of its backbone (``acamkd_hf.inheritance``).
BACKBONE_PREFIXES = {**SEGMENTATION_BACKBONES, **DETECTION_BACKBONES}

__all__ = ["BACKBONE_PREFIXES", "DETECTION_FAMILIES", "FAMILIES", "LOGITS", "SEGMENTATION_FAMILIES", "TapSpec"]
