"""Distil a semantic-segmentation teacher into a student with ACAM-KD (or a baseline), through ``transformers.Trainer``.

    acamkd-distill                                              # the embedded default: runs anywhere, < 5 min on CPU
    accelerate launch scripts/distill.py --config configs/cityscapes_deeplabv3_r101_to_mbv2.yaml
    python scripts/distill.py --teacher path/or/hub-id --student deeplabv3-mobilenetv2 \\
        --dataset /data/cityscapes --method acamkd --output_dir outputs/mbv2-acamkd

(``acamkd-distill`` and ``python scripts/distill.py`` are the same program; launchers such as ``accelerate launch``
and ``torchrun`` take the script.) With no arguments it makes a small synthetic dataset in the Cityscapes layout,
trains a small teacher on it (method ``none``: plain training, this same program), distils a smaller student with
ACAM-KD, evaluates both (and the untrained student), and prints a table. ``--config FILE`` (YAML or JSON) gives a
recipe, and flags override its values; without ``--config`` and ``--dataset``, the embedded synthetic recipe is the
base that flags override. Every ``transformers.TrainingArguments`` flag works (``--help`` lists them all).

The output folder is a ready Hugging Face model folder (config, safetensors, image processor) that
``AutoModelForSemanticSegmentation.from_pretrained`` and ``pipeline("image-segmentation")`` load, plus
``run_config.json`` (every setting of the run) and ``metrics.json`` (what it measured).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

import acamkd_hf

from .config import DistillationArguments
from .hub import HubPushError, files_to_push, model_card, push_student, write_model_card
from .models import describe_label_mismatch
from .settings import DistillationSettings
from .taps import resolve_distillation_points
from .tasks import TASKS
from .trainer import DistillationTrainer

logger = transformers.utils.logging.get_logger(__name__)


@dataclass
class ModelArguments:
    task: str = field(default="segmentation", metadata={"help": "What is distilled.", "choices": list(TASKS)})
    student: str | None = field(
        default=None,
        metadata={"help": "Student: a preset (see acamkd_hf.models), a Hub id or a local folder. Default: the task's "
                          "small CPU student (segmentation: tiny-segformer)."},
    )
    teacher_architecture: str | None = field(
        default=None,
        metadata={"help": "When no --teacher is given: the preset trained here first as the teacher (method none). "
                          "Default: the task's (segmentation: small-segformer)."},
    )
    teacher_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Epochs for that teacher (default: --num_train_epochs)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom code from Hub models (off unless you turn it on)."}
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the loaded models."})
    compare_student_alone: bool = field(
        default=False,
        metadata={"help": "Also train the student without distillation under the same recipe, for the table."},
    )


@dataclass
class DataArguments:
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "A Cityscapes folder (leftImg8bit/ + gtFine/), a local dataset folder or a Hub dataset id with "
            "image + segmentation-map columns. Default: a synthetic set in the Cityscapes layout, made here."
        },
    )
    synthetic_dir: str | None = field(
        default=None, metadata={"help": "Where the synthetic set is written (default: ~/.cache/acamkd_hf/...)."}
    )
    synthetic_seed: int = field(
        default=0, metadata={"help": "Seed of the synthetic set (independent of --seed: other seeds, same data)."}
    )
    synthetic_num_train: int = field(default=240, metadata={"help": "Synthetic training images."})
    synthetic_num_val: int = field(default=60, metadata={"help": "Synthetic validation images."})
    synthetic_image_size: list[int] | None = field(
        default=None, metadata={"help": "H W of the synthetic images (default: the task's; segmentation 64 128)."}
    )
    synthetic_num_classes: int | None = field(
        default=None, metadata={"help": "Classes of the synthetic set (default: the task's; segmentation 8, <= 19)."}
    )
    id2label: str | None = field(default=None, metadata={"help": "JSON file {id: name} for datasets without one."})
    train_split: str | None = field(default=None, metadata={"help": "Training split of a Hub/local dataset."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Evaluation split of a Hub/local dataset (default: validation/val/test)."}
    )
    validation_fraction: float | None = field(
        default=None, metadata={"help": "Segmentation: hold out this fraction of the training split for evaluation."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column of a Hub/local dataset."})
    label_column: str | None = field(default=None, metadata={"help": "Segmentation-map column of a Hub/local dataset."})
    reduce_labels: bool = field(
        default=False,
        metadata={"help": "Segmentation maps whose 0 means 'other' (ADE20K style): 0 -> ignore, k -> k - 1."},
    )
    crop_size: list[int] | None = field(
        default=None, metadata={"help": "Training crop H W (paper: 512 1024). Default: the first training image's size."}
    )
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0], metadata={"help": "Random scale range."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})


EPILOG = """\
Defaults: without --config and --dataset, the embedded synthetic recipe replaces the Trainer defaults shown above:
  method acamkd, compare_student_alone true, 20 epochs (segmentation), batch 8, learning_rate 3e-3, polynomial
  schedule, seed 0, output_dir outputs/acamkd-synthetic (see DEFAULT_RECIPE in acamkd_hf.cli and acamkd_hf.tasks).
  With --dataset and no --config, the Trainer's own defaults apply: set --learning_rate, --num_train_epochs,
  --output_dir.
