"""The runs of one command: the teacher (evaluated, or trained here first), the untrained student, the student
trained alone (the control row) and the distilled student, each through the same :class:`Workbench`.

:func:`prepare_run` checks every input and loads the data and models before anything trains (each problem one line,
:mod:`acamkd_hf.errors`); :func:`train_models` trains and evaluates in that order and returns what each measured.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers import set_seed

from .arguments import DataArguments, ModelArguments
from .config import DistillationArguments
from .connectivity import not_cached_error, offline, work_offline_if_the_hub_is_unreachable
from .console import phase_heading
from .errors import input_checks
from .interrupts import Interrupts, TrainingInterrupted
from .model_sources import is_hub_id, is_local_path
from .models import preset_options
from .preflight import (
    check_models_take_the_inputs,
    check_task_flags,
    check_teacher,
    check_writable_directory,
    launch_warnings,
    output_directories,
    recipe_warnings,
    sibling_folder,
    untrained_teacher_warnings,
)
from .resume import checkpoint_to_resume, last_step_state
from .taps import resolve_distillation_points
from .tasks import dataset_origin
from .trainer import DistillationTrainer, first_input_size

logger = logging.getLogger(__name__)


def load_model(task, name_or_path: str, data, model_args: ModelArguments, role: str, seed: int):
    """A preset (built with the dataset's labels), Hub id or folder. A loaded student gets the dataset's labels (its
    class heads start anew when its own differ, one line says which); a loaded teacher keeps its own, checked
    against the distillation points by :func:`check_teacher`.

    The seed is set first, so a preset's random initialisation is the same wherever it is built: the distilled
    student, the student trained alone and the "untrained" row all start from the same weights."""
    set_seed(seed)
    try:
        return _load(task, name_or_path, data, model_args, role)
    except OSError as error:
        if offline() and is_hub_id(name_or_path):  # not in the cache: one line, not the loader's traceback
            raise not_cached_error(name_or_path, role) from error
        raise


def _load(task, name_or_path: str, data, model_args: ModelArguments, role: str):
    return task.load_model(
        name_or_path,
        data.id2label,
        trust_remote_code=model_args.trust_remote_code,
        revision=model_args.model_revision,
        role=role,
        preset_options=preset_options(
            name_or_path,
            pretrained_backbone=model_args.pretrained_backbone,
            backbone_weights=model_args.teacher_backbone_weights if role == "teacher" else model_args.backbone_weights,
        ),
    )


def describe(model, name: str) -> dict[str, Any]:
    """A row of the table (and ``metrics.json``, from which the card is made): a local folder by its name only."""
    shown = Path(name).name if is_local_path(name) else name
    return {"model": shown, "model_type": model.config.model_type, "params": sum(p.numel() for p in model.parameters())}


def train_and_evaluate(trainer: DistillationTrainer, args: DistillationArguments) -> dict[str, float]:
    """Trains (resuming per :func:`~acamkd_hf.resume.checkpoint_to_resume`), saves the student, evaluates; what it
    measured. Ctrl-C / SIGTERM during training end in :class:`~acamkd_hf.interrupts.TrainingInterrupted` naming
    ``args.output_dir``."""
    resume = checkpoint_to_resume(args)
    finished = last_step_state(resume) if resume else None
    trained: dict[str, float] = {}
    if finished is not None:
        logger.info(f"{resume} is the last step of this training: loading it instead of training again")
        trainer.adopt_finished_checkpoint(resume, finished, load_best_model=args.load_best_model_at_end)
    else:
        try:
            train_result = trainer.train(resume_from_checkpoint=resume)
        except KeyboardInterrupt as interruption:
            raise TrainingInterrupted(args.output_dir) from interruption
        if Interrupts.installed is not None and Interrupts.installed.received is not None:
            raise TrainingInterrupted(args.output_dir)  # stopped at a step boundary, its checkpoint written: end here
        trainer.save_metrics("train", train_result.metrics)
        trained = {"train_runtime": train_result.metrics["train_runtime"]}
    trainer.save_model()  # the student only: a plain HF model folder
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return {**metrics, "global_step": trainer.state.global_step, **trained}


def plain_training_args(args: DistillationArguments, **changes) -> DistillationArguments:
    """The run's recipe for plain training (the teacher trained here, the student alone, evaluations)."""
    return replace(args, **{"method": "none", "inherit_from_teacher": False, "resume_from_checkpoint": None, **changes})


@dataclass
class Workbench:
    """What every training and evaluation of one run shares: the task, its data and image processor."""

    task: Any
    data: Any
    image_processor: Any
    data_args: DataArguments

    def datasets(self):
        """(train, evaluation): the task's datasets with their transforms (nothing is decoded until read)."""
        return self.task.datasets(self.data, self.image_processor, self.data_args)

    def trainer(self, student, teacher, args: DistillationArguments) -> DistillationTrainer:
        train, evaluation = self.datasets()
        return DistillationTrainer(
            model=student,
            teacher_model=teacher,
            labels_for_metrics=self.task.labels_for_metrics,
            # The Trainer's own push would upload checkpoints and the internal teacher / baseline runs; the student
            # is pushed once at the end instead, with its card (acamkd_hf.hub.push_student).
            args=replace(args, push_to_hub=False),
            train_dataset=train,
            eval_dataset=evaluation,
            data_collator=self.task.collate,
            processing_class=self.image_processor,
            compute_metrics=self.task.compute_metrics(self.data, self.image_processor),
        )

    def train(self, model, args: DistillationArguments, inherit_from=None) -> dict[str, float]:
        """Plain training (``args`` from :func:`plain_training_args`), then evaluation; ``inherit_from``: the teacher
        whose neck and heads the model starts from (``args.inherit_from_teacher``)."""
        return train_and_evaluate(self.trainer(model, inherit_from, args), args)

    def evaluate(self, model, args: DistillationArguments) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as scratch:  # an evaluation writes nothing worth keeping
            return self.trainer(model, None, plain_training_args(args, output_dir=scratch)).evaluate()


class _quiet_loading:
    """Within this block, this package's model-loading lines (the student loaded a second time) are not repeated."""

    def __enter__(self):
        self._logger = logging.getLogger("acamkd_hf.models.labels")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)


