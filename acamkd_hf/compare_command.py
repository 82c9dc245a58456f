"""``acamkd-compare`` (and ``scripts/compare.py``): which distillation method for my models and data?

    acamkd-compare                                                 # the embedded synthetic default, 4 rows x 3 seeds
    acamkd-compare --teacher path/or/hub-id --student deeplabv3-mobilenetv2 --dataset /data/cityscapes \\
        --config my_recipe.yaml --methods none acamkd pkd cwd --distillation_points logits stage2 --budget 0.25

Takes ``acamkd-distill``'s model, data and recipe flags, plus the rows (``--methods`` x ``--distillation_points``;
``none`` is the student alone), ``--seeds`` and ``--budget``. Every row trains with the same recipe, is evaluated on
the same split, and is paired by seed: the same seed starts each row from the same student with the same data
order and augmentations. A teacher that must be trained is trained once (full recipe) into ``<output_dir>/teacher``.
Each run is ``acamkd-distill`` itself, into ``<output_dir>/<row>/seed<k>``; finished runs are reused, runs made with
other settings are refused (:mod:`acamkd_hf.comparison_runs`), several go out at a time (``--jobs``); Ctrl-C and
SIGTERM stop them at a checkpoint, and a failed run marks its row. The report (:mod:`acamkd_hf.comparison_report`,
:mod:`acamkd_hf.comparison_advice`): ``comparison.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

from transformers import HfArgumentParser

from .arguments import HELP_GROUPS, DataArguments, ModelArguments, group_help, parse_arguments, refuse_unknown_flags
from .comparison_plan import ComparisonArguments, ComparisonPlan, make_plan
from .comparison_report import write_report
from .comparison_runs import (
    Launcher,
    RunFailedError,
    StaleRunError,
    available_cores,
    check_reuse,
    execute,
    failure_summary,
    failures,
    finished,
    visible_gpus,
)
from .config import DistillationArguments
from .errors import InputError, input_checks, input_error_message, is_input_error
from .interrupts import EXIT_STATUS, Interrupts
from .tasks import TASKS

#: acamkd-distill flags that a comparison sets per row: refused on its command line (the rows and seeds say them)
ROW_FLAGS = ("method", "seed", "compare_student_alone")


DESCRIPTION = """\
Which distillation method for my models and data? Trains every row (method x distillation point) on the same
seeds with the same recipe, and reports each row's paired difference to the student alone with its 95% interval,
and one sentence of advice that says only what the intervals support.

  acamkd-compare                                  # the synthetic default: none acamkd pkd cwd, 3 seeds
  acamkd-compare --teacher path/or/hub-id --dataset /data/cityscapes --config recipe.yaml \\
      --methods none acamkd pkd --distillation_points logits stage2 --budget 0.25

Every acamkd-distill flag (model, data, recipe, TrainingArguments) applies to every row; --method, --seed and
--compare_student_alone are the comparison's (--methods, --seeds, the row none).
"""

EPILOG = """\
Runs: <output_dir>/<row>/seed<k> (each one acamkd-distill; its output in seed<k>.log). Interrupted (Ctrl-C, SIGTERM:
the runs going stop at a checkpoint)? Run the same command again: finished runs are reused, interrupted ones resume,
the rest are trained. A finished run made with other settings is refused (--replace_stale_runs trains it again). A
failed run marks its row in the report, and the command ends with exit status 1 naming its log. Report:
<output_dir>/comparison.md, .json, .png (the figure needs matplotlib).
"""


def build_parser() -> HfArgumentParser:
    """Every flag of ``acamkd-compare`` (for ``--help`` and misspelled flags): the comparison's first, then
    ``acamkd-distill``'s by group, without the flags the rows set (:data:`ROW_FLAGS`)."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, DistillationArguments, ComparisonArguments),
        prog="acamkd-compare", usage="%(prog)s [--methods ...] [--seeds ...] [--budget F] [acamkd-distill flags]",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False, conflict_handler="resolve",  # --distillation_points, --output_dir: the comparison's
    )
    parser.add_argument("--config", metavar="FILE", help="A YAML/JSON recipe for every run; flags override its values.")
    for action in [action for action in parser._actions if action.dest in ROW_FLAGS]:  # noqa: SLF001
        owned = [(option, action) for option in list(action.option_strings)]
        parser._handle_conflict_resolve(None, owned)  # noqa: SLF001 (argparse's own way to drop an option)
    comparison = ("comparison", "The comparison: rows, seeds, budget, runs",
                  lambda: [item.name for item in ComparisonArguments.__dataclass_fields__.values()])
    group_help(parser, (comparison, *HELP_GROUPS))
    return parser