Distillation flags: --teacher --method --distillation_points --alpha --lambda_div --num_masks --mask_kinds
  --fusion_mode --detach_student_in_fusion --detach_masks_in_imitation --inherit_from_teacher (listed above).
"""


#: The embedded default (no arguments): the task's training settings (``Task.default_recipe``) plus these. Small
#: enough for 2 CPU cores in under 5 minutes, large enough that the teacher clearly beats an untrained student.
DEFAULT_RECIPE: dict[str, Any] = {
    "method": "acamkd",
    "compare_student_alone": True,
    "logging_steps": 10,
    "eval_strategy": "no",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "seed": 0,
    "report_to": "none",
    "disable_tqdm": False,
}


# ----------------------------------------------------------------------------------------------------- arguments
def build_parser() -> HfArgumentParser:
    """The parser of every flag: the model, data and distillation (+ ``TrainingArguments``) dataclasses, ``--config``."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, DistillationArguments),
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="A YAML/JSON recipe; flags given with it override its values.")
    return parser


def read_recipe(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    recipe = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of argument names to values")
    return recipe


def base_recipe(argv: list[str]) -> tuple[dict[str, Any], str]:
    """The recipe that flags override, and where it comes from: ``--config FILE`` when given; else, without
    ``--dataset``, the embedded synthetic default of ``--task`` (``DEFAULT_RECIPE`` + ``Task.default_recipe``); else
    nothing (the Trainer's own defaults)."""
    chooser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # reads these three, ignores the rest
    for flag in ("--config", "--task", "--dataset"):
        chooser.add_argument(flag)
    given, _ = chooser.parse_known_args(argv)
    if given.config is not None:
        return read_recipe(given.config), given.config
    if given.dataset is None:
        task = TASKS.get(given.task or "segmentation")
        return {**DEFAULT_RECIPE, **(task.default_recipe if task else {})}, "the embedded default recipe"
    return {}, "no recipe"


def recipe_defaults(parser: argparse.ArgumentParser, recipe: dict[str, Any], source: str) -> dict[str, Any]:
    """The recipe as parser defaults (for ``parser.set_defaults``), each value converted as its flag would be
    (``learning_rate: 3e-3`` is a float, ``crop_size: [512, 1024]`` a list of ints, ``method`` one of its choices).

    ``null`` leaves the flag's own default; a dict (``lr_scheduler_kwargs``) is kept as it is. A key that is no flag,
    a value its flag cannot take or a list for a single-value flag raise ``ValueError`` naming the key."""
    actions = {
        option[2:]: action
        for action in parser._actions  # noqa: SLF001 (argparse has no public list of its actions)
        if action.dest not in ("help", "config") and action.nargs != 0  # nargs 0: --no_<flag> complements
        for option in action.option_strings
        if option.startswith("--")
    }
    defaults: dict[str, Any] = {}
    for key, value in recipe.items():
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(str(key), list(actions), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else " acamkd-distill --help lists them."
            raise ValueError(f"{source}: {key!r} is not a setting of acamkd-distill.{hint}")
        if value is None:
            continue
        defaults[action.dest] = value if isinstance(value, dict) else _as_flag_value(action, key, value, source)
    return defaults


def _as_flag_value(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    """``value`` as argparse makes it from ``--key value`` (``--key v1 v2`` for a list)."""
    many = action.nargs in ("+", "*")
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) != 1 and not many:
        raise ValueError(f"{source}: {key!r} takes one value, got the list {value!r}")
    try:
        converted = [action.type(str(item)) if action.type else str(item) for item in items]
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"{source}: {key!r} cannot be {value!r}: {error}") from None
    for item in converted:
        if action.choices is not None and item not in action.choices:
            choices = ", ".join(str(choice) for choice in action.choices)
            raise ValueError(f"{source}: {key!r} cannot be {item!r}; choose one of: {choices}")
    return converted if many else converted[0]


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, DistillationArguments]:
    """Flags over the base recipe (:func:`base_recipe`), which becomes the parser's defaults; then what the task
    needs (``Task.required_training_args``) and what the machine needs (no pinned memory without a GPU, ``use_cpu``
    when launched as several processes without GPUs)."""
    argv = list(argv)
    recipe, source = base_recipe(argv)
    parser = build_parser()
    parser.set_defaults(**recipe_defaults(parser, recipe, source))
    model_args, data_args, training_args, *_ = parser.parse_args_into_dataclasses(args=argv)  # _: --config
    task = TASKS[model_args.task]()
    model_args.student = model_args.student or task.default_student
    model_args.teacher_architecture = model_args.teacher_architecture or task.default_teacher
    changes: dict[str, Any] = dict(task.required_training_args)
    if not torch.cuda.is_available():
        changes["dataloader_pin_memory"] = False  # nothing to pin to
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Launched as several processes on a machine without GPUs: without use_cpu, accelerate finds no device
            # and every process would train alone on all the data (which the trainer refuses).
            changes["use_cpu"] = True
    return model_args, data_args, replace(training_args, **changes)


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