@dataclass
class PreparedRun:
    """Everything a run needs, checked and loaded before anything trains."""

    task: Any
    data: Any
    data_args: DataArguments  # with the dataset resolved (the synthetic set's folder when none was given)
    origin: dict[str, Any]
    student: Any
    teacher: Any | None
    teacher_name: str
    teacher_knows_the_classes: bool
    bench: Workbench


def prepare_run(task, model_args: ModelArguments, data_args: DataArguments, args: DistillationArguments) -> PreparedRun:
    """Checks every input before anything trains, in the order that wastes nothing: output folders (no data is read
    for a run that could not save), the data (files, splits, labels: in the task's loader), model paths, label sets,
    distillation points. Each problem is one line (:mod:`acamkd_hf.errors`)."""
    with input_checks(data_args.dataset):
        check_task_flags(task, data_args)
        hub_ids = [name for name in (model_args.student, args.teacher or model_args.teacher_architecture,
                                     data_args.dataset) if is_hub_id(name)]
        work_offline_if_the_hub_is_unreachable(hub_ids)
        for folder in output_directories(args, model_args):
            check_writable_directory(folder)
        with args.main_process_first(local=True, desc="preparing the data"):  # one process writes a synthetic set
            data, data_args = task.prepare_data(data_args, data_args.synthetic_seed)
        origin = dataset_origin(data_args.dataset)
        if args.should_log:
            for warning in [*recipe_warnings(task, data, data_args, args), *launch_warnings(args),
                            *untrained_teacher_warnings(task, args)]:
                logger.warning(warning)

        student = load_model(task, model_args.student, data, model_args, "student", args.seed)
        teacher = None
        teacher_name = args.teacher or model_args.teacher_architecture
        teacher_knows_the_classes = True
        models = {"student": (model_args.student, student)}
        points: list[str] = []
        if args.distilling:
            teacher = load_model(task, teacher_name, data, model_args, "teacher", args.seed)
            models["teacher"] = (teacher_name, teacher)
            # The trainer checks the points too, but the teacher trained here would train first: a wrong name fails now.
            points = resolve_distillation_points(
                student, teacher, args.distillation_points, student_name=model_args.student, teacher_name=teacher_name
            )
            teacher_knows_the_classes = check_teacher(teacher, data, points, args, teacher_name)
        image_processor = task.image_processor(
            model_args.student, data, trust_remote_code=model_args.trust_remote_code, revision=model_args.model_revision,
            input_size=data_args.image_size,
        )
        bench = Workbench(task, data, image_processor, data_args)
        check_models_take_the_inputs(models, points, *(first_input_size(split) for split in bench.datasets()))
    return PreparedRun(task, data, data_args, origin, student, teacher, teacher_name, teacher_knows_the_classes, bench)


