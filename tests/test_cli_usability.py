"""The command line's rough edges (issue 15, item 4): a misspelled flag, --help's order, Ctrl-C, a finished run
run again, and a resume from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acamkd_hf import arguments, cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "distill.py"


def _flags(tmp_path: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(tmp_path / "student"), "--synthetic_dir", str(tmp_path / "data"),
            "--synthetic_num_train", "8", "--synthetic_num_val", "4", "--synthetic_image_size", "32", "64",
            "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--disable_tqdm", "true",
            "--compare_student_alone", "false", *extra]  # fmt: skip


def test_a_misspelled_flag_is_an_argparse_error_naming_the_closest_flag(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--methd", "acamkd", "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "acamkd-distill: error: unrecognized argument: --methd (did you mean --method?)"
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        cli.main(["--learning-rat", "0.1", "--distilation_points", "logits"])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "acamkd-distill: error: unrecognized arguments: --learning-rat (did you mean --learning-rate?), "
        "--distilation_points (did you mean --distillation_points?)"
    )
    with pytest.raises(SystemExit):  # abbreviations are not flags: a recipe's flags are spelled in full
        cli.main(["--meth", "none"])
    assert "unrecognized argument: --meth (did you mean --method?)" in capsys.readouterr().err


def test_help_shows_the_distillation_and_data_flags_first_in_groups():
    text = arguments.build_parser().format_help()
    titles = ["options:", "The student and the teacher", "The dataset", "How the teacher teaches",
              "transformers.TrainingArguments"]  # fmt: skip
    positions = [text.index("\n" + title) for title in titles]  # group titles start a line
    assert positions == sorted(positions)
    groups = dict(zip(titles, [text[start:end] for start, end in zip(positions, positions[1:] + [len(text)])]))
    assert "--student" in groups["The student and the teacher"] and "  --teacher TEACHER" in groups["The student and the teacher"]
    assert "--dataset" in groups["The dataset"] and "--crop_size" in groups["The dataset"]
    for flag in ("--method", "--distillation_points", "--alpha", "--num_masks", "--mask_visualization_steps"):
        assert flag in groups["How the teacher teaches"], flag
    training = groups["transformers.TrainingArguments"]
    assert "--output_dir" in training and "--remove_unused_columns" in training
    assert "--method" not in groups["transformers.TrainingArguments"]
    assert text.splitlines()[0].startswith("usage: acamkd-distill [--config FILE]")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_saying_how_to_resume(tmp_path):
    """SIGINT after the first checkpoint: exit status 130, and the last line says that the same command resumes."""
    flags = [*_flags(tmp_path, "--method", "none", "--max_steps", "100000", "--save_strategy", "steps",
                     "--save_steps", "2", "--save_total_limit", "1")]  # fmt: skip
    process = subprocess.Popen([sys.executable, str(SCRIPT), *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=_env(tmp_path), cwd=tmp_path)  # fmt: skip
    out = tmp_path / "student"
    deadline = time.monotonic() + 300
    while not list(out.glob("checkpoint-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: run the same command again to resume from {out}/checkpoint-"), stderr[-3000:]
    assert "Traceback" not in stderr
    assert Path(last.rsplit(" ", 1)[-1].rstrip(".")).is_dir()


def test_the_interrupted_message_without_a_checkpoint(tmp_path):
    assert cli.interrupted_message(str(tmp_path)) == (
        f"interrupted before the first checkpoint in {tmp_path}: the same command starts this training again.")
    assert cli.interrupted_message(None) == "interrupted before training started: run the same command again."


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_rerunning_a_finished_command_says_so_and_changes_nothing(tmp_path, caplog):
    flags = _flags(tmp_path, "--teacher_num_train_epochs", "1")
    first = cli.run(flags)
    folders = [tmp_path / "student", tmp_path / "student_teacher"]
    before = [_files(folder) for folder in folders]
    caplog.clear()
    again = cli.run(flags)
    assert [_files(folder) for folder in folders] == before  # no training, no new checkpoint, no rewritten card
    assert again["student"]["eval_mean_iou"] == first["student"]["eval_mean_iou"]
    assert any(f"{tmp_path / 'student'} holds this command's finished run" in r.getMessage() and "nothing changed" in
               r.getMessage() for r in caplog.records)  # fmt: skip
    # Another command on that folder is not "finished": its checkpoints' settings decide (here: refused).
    with pytest.raises(ValueError, match="already holds a run"):
        cli.run([*flags, "--learning_rate", "0.001"])


@pytest.mark.slow
def test_a_run_stopped_after_its_last_checkpoint_does_not_train_another_step(tmp_path):
    """The Trainer, resumed from checkpoint-N with max_steps N ending mid-epoch, trains step N+1 and writes
    checkpoint-<N+1>; the CLI uses the last checkpoint as it is."""
    flags = _flags(tmp_path, "--method", "none", "--max_steps", "5", "--save_strategy", "steps", "--save_steps", "5")
    first = cli.run(flags)
    (tmp_path / "student" / "metrics.json").unlink()  # as if stopped after the checkpoint, before the end
    again = cli.run(flags)
    assert sorted(p.name for p in (tmp_path / "student").glob("checkpoint-*")) == ["checkpoint-5"]
    assert again["student"]["global_step"] == 5
    assert again["student"]["eval_mean_iou"] == first["student"]["eval_mean_iou"]
    assert json.loads((tmp_path / "student" / "metrics.json").read_text())["student"]["global_step"] == 5


def test_ctrl_c_last_line_survives_objects_that_fail_when_the_interrupted_frames_are_freed(monkeypatch, capsys):
    """Ctrl-C inside e.g. a progress bar's __init__ leaves a half-built object whose __del__ raises when the
    interrupted frames are freed; its "Exception ignored ... Traceback" must not follow (or replace) the last line."""

    class HalfBuilt:
        def __del__(self):
            raise AttributeError("'tqdm_asyncio' object has no attribute 'pos'")

    def interrupted_run(argv):
        held = HalfBuilt()  # noqa: F841 (held by the frame the interruption unwinds)
        raise KeyboardInterrupt

    reported = []
    recorder = reported.append  # what would print "Exception ignored in ... Traceback" (pytest installs its own)
    monkeypatch.setattr(sys, "unraisablehook", recorder)
    monkeypatch.setattr(cli, "run", interrupted_run)
    with pytest.raises(SystemExit) as stopped:
        cli.main([])
    assert stopped.value.code == 130
    stderr = capsys.readouterr().err
    assert stderr.strip().splitlines()[-1] == "interrupted before training started: run the same command again."
    assert reported == [] and "Traceback" not in stderr
    assert sys.unraisablehook is recorder  # the hook before the interruption is back


def test_a_preset_teacher_is_said_to_know_nothing(tmp_path):
    from acamkd_hf.config import DistillationArguments
    from acamkd_hf.preflight import untrained_teacher_warnings
    from acamkd_hf.tasks import TASKS

    def warnings(**values):
        args = DistillationArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **values)
        return untrained_teacher_warnings(TASKS["detection"], args)

    [line] = warnings(teacher="tiny-rtdetr-resnet")
    assert line.startswith("--teacher tiny-rtdetr-resnet is a preset: randomly initialised, it knows nothing")
    assert "--teacher_architecture tiny-rtdetr-resnet" in line
    assert warnings(teacher=str(tmp_path)) == []  # a folder: a trained teacher
    assert warnings(teacher="tiny-rtdetr-resnet", method="none") == []  # no distillation: no teacher is read