# ----------------------------------------------------------------------------------------------------- checks
def check_writable_directory(directory: str, flag: str = "--output_dir") -> None:
    """The run can create and write ``directory``: checked by writing (and removing) a file in it, or, when it does
    not exist yet, in the closest existing folder above it, where it will be created. Permission bits alone do not
    answer this (root ignores them; read-only mounts, ACLs). Raises PermissionError naming the directory."""
    path = Path(directory).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise PermissionError(
            f"the output directory {path} {problem}, not a folder. Choose another {flag}, or move that file away."
        )
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".acamkd-write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        where = f"{existing}, where it would be created," if existing != path else str(path)
        raise PermissionError(
            f"the output directory {path} is not writable: {where} refuses new files ({error.strerror or error}). "
            f"Choose a writable {flag}, or give yourself write permission there."
        ) from error


def output_directories(args: DistillationArguments, model_args: ModelArguments) -> list[str]:
    """Every folder the run writes: the student's, the teacher's when it is trained here, the lone student's."""
    folders = [args.output_dir]
    if args.method != "none" and args.teacher is None:
        folders.append(_sibling(args, "teacher"))
    if model_args.compare_student_alone and args.method != "none":
        folders.append(_sibling(args, "student_alone"))
    return folders


def _sibling(args: DistillationArguments, role: str) -> str:
    """The folder of the teacher trained here / the student trained alone: ``<output_dir>_<role>``."""
    return f"{args.output_dir.rstrip('/')}_{role}"


