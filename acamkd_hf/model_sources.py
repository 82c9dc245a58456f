"""What a model (or dataset) name is: a local folder, a preset of this package, or a Hub id, and what can be read
of a model's card (its license). One home for the decision, which the loaders, the run record and the model card
all need (a card never names a local path).
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelCard


def is_local_path(name: str | None) -> bool:
    """Whether ``name`` is an existing local file or folder (``~`` expanded)."""
    return bool(name) and os.path.exists(os.path.expanduser(name))


def has_hub_id_shape(name: str | None) -> bool:
    """Whether ``name`` is shaped like a Hub id: ``org/name`` (one slash, no leading ``.``, ``/`` or ``~``, no
    backslash). Anything else can only be a local path."""
    return bool(name) and name.count("/") == 1 and not name.startswith((".", "/", "~")) and "\\" not in name


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` can only be a Hub id: shaped like one, and no such local path."""
    return has_hub_id_shape(name) and not is_local_path(name)


def known_license(name_or_path: str, revision: str | None = None) -> str | None:
    """The ``license`` of a model's card when it can be read: a local folder's ``README.md``, or a Hub id's card
    (from the local cache; downloaded unless ``HF_HUB_OFFLINE``). None when unknown."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    folder = Path(os.path.expanduser(name_or_path))
    path: str | Path | None = folder / "README.md" if folder.is_dir() else None
    if path is None and is_hub_id(name_or_path):
        cached = try_to_load_from_cache(name_or_path, "README.md", revision=revision)
        path = cached if isinstance(cached, str) else None
        if path is None and not constants.HF_HUB_OFFLINE:
            try:
                path = hf_hub_download(name_or_path, "README.md", revision=revision)
            except Exception:  # noqa: BLE001 (metadata only: no card, no network, gated)
                path = None
    if path is None or not Path(path).is_file():
        return None
    try:
        return ModelCard.load(path).data.license
    except Exception:  # noqa: BLE001 (a card without metadata)
        return None


def model_source(name: str | None, presets) -> str | None:
    """"local" (a folder), "preset" or "hub" (a Hub id): how the card may name a model (never by a local path)."""
    if not name:
        return None
    if is_local_path(name):
        return "local"
    return "preset" if name in presets else "hub"


__all__ = ["has_hub_id_shape", "is_hub_id", "is_local_path", "known_license", "model_source"]
