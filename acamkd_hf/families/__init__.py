"""Model families: where each supported family exposes its distillation points (``segmentation.py``,
``detection.py``) and what a point is (``spec.py``).

:data:`FAMILIES` maps a model class name to its family's function ``model -> {point name: TapSpec}``. Families are
matched by class name along the MRO (``acamkd_hf.taps.point_specs``), so a model loaded through
``trust_remote_code`` (a different class object with the same name) is recognised too. Adding a family is one
function and one table entry in the task's module, and one tiny preset in ``acamkd_hf.models`` (the contract test in
``tests/test_family_contract.py`` fails for a family without one).
"""

from __future__ import annotations

from .detection import DETECTION_FAMILIES
from .segmentation import SEGMENTATION_FAMILIES
from .spec import LOGITS, TapSpec

FAMILIES = {**SEGMENTATION_FAMILIES, **DETECTION_FAMILIES}

__all__ = ["DETECTION_FAMILIES", "FAMILIES", "LOGITS", "SEGMENTATION_FAMILIES", "TapSpec"]