# ----------------------------------------------------------------------------------------------------- models
def load_model(task, name_or_path: str, data, model_args: ModelArguments, role: str, seed: int):
    """A preset (built with the dataset's labels), Hub id or folder; its label set must be the dataset's.

    The seed is set first, so a preset's random initialisation is the same wherever it is built: the distilled
    student, the student trained alone and the "untrained" row all start from the same weights."""
    set_seed(seed)
    model = task.load_model(
        name_or_path, data.id2label, trust_remote_code=model_args.trust_remote_code, revision=model_args.model_revision
    )
    problem = describe_label_mismatch(model.config.id2label, data.id2label, name_a=role, name_b="dataset")
    if problem:
        raise ValueError(
            f"the {role} {name_or_path!r} and the dataset have different label sets: {problem.rstrip('.')}. "
            f"Use a {role} trained on this label set, or a preset (built with the dataset's labels)."
        )
    return model


def describe(model, name: str) -> dict[str, Any]:
    return {"model": name, "model_type": model.config.model_type, "params": sum(p.numel() for p in model.parameters())}


# ----------------------------------------------------------------------------------------------------- training
#: Training settings a checkpoint must share with the current run to be resumed automatically (and the teacher and
#: every distillation setting, see :func:`checkpoint_to_resume`).
RESUME_KEYS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "seed", "optim",
               "gradient_accumulation_steps", "lr_scheduler_type", "weight_decay")


def checkpoint_to_resume(args: DistillationArguments) -> str | None:
    """``--resume_from_checkpoint`` if given; else the last checkpoint in ``output_dir`` when it was written with the
    same settings (a crashed or interrupted run continues); else an error: a folder holding another run's
    checkpoints is never silently reused."""
    if args.resume_from_checkpoint:
        return args.resume_from_checkpoint
    last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    if last is None:
        return None
    saved_path = Path(last, "training_args.json")
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
    current = json.loads(args.to_json_string())
    keys = (*RESUME_KEYS, *distillation_record(args, args.distillation_settings()))
    different = {key: (saved.get(key, "<missing>"), current.get(key)) for key in keys if saved.get(key, "<missing>") != current.get(key)}
    if different:
        listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in different.items())
        raise ValueError(
            f"{args.output_dir} already holds a run ({Path(last).name}) with other settings ({listed}). Use another "
            f"--output_dir, delete that folder, or pass --resume_from_checkpoint {last} to continue it anyway."
        )
    logger.info(f"resuming the interrupted run from {last}")
    return last


def train_and_evaluate(trainer: DistillationTrainer, args: DistillationArguments) -> dict[str, float]:
    resume = checkpoint_to_resume(args)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # the student only: a plain HF model folder
    trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return {**metrics, "global_step": trainer.state.global_step, "train_runtime": train_result.metrics["train_runtime"]}


def plain_training_args(args: DistillationArguments, **changes) -> DistillationArguments:
    """The run's recipe for plain training (the teacher trained here, the student alone, evaluations)."""
    return replace(args, method="none", inherit_from_teacher=False, resume_from_checkpoint=None, **changes)


@dataclass
class Workbench:
    """What every training and evaluation of one run shares: the task, its data and image processor."""

    task: Any
    data: Any
    image_processor: Any
    data_args: DataArguments

    def trainer(self, student, teacher, args: DistillationArguments) -> DistillationTrainer:
        train, evaluation = self.task.datasets(self.data, self.image_processor, self.data_args)
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

    def train(self, model, args: DistillationArguments) -> dict[str, float]:
        """Plain training (``args`` from :func:`plain_training_args`), then evaluation."""
        return train_and_evaluate(self.trainer(model, None, args), args)

    def evaluate(self, model, args: DistillationArguments) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as scratch:  # an evaluation writes nothing worth keeping
            return self.trainer(model, None, plain_training_args(args, output_dir=scratch)).evaluate()


