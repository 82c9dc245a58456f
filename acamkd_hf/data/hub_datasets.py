"""What the segmentation and detection loaders share for `datasets` datasets (a Hub id or a local dataset folder):
loading a `DatasetDict`, picking splits and columns among common names, class names from id2label.json.

Nothing here knows a task or an on-disk layout (Cityscapes, COCO); only `labels` (a leaf) is imported from the
package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets

from .labels import normalize_id2label

__all__ = [
    "VALIDATION_SPLITS",
    "find_id2label_file",
    "find_validation_split",
    "load_dataset_dict",
    "pick_column",
    "read_id2label_json",
    "renamed_classes",
    "require_examples",
    "require_split",
]

#: Names a validation split goes by, in the order they are looked for.
VALIDATION_SPLITS: tuple[str, ...] = ("validation", "val", "valid")


def load_dataset_dict(name_or_path: str, **load_dataset_kwargs) -> datasets.DatasetDict:
    """``datasets.load_dataset`` (Hub id or local folder) that must give named splits, not one split or a stream."""
    try:
        loaded = datasets.load_dataset(name_or_path, **load_dataset_kwargs)
    except ValueError as error:
        # datasets refuses a split without examples with 'Instruction "<split>" corresponds to no data!'
        empty = re.fullmatch(r'Instruction "(.+)" corresponds to no data!', str(error))
        if empty is None:
            raise
        raise ValueError(
            f"the {empty.group(1)!r} split of {name_or_path} has no examples. Add examples to it, or leave out its "
            "files and name the splits to use (--train_split / --validation_split, or --validation_fraction to hold "
            "out part of the training split)."
        ) from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(
            f"{name_or_path} loaded as a {type(loaded).__name__}; a DatasetDict with a train and a validation split "
            "is needed (do not pass split=... or streaming=True)"
        )
    return loaded


def require_split(loaded: datasets.DatasetDict, split: str, name_or_path: str) -> None:
    """A ValueError naming the available splits when `split` is not one of them."""
    if split not in loaded:
        raise ValueError(f"no {split!r} split in {name_or_path}; available splits: {list(loaded.keys())}")


def find_validation_split(
    loaded: datasets.DatasetDict,
    name_or_path: str,
    candidates: tuple[str, ...] = VALIDATION_SPLITS,
    *,
    train_split: str | None = None,
    hint: str = "",
) -> str:
    """The first of ``candidates`` among the splits of ``loaded`` (other than ``train_split`` when given); else a
    ValueError naming the candidates and the available splits, with ``hint`` (another way out) appended."""
    found = next((s for s in candidates if s in loaded and (train_split is None or s != train_split)), None)
    if found is None:
        raise ValueError(
            f"no validation split in {name_or_path} (looked for {list(candidates)}); available splits: "
            f"{list(loaded.keys())}; name one with --validation_split (validation_split=... in Python){hint}"
        )
    return found


def require_examples(dataset: datasets.Dataset, split: str, name_or_path: str, how: str) -> None:
    """A ValueError when the split ``split`` holds no examples; ``how`` says how to name another split."""
    if len(dataset) == 0:
        raise ValueError(
            f"the {split!r} split of {name_or_path} has no examples. Add examples to it, or name another split {how}."
        )


def pick_column(
    names: Iterable[str], candidates: tuple[str, ...], what: str, *, override: str | None = None, hint: str = ""
) -> str:
    """The first of `candidates` among `names` (columns, or the fields of a column), or `override` when given.

    `what` names the thing looked for in errors ("image column", "box field of 'objects'"); `hint` is appended to
    the error when none is found (e.g. how to name it explicitly)."""
    names = list(names)
    if override is not None:
        if override not in names:
            raise ValueError(f"{what} {override!r} not in the dataset columns {names}")
        return override
    for name in candidates:
        if name in names:
            return name
    raise ValueError(f"could not find the {what} among {names} (looked for {list(candidates)}){hint}")


def renamed_classes(id2label: dict, existing: dict[int, str], what: str) -> dict[int, str]:
    """``id2label`` given for a set that names its own classes may only rename them (same ids)."""
    renamed = normalize_id2label(id2label)
    if sorted(renamed) != sorted(existing):
        raise ValueError(f"id2label for {what} can only rename its classes {sorted(existing)}, got keys {sorted(renamed)}")
    return renamed


def read_id2label_json(path: str | Path) -> dict[int, str]:
    """A json file {"0": "name", ...} -> {0: "name", ...} (sorted by id)."""
    return normalize_id2label(json.loads(Path(path).read_text()))


def find_id2label_file(name_or_path: str, revision: str | None, token: Any) -> dict[int, str] | None:
    """id2label.json next to the data (a local folder or a Hub dataset repo): the convention of the HF
    semantic-segmentation examples and datasets. None when there is none."""
    local = Path(name_or_path)
    if local.is_dir():
        candidate = local / "id2label.json"
        return read_id2label_json(candidate) if candidate.is_file() else None
    # A Hub dataset repo: fetch only that small file. Offline, missing or gated -> None, so that the caller's
    # error can ask for id2label explicitly.
    try:
        from huggingface_hub import hf_hub_download

        downloaded = hf_hub_download(name_or_path, "id2label.json", repo_type="dataset", revision=revision, token=token)
    except Exception:  # noqa: BLE001 - any failure just means "no metadata file"
        return None
    return read_id2label_json(downloaded)
