"""Ctrl-C and SIGTERM stop a run in a resumable state wherever they land: during a step, during an evaluation, during
a checkpoint write; a second Ctrl-C ends at once; the same command then resumes and finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acamkd_hf import cli
from acamkd_hf.trainer import DistillationTrainer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "distill.py"
STEPS = 6  # 24 images / batch 4


def _flags(tmp_path: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(tmp_path / "student"), "--synthetic_dir", str(tmp_path / "data"),
            "--synthetic_num_train", "24", "--synthetic_num_val", "4", "--synthetic_image_size", "32", "64",
            "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "true",
            "--compare_student_alone", "false", "--method", "none", "--save_strategy", "steps", "--save_steps", "2",
            "--eval_strategy", "steps", "--eval_steps", "3", "--report_to", "none", *extra]  # fmt: skip


def _signal_at(monkeypatch, where: str, number: int, at_call: int = 2):
    """Sends ``number`` to this process on the ``at_call``-th call of ``where``: a training step, an evaluation
    step, or the write of a checkpoint's files (before they are published)."""
    calls = {"n": 0}
    target, name = {"step": (DistillationTrainer, "training_step"), "evaluation": (DistillationTrainer, "prediction_step"),
                    "checkpoint": (sys.modules["acamkd_hf.trainer"], "publish_directory")}[where]
    original = getattr(target, name)

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            signal.raise_signal(number)  # lands inside the call: the handler runs here
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


@pytest.mark.slow
@pytest.mark.parametrize("where, number, status", [
    ("step", signal.SIGINT, 130), ("evaluation", signal.SIGINT, 130), ("checkpoint", signal.SIGINT, 130),
    ("step", signal.SIGTERM, 143),
])  # fmt: skip
def test_a_signal_anywhere_in_training_ends_in_a_checkpoint_and_one_line_then_the_command_resumes(
    tmp_path, monkeypatch, capsys, where, number, status
):
    flags = _flags(tmp_path)
    with monkeypatch.context() as patch:
        _signal_at(patch, where, number)
        with pytest.raises(SystemExit) as stopped:
            cli.main(flags)
    assert stopped.value.code == status
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    prefix = f"interrupted: run the same command again to resume from {tmp_path / 'student'}/checkpoint-"
    assert last.startswith(prefix), err[-2000:]
    assert "Traceback" not in err
    checkpoint = Path(last.rsplit(" ", 1)[-1].rstrip("."))
    state = json.loads((checkpoint / "trainer_state.json").read_text())  # a complete checkpoint
    assert 0 < state["global_step"] < STEPS
    assert not (tmp_path / "student" / "metrics.json").exists()  # not a finished run
    results = cli.run(flags)  # the same command resumes from it and finishes
    assert results["student"]["global_step"] == STEPS


def test_a_second_ctrl_c_ends_at_once(tmp_path, monkeypatch, capsys):
    steps = []
    original = DistillationTrainer.training_step

    def twice(self, *args, **kwargs):
        steps.append(self.state.global_step)
        if len(steps) == 3:
            signal.raise_signal(signal.SIGINT)  # the first: recorded
            signal.raise_signal(signal.SIGINT)  # the second: here and now
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "training_step", twice)
    with pytest.raises(SystemExit) as stopped:
        cli.main(_flags(tmp_path))
    assert stopped.value.code == 130 and len(steps) == 3  # no step after the second Ctrl-C
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"resume from {tmp_path / 'student'}/checkpoint-2.")


def test_outside_a_training_loop_the_first_ctrl_c_interrupts_at_once(monkeypatch, capsys, tmp_path):
    def prepare(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # while the data is prepared: nothing to save yet

    monkeypatch.setattr(cli.TASKS["segmentation"], "prepare_data", prepare)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when started in the background
    with pytest.raises(SystemExit) as stopped:
        cli.main(_flags(tmp_path))
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted before training started: run the same command again."
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are uninstalled: what was there before is back


@pytest.mark.slow
def test_sigterm_works_in_a_launched_process(tmp_path):
    flags = _flags(tmp_path, "--max_steps", "100000", "--num_train_epochs", "1000")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, str(SCRIPT), *flags], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True, env=env, cwd=tmp_path)
    out = tmp_path / "student"
    deadline = time.monotonic() + 300
    while not list(out.glob("checkpoint-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith(f"interrupted: run the same command again to resume from {out}/checkpoint-")


def test_a_signal_in_a_step_where_an_evaluation_is_due_still_ends_in_that_steps_checkpoint(tmp_path, monkeypatch, capsys):
    _signal_at(monkeypatch, "step", signal.SIGINT, at_call=3)  # step 3: --eval_steps 3 would evaluate before saving
    with pytest.raises(SystemExit):
        cli.main(_flags(tmp_path))
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"resume from {tmp_path / 'student'}/checkpoint-3.")