# ----------------------------------------------------------------------------------------------------- the run
def run(argv: list[str]) -> dict[str, Any]:
    """The whole program for ``argv`` (flags, as on the command line); returns what it measured (``metrics.json``)."""
    model_args, data_args, args = parse_arguments(argv)
    setup_logging(args)
    task = TASKS[model_args.task]()
    logger.info(f"acamkd_hf {acamkd_hf.__version__}, {task.name}, method {args.method}, output {args.output_dir}")

    # Everything that can be wrong with the inputs is checked before anything trains: output folders (first: no
    # data is read for a run that could not save), the data (files, splits, labels: in the task's loader), model
    # paths, label sets, distillation points.
    for folder in output_directories(args, model_args):
        check_writable_directory(folder)
    synthetic = data_args.dataset is None
    with args.main_process_first(local=True, desc="preparing the data"):  # one process writes a synthetic set
        data = task.prepare_data(data_args, data_args.synthetic_seed)

    student = load_model(task, model_args.student, data, model_args, "student", args.seed)
    teacher = None
    teacher_name = args.teacher or model_args.teacher_architecture
    if args.method != "none":
        teacher = load_model(task, teacher_name, data, model_args, "teacher", args.seed)
        # The trainer checks the points too, but the teacher trained here would train first: a wrong name fails now.
        resolve_distillation_points(
            student, teacher, args.distillation_points, student_name=model_args.student, teacher_name=teacher_name
        )
    image_processor = task.image_processor(
        model_args.student, data, trust_remote_code=model_args.trust_remote_code, revision=model_args.model_revision
    )
    bench = Workbench(task, data, image_processor, data_args)

    results: dict[str, Any] = {}
    if args.method != "none":
        if args.teacher is None:
            teacher_dir = _sibling(args, "teacher")
            logger.info(f"no --teacher given: training {teacher_name} first (method none) into {teacher_dir}")
            teacher_args = plain_training_args(
                args, output_dir=teacher_dir, num_train_epochs=model_args.teacher_num_train_epochs or args.num_train_epochs
            )
            results["teacher"] = {**describe(teacher, teacher_name), "trained_here": teacher_dir, **bench.train(teacher, teacher_args)}
            args = replace(args, teacher=teacher_dir)
        else:
            results["teacher"] = {**describe(teacher, teacher_name), **bench.evaluate(teacher, args)}

    results["student_untrained"] = {**describe(student, model_args.student), **bench.evaluate(student, args)}

    if model_args.compare_student_alone and args.method != "none":
        alone_dir = _sibling(args, "student_alone")
        alone = load_model(task, model_args.student, data, model_args, "student", args.seed)
        alone_args = plain_training_args(args, output_dir=alone_dir)
        results["student_alone"] = {**describe(alone, model_args.student), "output_dir": alone_dir, **bench.train(alone, alone_args)}

    trainer = bench.trainer(student, teacher, args)
    results["student"] = {**describe(student, model_args.student), "method": args.method, **train_and_evaluate(trainer, args)}

    if trainer.is_world_process_zero():
        run_config = run_record(args, trainer.distillation_settings, model_args, data_args, data, synthetic)
        run_config, metrics = write_run_record(args.output_dir, run_config, results)
        repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
        card = Path(args.output_dir, "README.md")
        model_card(run_config, metrics, repo_id=repo_id, model_type=student.config.model_type).save(card)
        print_table(task, results, args.method)
        logger.info(f"student, run record and model card ({card.name}) in {args.output_dir}")
        if args.push_to_hub:
            url = push_student(args.output_dir, repo_id, private=args.hub_private_repo, token=args.hub_token,
                               revision=args.hub_revision)
            logger.info(f"pushed to {url}")
    return results


# ----------------------------------------------------------------------------------------------------- the record
def distillation_record(args: DistillationArguments, settings: DistillationSettings) -> dict[str, Any]:
    """``run_config.json``'s ``distillation``: the teacher, then every distillation setting."""
    return {"teacher": args.teacher, **settings.to_dict()}


def hardware(args: DistillationArguments) -> dict[str, Any]:
    if torch.cuda.is_available() and not args.use_cpu:
        device = f"{args.world_size} x {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU ({os.cpu_count()} cores), {args.world_size} process(es)"
    return {"device": device, "num_processes": args.world_size}


