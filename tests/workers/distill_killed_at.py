"""Runs ``scripts/distill.py`` with its command-line arguments and SIGKILLs itself at a chosen point (test helper).

``KILL_AT_STEP=N KILL_DURING=step``: killed as training step N+1 starts (after N optimizer steps).
``KILL_AT_STEP=N KILL_DURING=checkpoint``: killed while ``checkpoint-N`` is being written (after the student,
distillation modules, optimizer and scheduler files, before the RNG states and trainer state).
A real ``SIGKILL``: no Python cleanup, no ``finally`` blocks, nothing flushed by the process.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from acamkd_hf import DistillationTrainer

kill_step = int(os.environ["KILL_AT_STEP"])
kill_during = os.environ.get("KILL_DURING", "step")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if kill_during == "step":
    _training_step = DistillationTrainer.training_step

    def training_step(self, *args, **kwargs):
        if self.args.method != "none" and self.state.global_step == kill_step:
            _die()
        return _training_step(self, *args, **kwargs)

    DistillationTrainer.training_step = training_step
elif kill_during == "checkpoint":
    _save_rng_state = DistillationTrainer._save_rng_state

    def save_rng_state(self, output_dir):
        if self.args.method != "none" and self.state.global_step == kill_step:
            _die()
        return _save_rng_state(self, output_dir)

    DistillationTrainer._save_rng_state = save_rng_state
else:
    raise SystemExit(f"KILL_DURING must be 'step' or 'checkpoint', got {kill_during!r}")

script = Path(__file__).resolve().parents[2] / "scripts" / "distill.py"
sys.argv = [str(script), *sys.argv[1:]]
runpy.run_path(str(script), run_name="__main__")
