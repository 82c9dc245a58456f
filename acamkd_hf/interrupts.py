"""Ctrl-C and SIGTERM that always stop a run in a resumable state.

A ``KeyboardInterrupt`` raised wherever the signal lands can be swallowed (inside a finalizer, or a library's
``except BaseException``), and then Ctrl-C does nothing; cluster schedulers (preemption, spot instances) send SIGTERM,
which ends a process without a word. :class:`Interrupts` installs handlers for both that, while a training loop runs,
only record the signal; :class:`StopAtStepBoundary`, a Trainer callback, sees it at the next step boundary (every
rank at the same step: the flag is reduced across processes), saves a checkpoint and ends the training; the command
then ends with one line saying how to resume (exit status 130 for SIGINT, 143 for SIGTERM). A signal outside a
training loop (loading, data preparation), or a second one, interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
from transformers import TrainerCallback

#: the handled signals and the exit status each ends with (128 + the signal's number, the shell's convention)
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupts:
    """Signal handlers for SIGINT and SIGTERM (installed by ``acamkd-distill`` for the whole run)."""

    #: the instance installed in this process (None: Ctrl-C raises KeyboardInterrupt as Python's default does)
    installed: Interrupts | None = None

    def __init__(self) -> None:
        self.received: int | None = None  # the first signal received
        self.in_training_loop = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            return self
        for number in EXIT_STATUS:
            self._previous[number] = signal.signal(number, self._handle)
        Interrupts.installed = self
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        if Interrupts.installed is self:
            Interrupts.installed = None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        first = self.received is None
        self.received = self.received or number
        if first and self.in_training_loop:
            return  # StopAtStepBoundary stops the loop at the next step boundary, after a checkpoint
        raise KeyboardInterrupt  # outside a training loop, or a second signal: at once

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS.get(self.received, 130)


class StopAtStepBoundary(TrainerCallback):
    """Ends training at the first step boundary after a signal, with a checkpoint written there."""

    def __init__(self, interrupts: Interrupts) -> None:
        self.interrupts = interrupts

    def on_train_begin(self, args, state, control, **kwargs):
        self.interrupts.in_training_loop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.interrupts.in_training_loop = False

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_process_received(args):
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False  # an evaluation due at this step would run before the save

    def on_prediction_step(self, args, state, control, **kwargs):
        if self.interrupts.received is not None:  # an evaluation inside training: end it, the last checkpoint holds
            raise KeyboardInterrupt

    def _any_process_received(self, args) -> bool:
        received = self.interrupts.received is not None
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return received
        flag = torch.tensor([float(received)], device=args.device)  # every rank stops at the same step
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


class TrainingInterrupted(KeyboardInterrupt):
    """A training stopped by Ctrl-C / SIGTERM, with the folder it was training into (``output_dir``): where the
    closing line looks for the checkpoint a rerun resumes from."""

    def __init__(self, output_dir: str) -> None:
        super().__init__(output_dir)
        self.output_dir = output_dir


__all__ = ["Interrupts", "StopAtStepBoundary", "TrainingInterrupted", "EXIT_STATUS"]
