"""The one check of a named choice (``--mask_normalizer sum``...), shared by the settings and the modules that read it.

Each choice's allowed values live next to the code that implements them (``MASK_NORMALIZERS`` in ``functional``,
``FUSION_MODES`` in ``fusion``...); :class:`~acamkd_hf.settings.DistillationSettings` and the module constructors
both check a value with :func:`require_choice`, so a wrong value gets the same message from the CLI and from Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def require_choice(setting: str, value: Any, choices: Iterable[Any]) -> None:
    """Raises ``ValueError`` naming the flag and its allowed values when ``value`` is not one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"--{setting} {value!r} is not one of: {', '.join(map(str, choices))}")


__all__ = ["require_choice"]
