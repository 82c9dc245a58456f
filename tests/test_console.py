"""The console of a run: a heading per phase, about ten loss lines per training phase, the table last."""

from __future__ import annotations

from types import SimpleNamespace

from acamkd_hf import cli
from acamkd_hf.console import CONSOLE_LINES, ConsoleLog


def test_console_prints_about_ten_loss_lines_per_phase_and_every_evaluation(capsys):
    callback = ConsoleLog()
    state = SimpleNamespace(max_steps=1200, global_step=0, epoch=0.0, is_world_process_zero=True)
    args = SimpleNamespace(logging_steps=10)
    callback.on_train_begin(args, state, None)
    for step in range(10, 1201, 10):
        state.global_step, state.epoch = step, step / 30
        callback.on_log(args, state, None, logs={"loss": 1.0, "task_loss": 0.5, "distill/logits/loss": 0.5,
                                                  "distill/logits/spatial": 0.2, "learning_rate": 1e-3})
    callback.on_log(args, state, None, logs={"eval_loss": 0.3, "eval_mean_iou": 0.7, "eval_iou_road": 0.9})
    lines = capsys.readouterr().out.strip().splitlines()
    loss_lines = [line for line in lines if "task_loss" in line]
    assert CONSOLE_LINES <= len(loss_lines) <= CONSOLE_LINES + 1
    assert loss_lines[0].strip().startswith("step 10/1200") and loss_lines[-1].strip().startswith("step 1200/1200")
    assert "logits/loss 0.5" in loss_lines[0] and "spatial" not in loss_lines[0]  # each point's total, not its terms
    assert lines[-1].strip() == "evaluation (step 1200/1200, epoch 40.00): loss 0.3, mean_iou 0.7"


def test_each_phase_has_a_heading_and_the_table_comes_last(tmp_path, capsys):
    cli.run(["--output_dir", str(tmp_path / "student"), "--synthetic_dir", str(tmp_path / "data"), "--synthetic_num_train",
             "8", "--synthetic_num_val", "4", "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
             "--disable_tqdm", "true", "--compare_student_alone", "true", "--report_to", "none"])
    out = capsys.readouterr().out
    headings = [line for line in out.splitlines() if line.startswith("==> ")]
    assert [h.split(":")[0].split(" into ")[0] for h in headings] == [
        "==> teacher", "==> student before training", "==> student alone (the control", "==> student with acamkd from small-segformer"]
    assert out.rstrip().splitlines()[-1].startswith("| student, acamkd | tiny-segformer")
    assert out.count("{'loss'") == 0  # no raw logged dicts
