"""Checks of what a dataset holds, each failing with an error that names the file or example and says what to do.

Image files (`check_image_files`, run by the Cityscapes and COCO loaders on every file they index). What a check
costs decides when it runs: reading a few bytes at each end of a file costs about as much as checking that it
exists; PIL's header parser costs a little more; PIL's `verify()` reads a whole PNG (and does nothing for a JPEG);
a full decode costs orders of magnitude more.

- At load time every file gets the first kind: PNG and JPEG are recognised by their signature and must end as
  their format ends (a PNG with its IEND chunk, a JPEG with its EOI marker), which catches a file cut short
  anywhere; any other file goes through PIL's header parser, which rejects a text file named .png, an empty file
  or an unknown format. The files are checked on 8 threads, which hide most of the latency of a cold or network
  disk, so the check adds little to a load (for COCO, about what parsing its annotation json costs).
- Only a file whose end looks wrong is read in full (`verify()` for PNG, a decode for JPEG): a PNG with data after
  IEND or a JPEG with bytes after EOI is valid and is not reported.
- `verify()` on every file is not done: it reads every byte (Cityscapes: ~8 GB) and checks nothing in a JPEG; a
  full decode of every file would cost far more.
- What passes and still cannot be decoded (e.g. bytes damaged inside the compressed data) fails when the example is
  first read: `decode_image` raises an error naming the file, in the transforms (also inside a DataLoader worker,
  whose error carries the message to the main process) instead of a bare PIL error from the dataset's decoder.
  `lazily_decoded` is what makes the datasets hand the transforms the file instead of a decoded image.

Label values: `check_first_label_maps` runs `labels.check_label_values` on the first label maps of each split at
load time (see `acamkd_hf.data.labels` for what is checked where, and what it costs).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import datasets
import numpy as np
import PIL.Image

from .labels import check_label_values, label_array, lookup_is_safe

__all__ = [
    "check_first_label_maps",
    "check_image_files",
    "decode_image",
    "describe_source",
    "lazily_decoded",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC
_JPEG_START = b"\xff\xd8\xff"  # SOI + the first marker
_JPEG_END = b"\xff\xd9"  # EOI; never inside entropy-coded data (0xFF is stuffed there)
_TAIL_BYTES = 64
_THREADS = 8
_CHUNK = 4096  # files per thread-pool round (bounds the number of pending futures on 118k files)
_SHOWN = 10  # bad files listed in one message
_DECODER = datasets.Image()


def _inspect(path: str) -> tuple[str | None, tuple[int, int] | None]:
    """(what is wrong with the file or None, its (width, height) from the header when known cheaply, else None).

    PNG and JPEG (Cityscapes, COCO) are recognised by their signature and read only at both ends (the PNG size is in
    the fixed IHDR chunk); other files go through PIL's header parser, which also rejects what is not an image."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return "an empty file (0 bytes)", None
            head = handle.read(24)
            if head.startswith((_PNG_SIGNATURE, _JPEG_START)):
                handle.seek(max(0, size - _TAIL_BYTES))
                tail = handle.read()
            else:
                handle.seek(0)
                try:
                    image = PIL.Image.open(handle)
                    return None, image.size
                except PIL.UnidentifiedImageError:
                    return "not an image file (its format cannot be identified)", None
                except (OSError, SyntaxError, ValueError) as error:
                    return f"a corrupt image header ({error})", None
    except OSError as error:
        return f"unreadable ({error.strerror or error})", None
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b"IHDR":
            return "a corrupt PNG (no IHDR chunk after the signature)", None
        dims = struct.unpack(">II", head[16:24])
        if not tail.endswith(_PNG_END):
            return _read_in_full(path, "PNG", lambda image: image.verify()), dims
        return None, dims
    if _JPEG_END not in tail:
        return _read_in_full(path, "JPEG", lambda image: image.load()), None
    return None, None  # a JPEG's size needs a walk over its markers: not needed here


