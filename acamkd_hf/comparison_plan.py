"""A comparison's plan: its settings (:class:`ComparisonArguments`), its rows (method x distillation point), and the
runs that make them: the teacher, trained once when none is given, and every row at every seed, each an
``acamkd-distill`` command (:class:`~acamkd_hf.comparison_runs.Run`) at the comparison's budget. A run's command line
holds only what it trains with (:func:`run_argv`): a flag its method does not read, or one the run sets itself, is
left out, so that the reuse rule sees a change only where one matters (the teacher is trained once).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from pathlib import Path

from .arguments import DataArguments, ModelArguments, base_recipe, build_parser, parse_arguments
from .comparison_runs import Run
from .config import DistillationArguments
from .distiller import recorded_settings
from .errors import InputError, input_checks
from .settings import METHODS, DistillationSettings
from .tasks import TASKS


@dataclass
class ComparisonArguments:
    """What ``acamkd-compare`` adds to ``acamkd-distill``'s flags: the rows, the seeds, the budget, the runs."""

    methods: list[str] = field(
        default_factory=lambda: ["none", "acamkd", "pkd", "cwd"],
        metadata={"help": "The methods compared, one row each per point; 'none' is the student alone (with "
                          "--inherit_from_teacher: inheriting, no imitation gradient). Default: none acamkd pkd cwd.",
                  "choices": list(METHODS)},
    )
    distillation_points: list[str] | None = field(
        default=None,
        metadata={"help": "One row per method and point (e.g. logits stage2); 'neck1+neck2' distils at both in one "
                          "row. Default: the recipe's points (the task's: logits; every neck level), one row per "
                          "method."},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "The seeds, each a paired replicate of every row: at least 2 (an interval needs two), "
                          "default 0 1 2."},
    )
    budget: float = field(
        default=1.0,
        metadata={"help": "Fraction of the recipe's training (--num_train_epochs, or --max_steps when set) each run "
                          "gets: 0.25 screens at a quarter, then train the winner fully with acamkd-distill. A teacher "
                          "trained here always gets its full recipe."},
    )
    jobs: int | None = field(
        default=None,
        metadata={"help": "Runs at a time, each its own process. Default: one per GPU (each run sees one); without "
                          "GPUs one per CPU core. Each run gets OMP_NUM_THREADS threads when you set it, else the "
                          "cores split between the runs (one thread each by default)."},
    )
    output_dir: str = field(
        default="outputs/acamkd-compare",
        metadata={"help": "The comparison's folder: teacher/, <row>/seed<k>/ per run (+ .log), comparison.md, "
                          ".json and .png. Rerun the same command to continue an interrupted comparison."},
    )
    replace_stale_runs: bool = field(
        default=False,
        metadata={"help": "A finished run made with other settings (flags, or what the code's defaults make of them) "
                          "is deleted and trained again. Default: refused, naming what changed."},
    )


@dataclass
class Row:
    """One row: its folder name, its name in words, the flags that make it, and whether it needs the teacher."""

    name: str
    label: str
    flags: list[str]
    needs_teacher: bool

    @property
    def method(self) -> str:
        return self.flags[self.flags.index("--method") + 1]


def plan_rows(comparison: ComparisonArguments, inherit_from_teacher: bool) -> list[Row]:
    """The rows: each method at each point (``none``: the student alone, once, whatever the points). With
    inheritance the student alone inherits too and imitates with weight 0 (only the imitation differs)."""
    rows = []
    for method in dict.fromkeys(comparison.methods):
        if method == "none":
            flags = ["--method", "mse", "--alpha", "0"] if inherit_from_teacher else ["--method", "none"]
            rows.append(Row("student_alone", "student alone", flags, inherit_from_teacher))
            continue
        for entry in comparison.distillation_points or [None]:
            if entry is None:
                rows.append(Row(method, method, ["--method", method], True))
                continue
            points = [point for point in entry.split("+") if point]
            if not points or any("/" in point for point in points):
                raise InputError(f"--distillation_points: {entry!r} is not a point name (e.g. logits, stage2, "
                                 "neck1+neck2)")
            rows.append(Row(f"{method}_{'+'.join(points)}", f"{method} at {' + '.join(points)}",
                            ["--method", method, "--distillation_points", *points], True))
    if len(rows) < 2:
        raise InputError(f"--methods {' '.join(comparison.methods)} makes {len(rows)} row: compare at least two, e.g. "
                         "--methods none acamkd")
    return rows


def counted(number: float, unit: str) -> str:
    """``1 epoch``, ``0.5 epochs``, ``12 steps``."""
    return f"{number:g} {unit}" + ("" if number == 1 else "s")


def budget_flags(args: DistillationArguments, budget: float) -> tuple[list[str], str]:
    """The flags that give a run ``budget`` of the recipe's training, and the report's words for it."""
    if args.max_steps and args.max_steps > 0:
        steps = max(1, round(args.max_steps * budget))
        words = f"budget {budget:g} of the recipe's {counted(args.max_steps, 'step')}: {counted(steps, 'step')} per run"
        return ["--max_steps", str(steps)], words
    epochs = args.num_train_epochs * budget
    return (["--num_train_epochs", f"{epochs:g}"], f"budget {budget:g} of the recipe's "
            f"{counted(args.num_train_epochs, 'epoch')}: {counted(epochs, 'epoch')} per run")


@functools.cache
def flag_destinations() -> dict[str, str]:
    """``{option string: setting}`` of every ``acamkd-distill`` flag (``--alpha``, ``--no_alignment``...)."""
    return {option: action.dest for action in build_parser()._actions for option in action.option_strings}  # noqa: SLF001