def parse(argv: list[str]) -> tuple[ComparisonArguments, list[str]]:
    """``(the comparison's settings, the acamkd-distill flags of every run)``; misspelled flags and bad values end
    in an argparse error naming the closest flag (exit 2), ``--help`` prints every flag by group."""
    refuse_unknown_flags(build_parser(), argv)
    reader = HfArgumentParser(ComparisonArguments, prog="acamkd-compare", allow_abbrev=False)
    comparison, distill_argv = reader.parse_args_into_dataclasses(args=argv, return_remaining_strings=True,
                                                                 look_for_args_file=False)
    if comparison.budget <= 0:
        raise InputError(f"--budget must be above 0 (a fraction of the recipe's training, e.g. 0.25), got "
                         f"{comparison.budget}")
    if len(comparison.seeds) < 2 or len(set(comparison.seeds)) != len(comparison.seeds):
        raise InputError(f"--seeds must be at least 2 distinct seeds (one seed gives no interval), e.g. --seeds 0 1 "
                         f"2; got {' '.join(map(str, comparison.seeds))}")
    if comparison.jobs is not None and comparison.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {comparison.jobs}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("acamkd-compare starts its own runs (one per GPU): run it as a plain program, not under "
                         "accelerate launch or torchrun")
    return comparison, distill_argv


def preflight(plan: ComparisonPlan) -> None:
    """``acamkd-distill``'s input checks before anything trains, in this process: folders, the data (a synthetic set
    is written here, once, not by runs side by side), the models, their labels, and every row's points (on the
    student and the teacher, or the architecture of the teacher trained here)."""
    from .taps import resolve_distillation_points
    from .workflow import prepare_run

    rows = [row for row in plan.rows if row.needs_teacher] or plan.rows
    folder = Path(plan.comparison.output_dir) / rows[0].name
    with input_checks():  # the teacher trained here does not exist yet: its architecture stands in for it
        model_args, data_args, args = parse_arguments([*plan.distill_argv, "--output_dir", str(folder), *rows[0].flags])
    prepared = prepare_run(TASKS[model_args.task](), model_args, data_args, args)
    with input_checks(data_args.dataset):
        for row in rows[1:]:
            points = parse_arguments([*plan.distill_argv, *row.flags])[2].distillation_points
            resolve_distillation_points(prepared.student, prepared.teacher, points, student_name=model_args.student,
                                        teacher_name=prepared.teacher_name)
    del prepared
    gc.collect()


def compare(argv: list[str]) -> dict:
    """The whole program for ``argv``: plan, check, train (or reuse) the teacher and the runs, write the report;
    returns the report's data (``comparison.json``)."""
    comparison, distill_argv = parse(argv)
    plan = make_plan(comparison, distill_argv, argv)
    gpus = visible_gpus()
    launcher = Launcher(jobs=comparison.jobs or (len(gpus) if gpus else available_cores()), gpus=gpus,
                        say=lambda line: print(f"[compare] {line}\n", end="", flush=True))  # one write per line
    every_run = [*([plan.teacher] if plan.teacher else []), *plan.runs]
    check_reuse(every_run, comparison.replace_stale_runs)
    if not all(finished(run) for run in every_run):
        preflight(plan)
    metric_keys = [key for key, _ in plan.metrics]
    teacher = execute([plan.teacher], launcher, metric_keys)[0] if plan.teacher else None
    if teacher is not None and failures([teacher]):
        raise RunFailedError(f"{teacher['failed']}; every distilling row needs it")
    reused = sum(finished(run) for run in plan.runs)
    records = execute(plan.runs, launcher, metric_keys)
    if len(failures(records)) == len(records):
        raise RunFailedError(failure_summary(records, len(records)))
    return write_report(plan, records, teacher, reused, launcher.jobs)


#: the last line of an interrupted comparison
INTERRUPTED = ("interrupted: run the same command again to continue the comparison (finished runs are reused, "
               "interrupted ones resume from their checkpoints).")


def main(argv: list[str] | None = None) -> None:
    """``acamkd-compare``: :func:`compare` on the command line's flags. An input error or a refused stale run ends
    with one line (exit status 2); failed runs, after the report of the others, with one line naming their logs (1);
    Ctrl-C or SIGTERM, once the runs going have stopped at a checkpoint, with how to continue (130, 143)."""
    interrupts = Interrupts()  # SIGTERM as Ctrl-C; while runs go, both are forwarded to them (execute)
    try:
        with interrupts:
            report = compare(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt as interruption:
        print(f"\n{INTERRUPTED}", file=sys.stderr)
        raise SystemExit(EXIT_STATUS.get(getattr(interruption, "number", interrupts.received), 130)) from None
    except RunFailedError as error:
        print(f"acamkd-compare: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as error:
        if not (isinstance(error, StaleRunError) or is_input_error(error)):
            raise
        print(f"acamkd-compare: error: {input_error_message(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    if report["failed"]:
        total = len(report["failed"]) + sum(len(runs) for runs in report["runs"].values())
        listed = ", ".join(f"{record['label']} (log: {record['log']})" for record in report["failed"])
        print(f"acamkd-compare: error: {len(report['failed'])} of {total} run(s) failed: {listed}. The report (its "
              "failed runs with their reasons) covers the runs that finished; the same command trains the failed ones "
              "again.", file=sys.stderr)
        raise SystemExit(1)


__all__ = ["INTERRUPTED", "build_parser", "compare", "main", "parse", "preflight"]


if __name__ == "__main__":
    main()