def run_record(args, settings: DistillationSettings, model_args, data_args, data, synthetic: bool) -> dict[str, Any]:
    """``run_config.json``: versions, hardware, and every setting of the run (``settings``: as used, defaults
    resolved: the trainer's ``distillation_settings``)."""
    return {
        "acamkd_hf_version": acamkd_hf.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "hardware": hardware(args),
        "model": asdict(model_args),
        "data": {**asdict(data_args), "synthetic": synthetic, "num_labels": data.num_labels, "id2label": data.id2label},
        "distillation": distillation_record(args, settings),
        "training": json.loads(args.to_json_string()),
    }


def write_run_record(output_dir: str, run_config: dict[str, Any], metrics: dict[str, Any]) -> tuple[dict, dict]:
    """Writes ``run_config.json`` and ``metrics.json``; returns both as written (JSON types, as a reader of the files
    gets them: the card made from them is the one ``acamkd-push`` re-renders from the folder)."""
    written = []
    for name, record in (("run_config.json", run_config), ("metrics.json", metrics)):
        text = json.dumps(record, indent=2, default=str)
        Path(output_dir, name).write_text(text)
        written.append(json.loads(text))
    return written[0], written[1]


def print_table(task, results: dict[str, Any], method: str) -> None:
    rows = [
        ("teacher", "teacher"),
        ("student, untrained", "student_untrained"),
        ("student alone (no KD)", "student_alone"),
        (f"student, {method}", "student"),
    ]
    titles = [title for _, title in task.metrics[:2]]
    print(f"\n| model | architecture | params | {' | '.join(titles)} |")
    print("|---|---|---|" + "---|" * len(titles))
    for label, key in rows:
        if key in results:
            row = results[key]
            values = " | ".join(f"{row.get(f'eval_{name}', float('nan')):.4f}" for name, _ in task.metrics[:2])
            print(f"| {label} | {row['model']} | {row['params']:,} | {values} |")
    print()


# ----------------------------------------------------------------------------------------------------- entry points
def main(argv: list[str] | None = None) -> None:
    """``acamkd-distill`` (and ``scripts/distill.py``): :func:`run` on the command line's flags."""
    run(sys.argv[1:] if argv is None else argv)


def push_main(argv: list[str] | None = None) -> int:
    """``acamkd-push`` (and ``scripts/push_to_hub.py``): re-renders the card of a finished run's folder from its
    record, then uploads exactly the student's files, the card, run_config.json, metrics.json and the training log
    (:func:`acamkd_hf.hub.files_to_push`). Returns the exit status: 1, with the reason, when it cannot push."""
    parser = argparse.ArgumentParser(
        description="Push a distilled student folder (written by acamkd-distill) to the Hugging Face Hub, with its "
        "model card."
    )
    parser.add_argument("output_dir", help="the student folder written by acamkd-distill")
    parser.add_argument("repo_id", help="the Hub repository, e.g. your-name/model-name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--include_distillation_modules", action="store_true",
                        help="also upload the adapters/fusion/selection units of the latest checkpoint")
    parser.add_argument("--dry_run", action="store_true", help="render the card and list the files; upload nothing")
    args = parser.parse_args(argv)
    try:
        write_model_card(args.output_dir, repo_id=args.repo_id)  # the card names the repository it lives in
        if args.dry_run:
            print("\n".join(files_to_push(args.output_dir, args.include_distillation_modules)))
            return 0
        url = push_student(args.output_dir, args.repo_id, private=args.private or None, revision=args.revision,
                           include_distillation_modules=args.include_distillation_modules)
    except (HubPushError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.output_dir} to {url}")
    return 0


__all__ = [
    "DEFAULT_RECIPE",
    "DataArguments",
    "ModelArguments",
    "build_parser",
    "main",
    "parse_arguments",
    "push_main",
    "run",
]


if __name__ == "__main__":  # python -m acamkd_hf.cli (what benchmarks/quality.py runs)
    main()
