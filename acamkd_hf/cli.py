"""``acamkd-distill``: distil a teacher into a student with ACAM-KD (or a baseline), through ``transformers.Trainer``.

    acamkd-distill                                              # the embedded default: runs anywhere, < 5 min on CPU
    accelerate launch scripts/distill.py --config configs/cityscapes_deeplabv3_r101_to_mbv2.yaml
    python scripts/distill.py --teacher path/or/hub-id --student deeplabv3-mobilenetv2 \\
        --dataset /data/cityscapes --method acamkd --output_dir outputs/mbv2-acamkd

(``acamkd-distill`` and ``python scripts/distill.py`` are the same program; launchers such as ``accelerate launch``
and ``torchrun`` take the script.) With no arguments it makes a small synthetic dataset in the Cityscapes layout
(``--task detection``: COCO), trains a small teacher on it (method ``none``: plain training, this same program),
distils a smaller student with ACAM-KD, evaluates both (and the untrained student), and prints a table. ``--config
FILE`` (YAML or JSON) gives a recipe, and flags override its values; without ``--config`` and ``--dataset``, the
task's default recipe (``configs/defaults/<task>.yaml``) is the base that flags override. Every
``transformers.TrainingArguments`` flag works (``--help`` lists them all).

The output folder is a ready Hugging Face model folder (config, safetensors, image processor) that
``AutoModelForSemanticSegmentation`` / ``AutoModelForObjectDetection`` and ``pipeline`` load, plus
``run_config.json`` (every setting of the run) and ``metrics.json`` (what it measured).


The program's parts: :mod:`acamkd_hf.arguments` (flags and recipes), :mod:`acamkd_hf.preflight` (input checks),
:mod:`acamkd_hf.workflow` (the runs), :mod:`acamkd_hf.resume` (which checkpoint continues), :mod:`acamkd_hf.run_record`
(what is written and read back), :mod:`acamkd_hf.push_command` (``acamkd-push``).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import datasets
import transformers
from transformers.trainer_utils import get_last_checkpoint

import acamkd_hf

from .arguments import ModelArguments, parse_arguments
from .config import DistillationArguments
from .errors import input_checks, input_error_message, is_input_error
from .hub import custom_code_files, model_card, push_student
from .interrupts import Interrupts
from .model_sources import is_local_path
from .models import BackboneDownloadError
from .run_record import arguments_record, finished_run, local_model_path, run_record, write_run_record
from .tasks import TASKS
from .workflow import PreparedRun, prepare_run, train_models

logger = transformers.utils.logging.get_logger("acamkd_hf.cli")  # not __name__: "__main__" under python -m


def setup_logging(args: DistillationArguments) -> None:
    """One log style on each process, as the transformers examples set it: transformers' handler and explicit format,
    transformers and datasets at ``args.get_process_log_level()`` (``--log_level`` on the main process, default
    warning; ``--log_level_replica`` on the others). This package's loggers use the same format, at info on the
    main process unless ``--log_level`` says otherwise, at ``--log_level_replica`` on the others."""
    log_level = args.get_process_log_level()
    transformers.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logging.basicConfig(format="[%(levelname)s|%(filename)s:%(lineno)s] %(asctime)s >> %(message)s")
    passive = args.log_level == "passive" and args.should_log
    logging.getLogger(acamkd_hf.__name__).setLevel(logging.INFO if passive else log_level)

def run(argv: list[str]) -> dict[str, Any]:
    """The whole program for ``argv`` (flags, as on the command line); returns what it measured (``metrics.json``)."""
    with input_checks():  # a setting no loss can use (the settings' own checks): one line
        model_args, data_args, args = parse_arguments(argv)
    setup_logging(args)
    task = TASKS[model_args.task]()
    arguments = arguments_record(model_args, data_args, args)
    finished = finished_run(args.output_dir, arguments)
    if finished is not None:
        logger.warning(
            f"{args.output_dir} holds this command's finished run (run_config.json, metrics.json): nothing to do, "
            f"nothing changed. To train again, pass another --output_dir or delete that folder."
        )
        if args.should_log:
            print_table(task, finished, args.method, args.teacher)
        return finished
    logger.info(f"acamkd_hf {acamkd_hf.__version__}, {task.name}, method {args.method}, output {args.output_dir}")
    prepared = prepare_run(task, model_args, data_args, args)
    results, trainer, args = train_models(prepared, model_args, args)
    if trainer.is_world_process_zero():
        save_and_publish(prepared, trainer, results, model_args, args, arguments)
    return results


def save_and_publish(prepared: PreparedRun, trainer, results: dict[str, Any], model_args: ModelArguments,
                     args: DistillationArguments, arguments: dict[str, Any]) -> None:
    """The student's folder completed (card, then ``run_config.json`` and ``metrics.json``), the table printed, and
    the student pushed with ``--push_to_hub``."""
    run_config = run_record(args, trainer.distillation_settings, model_args, prepared.data_args, prepared.data,
                            prepared.origin, arguments)
    card = Path(args.output_dir, "README.md")
    repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
    # The card is written before the records: a folder with metrics.json is a finished run (finished_run).
    run_config, metrics = (json.loads(json.dumps(record, default=str)) for record in (run_config, results))
    model_card(run_config, metrics, repo_id=repo_id, model_type=prepared.student.config.model_type,
               model_path=local_model_path(args.output_dir), custom_code=custom_code_files(args.output_dir)).save(card)
    write_run_record(args.output_dir, run_config, results)
    print_table(prepared.task, results, args.method, args.teacher)
    logger.info(f"student, run record and model card ({card.name}) in {args.output_dir}")
    if args.push_to_hub:
        url = push_student(args.output_dir, repo_id, private=args.hub_private_repo, token=args.hub_token,
                           revision=args.hub_revision)
        logger.info(f"pushed to {url}")

def teacher_shown(teacher: str | None, recorded: str) -> str:
    """How the table names the teacher: a local folder by its path and, when ``acamkd-distill`` trained it, the model
    it trained (``outputs/compare/teacher (small-segformer)``); otherwise as ``metrics.json`` records it."""
    if not teacher or not is_local_path(teacher):
        return recorded
    try:
        trained = json.loads(Path(os.path.expanduser(teacher), "run_config.json").read_text())["model"]["student"]
    except (OSError, ValueError, KeyError, TypeError):  # not a folder acamkd-distill wrote
        trained = None
    return f"{teacher} ({trained})" if trained else teacher


def print_table(task, results: dict[str, Any], method: str, teacher: str | None = None) -> None:
    """The run's table: teacher, untrained student, student alone, distilled student (``teacher``: the flag, by which
    a local teacher is named, :func:`teacher_shown`)."""
    rows = [
        ("teacher", "teacher"),
        ("student, untrained", "student_untrained"),
        ("student alone (no KD)" if not results.get("student_alone", {}).get("inherited_from_teacher")
         else "student alone, inherited (no KD)", "student_alone"),
        (f"student, {method}", "student"),
    ]
    titles = [title for _, title in task.metrics[:2]]
    print(f"\n| model | architecture | params | {' | '.join(titles)} |")
    print("|---|---|---|" + "---|" * len(titles))
    for label, key in rows:
        if key in results:
            row = results[key]
            values = " | ".join(f"{row.get(f'eval_{name}', float('nan')):.4f}" for name, _ in task.metrics[:2])
            model = teacher_shown(teacher, row["model"]) if key == "teacher" else row["model"]
            print(f"| {label} | {model} | {row['params']:,} | {values} |")
    print()

def main(argv: list[str] | None = None) -> None:
    """``acamkd-distill`` (and ``scripts/distill.py``): :func:`run` on the command line's flags.

    Ctrl-C and SIGTERM stop training at the next step boundary with a checkpoint (:mod:`acamkd_hf.interrupts`; a
    second Ctrl-C at once) and end with one line saying how to resume (exit status 130 / 143); a preset's backbone
    that cannot be downloaded ends with one line saying how to run anyway (exit status 1); an input error with one
    line (exit status 2)."""
    interrupted, unraisable_hook, folder = False, sys.unraisablehook, None
    interrupts = Interrupts()
    try:
        with interrupts:
            run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt as interruption:
        interrupted, folder = True, getattr(interruption, "output_dir", None)  # TrainingInterrupted names it
        # Objects the interrupted frames held (e.g. a progress bar interrupted inside its __init__) fail in their
        # __del__ when those frames are freed, printing "Exception ignored ... Traceback" after the last line: they
        # are side effects of the interruption, so they are silenced until the frames are gone.
        sys.unraisablehook = lambda unraisable: None
    except BackboneDownloadError as error:
        print(f"acamkd-distill: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as error:
        if not is_input_error(error):  # unexpected: its traceback
            raise
        # what the user asked for cannot be done (acamkd_hf.errors): one line, argparse's exit status
        print(f"acamkd-distill: error: {input_error_message(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    if interrupted:
        gc.collect()  # the interrupted frames' objects, freed (quietly) before the last line
        sys.unraisablehook = unraisable_hook
        if int(os.environ.get("RANK", "0")) == 0:
            sys.stdout.flush()
            print(f"\n{interrupted_message(folder)}", file=sys.stderr)
        raise SystemExit(interrupts.exit_status)

def interrupted_message(folder: str | None) -> str:
    """The one line Ctrl-C ends with, ``folder`` the one being trained into (None: before training started):
    rerunning the same command resumes (see :func:`~acamkd_hf.resume.checkpoint_to_resume`)."""
    last = get_last_checkpoint(folder) if folder and os.path.isdir(folder) else None
    if last is not None:
        return f"interrupted: run the same command again to resume from {last}."
    if folder is not None:
        return f"interrupted before the first checkpoint in {folder}: the same command starts this training again."
    return "interrupted before training started: run the same command again."


__all__ = ["main", "run"]


if __name__ == "__main__":  # python -m acamkd_hf.cli (what benchmarks/quality.py runs)
    main()