def teacher_row(run: PreparedRun, model_args: ModelArguments, args: DistillationArguments) -> tuple[dict, DistillationArguments]:
    """The teacher's row (trained here first when no ``--teacher`` was given, else evaluated) and the arguments the
    student's run continues with (``teacher``: the folder of the teacher trained here)."""
    describe_teacher = describe(run.teacher, run.teacher_name)
    if args.teacher is None:
        teacher_dir = sibling_folder(args, "teacher")
        logger.info(f"no --teacher given: training {run.teacher_name} first (method none) into {teacher_dir}")
        teacher_args = plain_training_args(
            args, output_dir=teacher_dir, num_train_epochs=model_args.teacher_num_train_epochs or args.num_train_epochs
        )
        phase_heading(f"teacher: training {run.teacher_name} here (no distillation) into {teacher_dir}", args.should_log)
        row = {**describe_teacher, "trained_here": teacher_dir, **run.bench.train(run.teacher, teacher_args)}
        return row, replace(args, teacher=teacher_dir)
    if run.teacher_knows_the_classes:
        phase_heading(f"teacher: evaluating {run.teacher_name}", args.should_log)
        return {**describe_teacher, **run.bench.evaluate(run.teacher, args)}, args
    # its predictions are of other classes: no score on this dataset
    return {**describe_teacher, "not_evaluated": "another label set than the dataset's"}, args


def student_alone_row(run: PreparedRun, model_args: ModelArguments, args: DistillationArguments) -> dict[str, Any]:
    """The control row: the same student trained alone (inheriting from the teacher when the run inherits, so that
    it differs from the distilled student by the imitation alone: the benchmark's ``student_inherited``)."""
    alone_dir = sibling_folder(args, "student_alone")
    with _quiet_loading():  # the same student again: its loading was reported above
        alone = load_model(run.task, model_args.student, run.data, model_args, "student", args.seed)
    alone_args = plain_training_args(args, output_dir=alone_dir, inherit_from_teacher=args.inherit_from_teacher)
    control = "inheriting from the teacher, no imitation" if args.inherit_from_teacher else "no teacher"
    phase_heading(f"student alone (the control: {control}) into {alone_dir}", args.should_log)
    return {**describe(alone, model_args.student), "output_dir": alone_dir, "inherited_from_teacher": args.inherit_from_teacher,
            **run.bench.train(alone, alone_args, run.teacher if args.inherit_from_teacher else None)}


def train_models(run: PreparedRun, model_args: ModelArguments, args: DistillationArguments):
    """The teacher's row, the untrained student's, the student alone's (``--compare_student_alone``) and the
    distilled student's, in that order: ``(results, the student's trainer, the arguments it trained with)``."""
    results: dict[str, Any] = {}
    if args.distilling:
        results["teacher"], args = teacher_row(run, model_args, args)
    phase_heading(f"student before training: evaluating {model_args.student}", args.should_log)
    results["student_untrained"] = {**describe(run.student, model_args.student), **run.bench.evaluate(run.student, args)}
    if model_args.compare_student_alone and args.distilling:
        results["student_alone"] = student_alone_row(run, model_args, args)
    trainer = run.bench.trainer(run.student, run.teacher, args)
    phase_heading(f"student with {args.method}" + (f" from {run.teacher_name}" if run.teacher is not None else "")
                  + f" into {args.output_dir}", args.should_log)
    results["student"] = {**describe(run.student, model_args.student), "method": args.method,
                          **train_and_evaluate(trainer, args)}
    return results, trainer, args


__all__ = ["PreparedRun", "Workbench", "load_model", "prepare_run", "train_and_evaluate", "train_models"]
