"""What a run prints: a heading per phase and the loss at a readable cadence.

A default run trains up to three models one after the other (the teacher, the student alone, the distilled student);
the Trainer's own console callback prints every logged dict the same way for all three (~190 look-alike lines on
the default run). Here each phase starts with a heading, and a training phase prints about :data:`CONSOLE_LINES`
compact lines (step, epoch, the loss and its task / distillation parts, each point's total, the learning rate); every
logged value, each point's terms included, still goes to ``trainer_state.json`` and the ``--report_to``
integrations (TensorBoard ...) at ``--logging_steps``. Evaluations print their metrics.
"""

from __future__ import annotations

import math

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

#: about this many loss lines per training phase on the console
CONSOLE_LINES = 10
#: the logged keys shown on the console (with each point's ``distill/<point>/loss``), in this order
CONSOLE_KEYS = ("loss", "task_loss", "distillation_loss", "grad_norm", "learning_rate")
#: per-class metrics stay out of the console's evaluation line (in metrics.json and the logs)
PER_CLASS = ("eval_iou_", "eval_accuracy_", "eval_map_per_class", "eval_mar_100_per_class")


def phase_heading(title: str, main_process: bool = True) -> None:
    """``==> title`` on a line of its own (main process only)."""
    if main_process:
        tqdm.write(f"\n==> {title}")


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class BarsWithoutLogs(ProgressCallback):
    """The Trainer's progress bars, without its printing of every logged dict (:class:`ConsoleLog` prints)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class ConsoleLog(TrainerCallback):
    """Prints every ``k``-th training log (about :data:`CONSOLE_LINES` per phase) and every evaluation, compactly."""

    def __init__(self) -> None:
        self.every = 1
        self.seen = 0

    def on_train_begin(self, args, state, control, **kwargs):
        logging_steps = args.logging_steps if args.logging_steps >= 1 else max(1, args.logging_steps * state.max_steps)
        logs = max(1, state.max_steps // max(1, int(logging_steps)))
        self.every, self.seen = max(1, math.ceil(logs / CONSOLE_LINES)), 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        where = f"step {state.global_step}/{state.max_steps}, epoch {state.epoch or 0:.2f}"
        if any(key.startswith("eval_") for key in logs):
            shown = {key[5:]: value for key, value in logs.items() if key.startswith("eval_")
                     and not key.endswith(("_runtime", "per_second")) and not key.startswith(PER_CLASS)}
            tqdm.write(f"  evaluation ({where}): " + ", ".join(f"{k} {_number(v)}" for k, v in shown.items()))
            return
        if "loss" not in logs:  # the end-of-training summary (train_runtime, ...)
            if "train_runtime" in logs:
                tqdm.write(f"  trained {state.global_step} steps in {logs['train_runtime']:.0f} s")
            return
        self.seen += 1
        if (self.seen - 1) % self.every and state.global_step < state.max_steps:
            return
        keys = [key for key in CONSOLE_KEYS if key in logs]
        keys += sorted(key for key in logs if key.startswith("distill/") and key.endswith("/loss"))
        tqdm.write(f"  {where}: " + ", ".join(f"{key.removeprefix('distill/')} {_number(logs[key])}" for key in keys))


__all__ = ["CONSOLE_LINES", "phase_heading", "BarsWithoutLogs", "ConsoleLog"]
