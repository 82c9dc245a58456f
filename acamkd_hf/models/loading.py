"""What segmentation and detection share to get a model by name: a preset built for the dataset's classes, or a
checkpoint (local folder / Hub id) loaded for them.

- :func:`label_maps`: the ``id2label`` / ``label2id`` config fields every preset builder passes.
- :func:`resolve_model_path`: a name that is neither a preset nor a folder nor shaped like a Hub id is refused with
  the closest preset.
- :func:`load_model`: the steps of ``load_segmentation_model`` and ``load_detection_model``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from typing import Any

from transformers import PreTrainedModel

from ..data.labels import normalize_id2label
from ..model_sources import has_hub_id_shape
from .labels import load_pretrained_for_labels


def label_maps(id2label: Mapping[int, str]) -> dict:
    """{"id2label": {int: str}, "label2id": {str: int}}; keys coerced to int (JSON round-trips make them strings)."""
    if not id2label:
        raise ValueError("id2label must name at least one class, e.g. {0: 'road', 1: 'sidewalk', ...}")
    id2label = normalize_id2label(id2label)
    if len(set(id2label.values())) != len(id2label):
        raise ValueError(f"id2label has duplicate class names: {sorted(id2label.values())}")
    return {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}


def resolve_model_path(name_or_path: str, presets: Mapping[str, Callable], what: str) -> str:
    """The folder (``~`` expanded) or Hub id to load; a local-looking name that is neither one of ``presets`` nor an
    existing folder raises FileNotFoundError with the closest preset and the list of them."""
    expanded = os.path.expanduser(name_or_path)
    if os.path.exists(expanded):
        return expanded
    if not has_hub_id_shape(name_or_path):
        close = difflib.get_close_matches(name_or_path, list(presets), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FileNotFoundError(
            f"{name_or_path!r} is not a {what} name and no such folder exists.{hint} "
            f"Presets: {', '.join(presets)}. Hub ids look like 'org/name'."
        )
    return name_or_path


def load_model(
    name_or_path: str,
    id2label: Mapping[int, str] | None,
    presets: Mapping[str, Callable[..., PreTrainedModel]],
    *,
    auto_class: Any,
    what: str,
    task: str,
    families: str,
    role: str = "model",
    trust_remote_code: bool = False,
    revision: str | None = None,
    preset_options: Mapping[str, Any] | None = None,
) -> PreTrainedModel:
    """The preset ``name_or_path`` of ``presets`` built for ``id2label`` (with ``preset_options``), or the folder /
    Hub id loaded through ``auto_class`` for the dataset's labels
    (:func:`~acamkd_hf.models.labels.load_pretrained_for_labels`; ``id2label`` None: its own labels).

    ``what`` names the presets in the error for an unknown name ("preset", "detection preset"); ``task`` and
    ``families`` name the head a checkpoint's architecture needs; ``role`` names the model in messages.

    Raises:
        ValueError: a preset without ``id2label``; a checkpoint of an architecture without a ``task`` head.
        FileNotFoundError: a name that is neither a preset nor an existing folder nor shaped like a Hub id.
    """
    if name_or_path in presets:
        if id2label is None:
            raise ValueError(f"Preset {name_or_path!r} needs id2label (the dataset's classes) to size its classifier.")
        return presets[name_or_path](id2label, **(preset_options or {}))
    return load_pretrained_for_labels(
        auto_class,
        resolve_model_path(name_or_path, presets, what),
        id2label,
        role=role,
        task=task,
        families=families,
        trust_remote_code=trust_remote_code,
        revision=revision,
    )


__all__ = ["label_maps", "load_model", "resolve_model_path"]