def run_argv(distill_argv: list[str], method: str, own_flags: list[str]) -> list[str]:
    """One run's command line: ``distill_argv`` without the distillation settings ``method`` does not read
    (:func:`~acamkd_hf.distiller.recorded_settings`; the teacher and the student alone read none but
    ``COMMON_RECORDED_SETTINGS``) and without the flags of ``own_flags`` (the run's own, which follow and override
    them), then ``own_flags``."""
    destinations = flag_destinations()
    unread = {item.name for item in fields(DistillationSettings)} - set(recorded_settings(DistillationSettings(method)))
    left_out = unread | {destinations[token] for token in own_flags if token in destinations}
    kept, dropping = [], False
    for token in distill_argv:
        if token.startswith("--"):
            dropping = destinations.get(token.split("=", 1)[0]) in left_out
        if not dropping:
            kept.append(token)
    return [*kept, *own_flags]


def teacher_run(distill_argv: list[str], model_args: ModelArguments, args: DistillationArguments, folder: Path) -> Run:
    """The teacher trained here (no ``--teacher`` given): ``acamkd-distill --method none`` on the teacher's
    architecture at its full recipe (``--teacher_num_train_epochs``, else ``--num_train_epochs``), once."""
    epochs = model_args.teacher_num_train_epochs or args.num_train_epochs
    own = ["--output_dir", str(folder), "--method", "none", "--student", model_args.teacher_architecture,
           "--num_train_epochs", f"{epochs:g}", "--compare_student_alone", "false", "--inherit_from_teacher", "false",
           "--disable_tqdm", "true"]
    if model_args.teacher_backbone_weights:
        own += ["--backbone_weights", model_args.teacher_backbone_weights]
    return Run("teacher", None, run_argv(distill_argv, "none", own), folder)


def row_runs(rows: list[Row], seeds: list[int], distill_argv: list[str], budget: tuple[float, list[str]],
             teacher: str | None, output_dir: Path) -> list[Run]:
    """Every row at every seed, seed by seed (an interrupted comparison has every row of its first seeds);
    ``budget``: the fraction of the recipe and the flags that give it."""
    fraction, budget_argv = budget
    runs = []
    for seed in seeds:
        for row in rows:
            folder = output_dir / row.name / f"seed{seed}"
            own = ["--output_dir", str(folder), "--seed", str(seed), *row.flags, *budget_argv,
                   "--compare_student_alone", "false", "--disable_tqdm", "true"]
            if row.needs_teacher and teacher is not None:
                own += ["--teacher", teacher]
            runs.append(Run(row.name, seed, run_argv(distill_argv, row.method, own), folder, fraction))
    return runs


@dataclass
class ComparisonPlan:
    """Everything a comparison trains and reports: its settings, the recipe as resolved, the rows, the teacher (its
    run when trained here; ``teacher_name``: the folder or the given ``--teacher``) and the runs."""

    comparison: ComparisonArguments
    command: list[str]
    distill_argv: list[str]
    model_args: ModelArguments
    data_args: DataArguments
    args: DistillationArguments
    recipe: str
    rows: list[Row]
    budget_words: str
    teacher: Run | None
    teacher_name: str | None
    runs: list[Run]

    @property
    def labels(self) -> dict[str, str]:
        return {row.name: row.label for row in self.rows}

    @property
    def metrics(self) -> list[tuple[str, str]]:
        """``(key in metrics.json, title)`` of the task's metrics, the headline first."""
        return [(f"eval_{name}", title) for name, title in TASKS[self.model_args.task].metrics]

    @property
    def control(self) -> str | None:
        """The student alone's row, which every other is paired against (None when --methods leaves it out)."""
        return next((row.name for row in self.rows if row.name == "student_alone"), None)


def make_plan(comparison: ComparisonArguments, distill_argv: list[str], command: list[str]) -> ComparisonPlan:
    """The plan of ``comparison`` with ``distill_argv`` (the flags every run shares), the recipe resolved as
    ``acamkd-distill`` resolves it."""
    output_dir = Path(comparison.output_dir)
    with input_checks():
        model_args, data_args, args = parse_arguments([*distill_argv, "--output_dir", str(output_dir / "recipe")])
    if args.push_to_hub or args.resume_from_checkpoint:
        flag = "--push_to_hub" if args.push_to_hub else "--resume_from_checkpoint"
        raise InputError(f"{flag} would apply to every run of the comparison: leave it out (a comparison continues "
                         "by itself when run again; push the winner, trained with acamkd-distill, with acamkd-push)")
    rows = plan_rows(comparison, args.inherit_from_teacher)
    budget, budget_words = budget_flags(args, comparison.budget)
    needs_teacher = any(row.needs_teacher for row in rows)
    teacher = None
    if needs_teacher and not args.teacher:
        teacher = teacher_run(distill_argv, model_args, args, output_dir / "teacher")
    teacher_name = str(teacher.output_dir) if teacher else args.teacher
    runs = row_runs(rows, comparison.seeds, distill_argv, (comparison.budget, budget), teacher_name, output_dir)
    return ComparisonPlan(comparison, command, distill_argv, model_args, data_args, args, base_recipe(distill_argv)[1],
                          rows, budget_words, teacher, teacher_name, runs)


__all__ = ["ComparisonArguments", "ComparisonPlan", "Row", "budget_flags", "counted", "make_plan", "plan_rows",
           "row_runs", "run_argv", "teacher_run"]