def _read_in_full(path: str, kind: str, read) -> str | None:
    try:
        with PIL.Image.open(path) as image:
            read(image)
    except Exception as error:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        return f"a truncated or corrupt {kind} ({error})"
    return None


def check_image_files(paths: Sequence[str | os.PathLike], *, what: str, fix: str) -> list[tuple[int, int] | None]:
    """Every file must be a complete image (see the module docstring for what is checked and what it costs).

    Returns the (width, height) of each file, read from its header (None for a JPEG, whose size is not read).
    Raises ValueError naming every bad file (the first ten) and what is wrong with it; `what` names the set
    ("images of ..."), `fix` is the sentence that says what to do."""
    paths = [os.fspath(p) for p in paths]
    results: list[tuple[str | None, tuple[int, int] | None]] = []
    if paths:
        with ThreadPoolExecutor(max_workers=min(_THREADS, len(paths))) as pool:
            for start in range(0, len(paths), _CHUNK):
                results.extend(pool.map(_inspect, paths[start : start + _CHUNK]))
    bad = [(path, problem) for path, (problem, _) in zip(paths, results) if problem]
    if bad:
        shown = "; ".join(f"{path} is {problem}" for path, problem in bad[:_SHOWN])
        more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise ValueError(f"{len(bad)} of the {len(paths)} {what} cannot be read: {shown}{more}. {fix}")
    return [dims for _, dims in results]


def describe_source(value: Any) -> str:
    """The file behind a dataset image value: an undecoded {"path", "bytes"} dict, a path, or a PIL image opened from
    a file; a placeholder when it has none (images stored as bytes without a name)."""
    if isinstance(value, dict):
        path = value.get("path")
    elif isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
    else:
        path = getattr(value, "filename", None)
    return str(path) if path else "<stored without a file name>"


def decode_image(value: Any, what: str = "image") -> Any:
    """A dataset image value as a PIL image, decoded as `datasets.Image` decodes it; an undecodable file raises a
    ValueError that names it (instead of a bare PIL error without the file). A decoded image is returned as is."""
    if not isinstance(value, (dict, str)):
        return value
    if isinstance(value, str):
        value = {"path": value, "bytes": None}
    try:
        return _DECODER.decode_example(value)
    except Exception as error:  # whatever PIL raises: re-raised with the file named, chained
        raise ValueError(
            f"the {what} {describe_source(value)} cannot be decoded ({type(error).__name__}: {error}). Replace it "
            "with an intact copy, or remove the example (image and its labels) from the dataset."
        ) from error


def lazily_decoded(dataset: datasets.Dataset, columns: Iterable[str] = ("image", "label")) -> datasets.Dataset:
    """The dataset with its `datasets.Image` columns left undecoded ({"path", "bytes"} per example), so that the
    transforms decode them with `decode_image` and a broken file is named. Only the feature changes (the stored
    data is the same), so this costs nothing per example. A column with a
    conversion mode (`datasets.Image(mode=...)`) is left as it is, decoded by datasets."""
    for column in columns:
        feature = dataset.features.get(column)
        if isinstance(feature, datasets.Image) and feature.decode and feature.mode is None:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def check_first_label_maps(
    dataset: datasets.Dataset,
    split: str,
    num_labels: int,
    ignore_index: int,
    lookup: np.ndarray | None,
    count: int = 8,
) -> None:
    """`check_label_values` on the first `count` label maps of a split (decoded as the transforms decode them):
    systematic mistakes surface at load time, before anything trains; the transforms check every other example
    when it is read."""
    if lookup_is_safe(lookup, num_labels, ignore_index):
        return
    head = lazily_decoded(dataset.select_columns(["label"]).select(range(min(count, len(dataset)))), ["label"])
    for index, item in enumerate(head["label"]):
        source = f"{describe_source(item)} (example {index} of the {split!r} split)"
        array = label_array(decode_image(item, "label map"), lookup, source)  # the same conversion as in training
        check_label_values(array, num_labels, ignore_index, source)
