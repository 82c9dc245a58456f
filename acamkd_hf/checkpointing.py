"""Checkpoints that are never half-written, and never of a diverged model.

:class:`~acamkd_hf.trainer.DistillationTrainer` writes each ``checkpoint-N`` into
``output_dir/.partial-checkpoints/checkpoint-N``, fsyncs it and renames it into place (:func:`publish_directory`);
a process killed mid-write leaves only the staging folder, which ``get_last_checkpoint`` never picks. The
distillation modules (adapters, fusion, selection units) travel in a side file next to the student's own files.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import torch
from torch import nn

#: The distillation modules' weights inside a checkpoint (the student's are its own ``model.safetensors``).
DISTILLATION_MODULES_NAME = "distillation_modules.safetensors"
#: Checkpoints are written here first and renamed to ``output_dir/checkpoint-N`` only when complete. The name does
#: not match ``checkpoint-N``, so ``get_last_checkpoint`` (and ``--resume_from_checkpoint true``) never sees a
#: half-written one.
PARTIAL_CHECKPOINTS_DIR = ".partial-checkpoints"


class NonFiniteLossError(FloatingPointError):
    """The training loss (or a weight) became NaN or inf; the message names the terms, points and step."""


def check_finite_parameters(model: nn.Module, step: int) -> None:
    """Refuses to checkpoint NaN/inf weights (the previous checkpoint stays the latest good one)."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter.detach()).all():
            raise NonFiniteLossError(
                f"parameter {name} is not finite at step {step}: not writing checkpoint-{step}, the previous "
                f"checkpoint stays the last good one. Lower --learning_rate or use --max_grad_norm, then resume."
            )


def fsync_tree(folder: str) -> None:
    """Flushes every file below ``folder``, and the folders themselves, to disk."""
    for root, _, files in os.walk(folder):
        for file_name in files:
            with open(os.path.join(root, file_name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_directory(root)


def _fsync_directory(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory descriptors (Windows)
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def publish_directory(staging: str, final: str) -> None:
    """Makes the complete folder ``staging`` appear as ``final`` in one rename (after its files are on disk).

    An existing ``final`` (the same step saved again) is moved aside first and deleted after; if the process dies
    between the two renames, ``final`` is missing and the previous checkpoint is the latest: never a partial one."""
    fsync_tree(staging)
    replaced = None
    if os.path.exists(final):
        replaced = staging + ".replaced"
        os.rename(final, replaced)
    os.rename(staging, final)
    _fsync_directory(os.path.dirname(final))
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def make_weights_readable(folder: str) -> None:
    """Gives the ``*.safetensors`` files in ``folder`` the mode a new file gets (``0o666 & ~umask``, as
    ``config.json`` has). safetensors >= 0.8 writes through a temporary file that is always 0600 and renames it into
    place (safetensors/safetensors#782), so the weights would be readable by their owner only, unlike the rest of
    the folder. Files whose group/other bits someone already set are left alone."""
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask
    for path in Path(folder).glob("*.safetensors"):
        try:
            if stat.S_IMODE(path.stat().st_mode) == 0o600 and mode != 0o600:
                path.chmod(mode)
        except OSError:  # a file removed meanwhile, or not ours: leave it
            continue


__all__ = [
    "DISTILLATION_MODULES_NAME",
    "PARTIAL_CHECKPOINTS_DIR",
    "NonFiniteLossError",
    "check_finite_parameters",
    "fsync_tree",
    "make_weights_readable",
    "publish_directory",
]
