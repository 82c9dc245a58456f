"""Errors in what the user asked for, and how the command line reports them: one line, no traceback.

The package's input checks raise ``ValueError`` / ``FileNotFoundError`` / ``PermissionError`` / ``KeyError`` with a
message written for the user (what is wrong, how to fix it). While the command checks its inputs, :func:`input_checks`
marks those as the user's (:func:`is_input_error`; they keep their type, so Python callers of ``acamkd_hf.cli.run``
catch what they always caught) and turns ``datasets``' "no data files" errors into :class:`InputError`.
``acamkd-distill`` prints either as ``acamkd-distill: error: <message>`` and exits 2 (argparse's convention). An error
raised anywhere else (a library's, or a bug of ours) keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import datasets

#: The exception types our input checks raise with a message for the user.
CHECK_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)
#: The data layouts the loaders read (said when a dataset folder is missing or holds nothing they read).
DATASET_LAYOUTS = (
    "a Cityscapes folder (leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png), "
    "a COCO folder (annotations/instances_<split>.json + <split>/ or images/<split>/), "
    "a Hub dataset id, or a datasets-readable folder (imagefolder, parquet)"
)


class InputError(ValueError):
    """What the user asked for cannot be done; the message says what is wrong and how to fix it."""


def is_input_error(error: BaseException) -> bool:
    """Whether ``error`` is about the user's input (an :class:`InputError`, or a check error marked by
    :func:`input_checks`): printed as one line."""
    return isinstance(error, InputError) or getattr(error, "acamkd_input_error", False)


def input_error_message(error: BaseException) -> str:
    """The user's message of an input error (a ``KeyError``'s without the quotes its ``str`` adds)."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def _raised_in(error: BaseException, package_dir: str) -> bool:
    """Whether the frame that raised ``error`` (the innermost of its traceback) runs a file under ``package_dir``
    (by file, not module name: ``python -m acamkd_hf.cli`` runs the CLI as ``__main__``)."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback is not None and os.path.abspath(traceback.tb_frame.f_code.co_filename).startswith(package_dir + os.sep)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_DATASETS_DIR = os.path.dirname(os.path.abspath(datasets.__file__))


@contextlib.contextmanager
def input_checks(dataset: str | None = None) -> Iterator[None]:
    """Within it, the package's own check errors are marked as the user's, and ``datasets``' "no data here" errors
    become :class:`InputError` naming ``dataset`` and the layouts the loaders read."""
    try:
        yield
    except InputError:
        raise
    except Exception as error:
        if isinstance(error, CHECK_ERRORS) and _raised_in(error, _PACKAGE_DIR):
            error.acamkd_input_error = True
            raise
        if isinstance(error, FileNotFoundError) and _raised_in(error, _DATASETS_DIR):  # EmptyDatasetError too
            raise InputError(
                f"no data found at --dataset {dataset!r} ({str(error).splitlines()[0]}). The layouts read: "
                f"{DATASET_LAYOUTS}."
            ) from error
        raise


__all__ = ["InputError", "input_checks", "is_input_error", "input_error_message", "DATASET_LAYOUTS"]
