"""The resume policy: which checkpoint a run continues from, and when a checkpoint is already the end of training.

A rerun of the same command continues from the last checkpoint in ``--output_dir`` when it was written with the same
settings; a folder holding another run's checkpoints is never silently reused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerState
from transformers.trainer_utils import get_last_checkpoint

from .config import DistillationArguments
from .settings import DistillationSettings

logger = logging.getLogger(__name__)

#: Training settings a checkpoint must share with the current run to be resumed automatically (and the teacher and
#: every distillation setting, see :func:`checkpoint_to_resume`).
RESUME_KEYS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "seed", "optim",
               "gradient_accumulation_steps", "lr_scheduler_type", "weight_decay")

def checkpoint_to_resume(args: DistillationArguments) -> str | None:
    """``--resume_from_checkpoint`` if given; else the last checkpoint in ``output_dir`` when it was written with the
    same settings (a crashed or interrupted run continues); else an error: a folder holding another run's
    checkpoints is never silently reused."""
    if args.resume_from_checkpoint:
        return args.resume_from_checkpoint
    last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    if last is None:
        return None
    saved_path = Path(last, "training_args.json")
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
    different = changed_training_settings(saved, args)
    # The distillation settings compare by what they train (defaults filled in); a setting missing from an older
    # checkpoint means what the code did before the setting existed.
    different.update(DistillationSettings.from_record(saved).differences(args.distillation_settings()))
    if different:
        listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in different.items())
        raise ValueError(
            f"{args.output_dir} already holds a run ({Path(last).name}) with other settings ({listed}). Use another "
            f"--output_dir, delete that folder, or pass --resume_from_checkpoint {last} to continue it anyway."
        )
    logger.info(f"resuming the interrupted run from {last}")
    return last

def changed_training_settings(saved: dict[str, Any], args: DistillationArguments) -> dict[str, tuple[Any, Any]]:
    """``{setting: (saved, current)}`` for the :data:`RESUME_KEYS` and the teacher on which a run saved as ``saved``
    (its arguments as JSON: a checkpoint's ``training_args.json``, a finished run's ``run_config.json`` "training")
    differs from ``args``. A run is continued (or a finished one reused) only when there are none, and no
    distillation setting differs either."""
    current = json.loads(args.to_json_string())
    return {key: (saved.get(key, "<missing>"), current.get(key)) for key in (*RESUME_KEYS, "teacher")
            if saved.get(key, "<missing>") != current.get(key)}

def last_step_state(checkpoint: str) -> TrainerState | None:
    """The checkpoint's trainer state when it is the last step of its training (``global_step >= max_steps``)."""
    path = Path(checkpoint, "trainer_state.json")
    if not path.is_file():
        return None
    state = TrainerState.load_from_json(str(path))
    return state if state.max_steps and state.global_step >= state.max_steps else None


__all__ = ["RESUME_KEYS", "changed_training_settings", "checkpoint_to_resume", "last_step_state"]
