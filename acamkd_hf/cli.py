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
import gc
import dataclasses
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
from transformers import HfArgumentParser, TrainerState, set_seed
from transformers.trainer_utils import get_last_checkpoint

import acamkd_hf

from .config import DistillationArguments
from .distiller import recorded_settings
from .connectivity import not_cached_error, offline, work_offline_if_the_hub_is_unreachable
from .console import phase_heading
from .interrupts import Interrupts
from .errors import input_checks, input_error_message, is_input_error
from .hub import HubPushError, custom_code_files, is_hub_id, model_card, push_student, upload_contents
from .models import PRETRAINED_BACKBONE_PRESETS, BackboneDownloadError, canonical_preset_name, preset_options
from .models.presets import pretrained_backbone_license
from .models.labels import check_teacher_labels, describe_label_mismatch
from .settings import DistillationSettings
from .taps import resolve_distillation_points
from .tasks import TASKS, dataset_origin
from .trainer import DistillationTrainer

logger = transformers.utils.logging.get_logger("acamkd_hf.cli")  # not __name__: "__main__" under python -m


@dataclass
class ModelArguments:
    task: str = field(default="segmentation", metadata={"help": "What is distilled.", "choices": list(TASKS)})
    student: str | None = field(
        default=None,
        metadata={"help": "Student: a preset (see acamkd_hf.models), a Hub id or a local folder. A checkpoint with other "
                          "classes gets the dataset's (its class heads start anew; one line says which). Default: the "
                          "task's small CPU student (segmentation: tiny-segformer)."},
    )
    teacher_architecture: str | None = field(
        default=None,
        metadata={"help": "When no --teacher is given: the preset trained here first as the teacher (method none). "
                          "Default: the task's (segmentation: small-segformer)."},
    )
    teacher_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Epochs for that teacher (default: --num_train_epochs)."}
    )
    pretrained_backbone: bool | None = field(
        default=None,
        metadata={"help": "DeepLabV3 presets (deeplabv3-resnet101/50/18, deeplabv3-mobilenetv2): start the backbone "
                          "from timm's ImageNet weights, downloaded once from the Hub (default true, as the paper). "
                          "false: a random-initialised backbone, nothing downloaded."},
    )
    backbone_weights: str | None = field(
        default=None,
        metadata={"help": "DeepLabV3 student preset: a local copy of its backbone's ImageNet weights, used instead of "
                          "the download: a .safetensors/.pth/.bin file, or a folder holding model.safetensors or "
                          "pytorch_model.bin (e.g. a downloaded timm/mobilenetv2_100.ra_in1k)."},
    )
    teacher_backbone_weights: str | None = field(
        default=None,
        metadata={"help": "The same for a DeepLabV3 teacher preset (e.g. timm/resnet101.a1h_in1k's weights)."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom code from Hub models (off unless you turn it on)."}
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the loaded models."})
    compare_student_alone: bool = field(
        default=False,
        metadata={"help": "Also train the student without distillation under the same recipe, for the table (the "
                          "control; with --inherit_from_teacher it inherits too: only the imitation differs)."},
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
        default=None, metadata={"help": "Segmentation: training crop H W (paper: 512 1024). Default: the first training "
                                        "image's size. (Detection: --image_size.)"}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Detection input size, by the family's convention: RT-DETR, every image resized to N x N "
                          "(a multiple of 32); DETR / Deformable DETR, the shortest edge N (the longest at most "
                          "N * 1333 / 800; aspect ratio kept, batches padded). Default: the student's own processor; "
                          "a preset: the family's (RT-DETR 640, DETR 800), the synthetic set's side for it. "
                          "Metrics are always scored on the original image sizes."},
    )
    ignore_unknown_label_values: bool = field(
        default=False,
        metadata={"help": "Segmentation: label-map values the dataset's table does not define (e.g. 250 in a "
                          "Cityscapes labelIds map) become ignored pixels instead of an error naming the file; the "
                          "first maps' unknown values are counted in the log."},
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
Interrupted (Ctrl-C, a crash)? Run the same command again: it resumes from the last checkpoint in --output_dir.
A finished run's command run again says so and changes nothing.
"""

USAGE = "%(prog)s [--config FILE] [--FLAG VALUE ...]   (flags override the recipe; --help lists them by group)"

#: The --help groups, in order, after "options" (--help, --config); each flag goes to the first group that names its
#: dataclass field (DistillationArguments' own fields are distillation flags; the rest are TrainingArguments').
HELP_GROUPS = (
    ("models", "The student and the teacher (presets, Hub ids or folders)", lambda: [*_field_names(ModelArguments), "teacher"]),
    ("data", "The dataset (a synthetic one when none is given)", lambda: _field_names(DataArguments)),
    ("distillation", "How the teacher teaches (acamkd_hf.settings.DistillationSettings)",
     lambda: [*_field_names(DistillationSettings), *_own_field_names(DistillationArguments)]),
    ("training", "transformers.TrainingArguments (every flag; the recipe's values are the defaults shown)",
     lambda: _field_names(DistillationArguments)),
)
#: TrainingArguments fields whose default DistillationArguments changes: they stay in the training group.
_TRAINING_OVERRIDES = ("remove_unused_columns", "label_names", "ddp_find_unused_parameters")


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _own_field_names(cls) -> list[str]:
    inherited = {name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for name in _field_names(base)}
    return [name for name in _field_names(cls) if name not in inherited and name not in _TRAINING_OVERRIDES]


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
        prog="acamkd-distill",
        usage=USAGE,
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a flag is spelled in full: a misspelled one is an error with the closest flag named
    )
    parser.add_argument("--config", metavar="FILE", help="A YAML/JSON recipe; flags given with it override its values.")
    _group_help(parser)
    return parser


def _group_help(parser: argparse.ArgumentParser) -> None:
    """Moves every dataclass flag from the one "options" group into :data:`HELP_GROUPS` (presentation only: parsing
    does not depend on groups), so ``--help`` shows the models, data and distillation flags before the ~700 lines of
    ``TrainingArguments``."""
    optionals = parser._optionals  # noqa: SLF001 (argparse has no public way to regroup actions)
    placed: set[int] = set()
    for _, title, names in HELP_GROUPS:
        group = parser.add_argument_group(title)
        wanted = set(names())
        for action in list(optionals._group_actions):  # noqa: SLF001
            if action.dest in wanted and id(action) not in placed:
                optionals._group_actions.remove(action)  # noqa: SLF001
                group._group_actions.append(action)  # noqa: SLF001
                placed.add(id(action))


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
    refuse_unknown_flags(parser, argv)
    model_args, data_args, training_args, *_ = parser.parse_args_into_dataclasses(args=argv)  # _: --config
    task = TASKS[model_args.task]()
    model_args.student = canonical_preset_name(model_args.student or task.default_student)
    model_args.teacher_architecture = canonical_preset_name(model_args.teacher_architecture or task.default_teacher)
    changes: dict[str, Any] = dict(task.required_training_args)
    if training_args.teacher is not None:
        changes["teacher"] = canonical_preset_name(training_args.teacher)
    if not torch.cuda.is_available():
        changes["dataloader_pin_memory"] = False  # nothing to pin to
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Launched as several processes on a machine without GPUs: without use_cpu, accelerate finds no device
            # and every process would train alone on all the data (which the trainer refuses).
            changes["use_cpu"] = True
    return model_args, data_args, replace(training_args, **changes)


def refuse_unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """An argparse-style error (usage, one line, exit status 2; no traceback) for flags that are none of the
    parser's, naming the closest valid flag ("--methd" -> "did you mean --method?")."""
    _, unknown = parser.parse_known_args(argv)
    flags = [token.split("=", 1)[0] for token in unknown if token.startswith("-")]
    if not unknown:
        return
    if not flags:
        parser.error(f"unexpected value(s) {' '.join(unknown)}: every value follows its --flag")
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]  # noqa: SLF001
    hints = []
    for flag in flags:
        dashes = "-" in flag[2:]  # answer in the user's spelling: --output-dir or --output_dir
        spelled = {o.replace("-", "_"): o for o in sorted(options, key=lambda o: ("-" in o[2:]) == dashes)}
        close = difflib.get_close_matches(flag.replace("-", "_"), list(spelled), n=1, cutoff=0.6)
        hints.append(f"{flag} (did you mean {spelled[close[0]]}?)" if close else flag)
    parser.error(f"unrecognized argument{'s' if len(flags) > 1 else ''}: {', '.join(hints)}")


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


def check_task_flags(task, data_args: DataArguments) -> None:
    """Flags of the other task: refused, with the flag that does it here (``--crop_size`` vs ``--image_size``)."""
    if task.name == "detection" and data_args.crop_size:
        raise ValueError("--crop_size is a segmentation flag; detection resizes whole images: use --image_size N "
                         "(RT-DETR: N x N; DETR family: shortest edge N)")
    if task.name == "segmentation" and data_args.image_size is not None:
        raise ValueError("--image_size is a detection flag; segmentation trains on crops: use --crop_size H W")


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


def check_teacher(teacher, data, points: list[str], args: DistillationArguments, teacher_name: str) -> bool:
    """Whether the teacher classifies the dataset's classes. If not: refused when a point compares class outputs
    (``logits``) or ``--inherit_from_teacher`` would copy its class heads; otherwise allowed (the trainer says so
    once, naming the feature points)."""
    teacher_labels = getattr(teacher.config, "id2label", None)
    check_teacher_labels(teacher_labels, data.id2label, points, teacher_name=teacher_name, warn=False)
    problem = describe_label_mismatch(teacher_labels or {}, data.id2label, name_a="teacher", name_b="dataset")
    if problem and args.inherit_from_teacher:
        raise ValueError(
            f"--inherit_from_teacher copies the teacher's heads, but the teacher {teacher_name!r} classifies other "
            f"classes: {problem.rstrip('.')}. Pass --inherit_from_teacher false, or use a teacher trained on this "
            f"label set."
        )
    return problem is None


def describe(model, name: str) -> dict[str, Any]:
    """A row of the table (and ``metrics.json``, from which the card is made): a local folder by its name only."""
    shown = Path(name).name if os.path.exists(os.path.expanduser(name)) else name
    return {"model": shown, "model_type": model.config.model_type, "params": sum(p.numel() for p in model.parameters())}


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
    different = {key: (saved.get(key, "<missing>"), current.get(key)) for key in (*RESUME_KEYS, "teacher")
                 if saved.get(key, "<missing>") != current.get(key)}
    # The distillation settings compare by what they train (defaults filled in); a setting missing from an older
    # checkpoint means what the code did before the setting existed.
    different.update(DistillationSettings.from_record(saved).differences(args.distillation_settings()))
    if different:
        listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in different.items())
        raise ValueError(
            f"{args.output_dir} already holds a run ({Path(last).name}) with other settings ({listed}). Use another "
            f"--output_dir, delete that folder, or pass --resume_from_checkpoint {last} to continue it anyway."
        )
    logger.info(f"resuming the interrupted run from {last}")
    return last


#: The folder being trained into right now (the teacher's, the lone student's or the student's): where Ctrl-C's
#: message looks for the checkpoint a rerun resumes from.
_TRAINING_INTO: list[str] = []


def train_and_evaluate(trainer: DistillationTrainer, args: DistillationArguments) -> dict[str, float]:
    resume = checkpoint_to_resume(args)
    finished = last_step_state(resume) if resume else None
    trained: dict[str, float] = {}
    if finished is not None:
        # Interrupted after its last checkpoint: the Trainer would train one step more on resume (and write
        # checkpoint-<N+1>) when the last step ends mid-epoch. The checkpoint is the end of training: use it.
        logger.info(f"{resume} is the last step of this training: loading it instead of training again")
        best = finished.best_model_checkpoint if args.load_best_model_at_end else None
        trainer._load_from_checkpoint(best or resume)  # noqa: SLF001 (the DistillationTrainer's own restore)
        trainer.state = finished
    else:
        _TRAINING_INTO[:] = [args.output_dir]
        train_result = trainer.train(resume_from_checkpoint=resume)  # Ctrl-C leaves _TRAINING_INTO set: main reads it
        if Interrupts.installed is not None and Interrupts.installed.received is not None:
            raise KeyboardInterrupt  # stopped at a step boundary by a signal, its checkpoint written: end here
        _TRAINING_INTO[:] = []
        trainer.save_metrics("train", train_result.metrics)
        trained = {"train_runtime": train_result.metrics["train_runtime"]}
    trainer.save_model()  # the student only: a plain HF model folder
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return {**metrics, "global_step": trainer.state.global_step, **trained}


def last_step_state(checkpoint: str) -> TrainerState | None:
    """The checkpoint's trainer state when it is the last step of its training (``global_step >= max_steps``)."""
    path = Path(checkpoint, "trainer_state.json")
    if not path.is_file():
        return None
    state = TrainerState.load_from_json(str(path))
    return state if state.max_steps and state.global_step >= state.max_steps else None


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

    def train(self, model, args: DistillationArguments, inherit_from=None) -> dict[str, float]:
        """Plain training (``args`` from :func:`plain_training_args`), then evaluation; ``inherit_from``: the teacher
        whose neck and heads the model starts from (``args.inherit_from_teacher``)."""
        return train_and_evaluate(self.trainer(model, inherit_from, args), args)

    def evaluate(self, model, args: DistillationArguments) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as scratch:  # an evaluation writes nothing worth keeping
            return self.trainer(model, None, plain_training_args(args, output_dir=scratch)).evaluate()


# ----------------------------------------------------------------------------------------------------- the run
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
            print_table(task, finished, args.method)
        return finished
    logger.info(f"acamkd_hf {acamkd_hf.__version__}, {task.name}, method {args.method}, output {args.output_dir}")

    # Everything that can be wrong with the inputs is checked before anything trains: output folders (first: no
    # data is read for a run that could not save), the data (files, splits, labels: in the task's loader), model
    # paths, label sets, distillation points. Each problem is one line (acamkd_hf.errors).
    with input_checks(data_args.dataset):
        check_task_flags(task, data_args)
        hub_ids = [name for name in (model_args.student, args.teacher or model_args.teacher_architecture,
                                     data_args.dataset) if is_hub_id(name)]
        work_offline_if_the_hub_is_unreachable(hub_ids)
        for folder in output_directories(args, model_args):
            check_writable_directory(folder)
        with args.main_process_first(local=True, desc="preparing the data"):  # one process writes a synthetic set
            data = task.prepare_data(data_args, data_args.synthetic_seed)
        origin = dataset_origin(data_args.dataset)
        if args.should_log:
            for warning in [*recipe_warnings(task, data, data_args, args), *launch_warnings(args)]:
                logger.warning(warning)

        student = load_model(task, model_args.student, data, model_args, "student", args.seed)
        teacher = None
        teacher_name = args.teacher or model_args.teacher_architecture
        teacher_knows_the_classes = True
        if args.method != "none":
            teacher = load_model(task, teacher_name, data, model_args, "teacher", args.seed)
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

    results: dict[str, Any] = {}
    if args.method != "none":
        if args.teacher is None:
            teacher_dir = _sibling(args, "teacher")
            logger.info(f"no --teacher given: training {teacher_name} first (method none) into {teacher_dir}")
            teacher_args = plain_training_args(
                args, output_dir=teacher_dir, num_train_epochs=model_args.teacher_num_train_epochs or args.num_train_epochs
            )
            phase_heading(f"teacher: training {teacher_name} here (no distillation) into {teacher_dir}", args.should_log)
            results["teacher"] = {**describe(teacher, teacher_name), "trained_here": teacher_dir, **bench.train(teacher, teacher_args)}
            args = replace(args, teacher=teacher_dir)
        elif teacher_knows_the_classes:
            phase_heading(f"teacher: evaluating {teacher_name}", args.should_log)
            results["teacher"] = {**describe(teacher, teacher_name), **bench.evaluate(teacher, args)}
        else:  # its predictions are of other classes: no score on this dataset
            results["teacher"] = {**describe(teacher, teacher_name), "not_evaluated": "another label set than the dataset's"}

    phase_heading(f"student before training: evaluating {model_args.student}", args.should_log)
    results["student_untrained"] = {**describe(student, model_args.student), **bench.evaluate(student, args)}

    if model_args.compare_student_alone and args.method != "none":
        alone_dir = _sibling(args, "student_alone")
        with _quiet_loading():  # the same student again: its loading was reported above
            alone = load_model(task, model_args.student, data, model_args, "student", args.seed)
        # The control differs from the distilled student by the imitation alone: it inherits when the run inherits
        # (the benchmark's student_inherited row).
        alone_args = plain_training_args(args, output_dir=alone_dir, inherit_from_teacher=args.inherit_from_teacher)
        control = "inheriting from the teacher, no imitation" if args.inherit_from_teacher else "no teacher"
        phase_heading(f"student alone (the control: {control}) into {alone_dir}", args.should_log)
        results["student_alone"] = {**describe(alone, model_args.student), "output_dir": alone_dir,
                                    "inherited_from_teacher": args.inherit_from_teacher,
                                    **bench.train(alone, alone_args, teacher if args.inherit_from_teacher else None)}

    trainer = bench.trainer(student, teacher, args)
    phase_heading(f"student with {args.method}" + (f" from {teacher_name}" if teacher is not None else "")
                  + f" into {args.output_dir}", args.should_log)
    results["student"] = {**describe(student, model_args.student), "method": args.method, **train_and_evaluate(trainer, args)}

    if trainer.is_world_process_zero():
        run_config = run_record(args, trainer.distillation_settings, model_args, data_args, data, origin, arguments)
        card = Path(args.output_dir, "README.md")
        repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
        # The card is written before the records: a folder with metrics.json is a finished run (finished_run).
        run_config, metrics = (json.loads(json.dumps(record, default=str)) for record in (run_config, results))
        model_card(run_config, metrics, repo_id=repo_id, model_type=student.config.model_type,
                   model_path=local_model_path(args.output_dir), custom_code=custom_code_files(args.output_dir)).save(card)
        write_run_record(args.output_dir, run_config, results)
        print_table(task, results, args.method)
        logger.info(f"student, run record and model card ({card.name}) in {args.output_dir}")
        if args.push_to_hub:
            url = push_student(args.output_dir, repo_id, private=args.hub_private_repo, token=args.hub_token,
                               revision=args.hub_revision)
            logger.info(f"pushed to {url}")
    return results


def recipe_warnings(task, data, data_args: DataArguments, args: DistillationArguments) -> list[str]:
    """Settings that do not fit the data, said once at the start: the task's (a crop larger than the images) and
    ``--num_masks`` above the dataset's classes (segmentation: the paper uses one mask per class)."""
    warnings = list(task.recipe_warnings(data, data_args))
    if task.name == "segmentation" and args.method == "acamkd" and args.num_masks and args.num_masks > data.num_labels:
        warnings.append(
            f"--num_masks {args.num_masks} is more than the dataset's {data.num_labels} classes (the paper uses one mask "
            f"per class): pass --num_masks {data.num_labels}, or leave it unset for that default."
        )
    return warnings


def launch_warnings(args: DistillationArguments) -> list[str]:
    """A launch that does not do what its config says: FSDP (``accelerate launch --config_file fsdp.yaml``) on CPU
    processes, which accelerate runs as plain data-parallel CPU training."""
    if args.use_cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        return ["FSDP was asked for, but the processes train on CPU: accelerate runs them as plain data-parallel "
                "(DDP-style) training, nothing is sharded. FSDP needs GPUs."]
    return []


class _quiet_loading:
    """Within this block, this package's model-loading lines (the student loaded a second time) are not repeated."""

    def __enter__(self):
        self._logger = logging.getLogger("acamkd_hf.models.labels")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)


def arguments_record(model_args: ModelArguments, data_args: DataArguments, args: DistillationArguments) -> dict[str, Any]:
    """Every setting as this command gives it (recipe + flags, before the run resolves anything): what
    ``run_config.json`` records as ``arguments``, and what tells a rerun of the same command (:func:`finished_run`)."""
    return json.loads(json.dumps(
        {"model": asdict(model_args), "data": asdict(data_args), "training": json.loads(args.to_json_string())},
        default=str,
    ))


def finished_run(output_dir: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of the finished run in ``output_dir`` when it was made by the same command (its
    ``run_config.json`` records the same ``arguments``), else None. ``metrics.json`` is written last, so a folder
    with it holds a complete run: rerunning its command must not train again or rewrite the model and card."""
    folder = Path(output_dir)
    try:
        run_config = json.loads((folder / "run_config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if run_config.get("arguments") == arguments else None


def local_model_path(output_dir: str) -> str:
    """How the card's usage snippet names the local folder before a push: the path as given when relative, relative
    to the working directory when below it, else the folder's name (never an absolute path)."""
    path = Path(output_dir)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name


# ----------------------------------------------------------------------------------------------------- the record
def distillation_record(args: DistillationArguments, settings: DistillationSettings) -> dict[str, Any]:
    """``run_config.json``'s ``distillation``: the teacher, then the settings the method reads
    (:func:`~acamkd_hf.distiller.recorded_settings`)."""
    return {"teacher": args.teacher, **recorded_settings(settings)}


def hardware(args: DistillationArguments) -> dict[str, Any]:
    """Where the numbers were measured: what changes them at the last digits (device, processes, CPU threads)."""
    if torch.cuda.is_available() and not args.use_cpu:
        device = f"{args.world_size} x {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)), {args.world_size} process(es)"
    return {"device": device, "num_processes": args.world_size, "torch_threads": torch.get_num_threads()}


def provenance(model_args: ModelArguments) -> dict[str, Any]:
    """What the card's metadata can say of the student's starting weights: ``base_model`` (a Hub id) and their
    ``license`` where known (a local folder's or the cached Hub card's ``license``; timm's for the ImageNet backbones
    of the DeepLabV3 presets)."""
    from .hub import is_hub_id, known_license

    student = model_args.student
    license_ = None
    if student in PRETRAINED_BACKBONE_PRESETS and model_args.pretrained_backbone is not False and not model_args.backbone_weights:
        license_ = pretrained_backbone_license(student)
    elif student not in TASKS[model_args.task].presets:
        license_ = known_license(student, revision=model_args.model_revision)
    return {"base_model": student if is_hub_id(student) else None, "license": license_}


def model_source(name: str | None, presets) -> str | None:
    """"local" (a folder), "preset" or "hub" (a Hub id): how the card may name a model (never by a local path)."""
    if not name:
        return None
    if os.path.exists(os.path.expanduser(name)):
        return "local"
    return "preset" if name in presets else "hub"


def run_record(args, settings: DistillationSettings, model_args, data_args, data, origin: dict[str, Any],
               arguments: dict[str, Any]) -> dict[str, Any]:
    """``run_config.json``: versions, hardware, and every setting of the run (``settings``: as used, defaults
    resolved: the trainer's ``distillation_settings``; ``arguments``: as the command gave them)."""
    return {
        "acamkd_hf_version": acamkd_hf.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "hardware": hardware(args),
        "model": {**asdict(model_args), **{f"student_{key}": value for key, value in provenance(model_args).items()},
                  "teacher_source": model_source(args.teacher, TASKS[model_args.task].presets)},
        "data": {**asdict(data_args), "synthetic": origin["origin"] == "synthetic", **origin,
                 "num_labels": data.num_labels, "id2label": data.id2label},
        "distillation": distillation_record(args, settings),
        "training": json.loads(args.to_json_string()),
        "arguments": arguments,
    }


def write_run_record(output_dir: str, run_config: dict[str, Any], metrics: dict[str, Any]) -> tuple[dict, dict]:
    """Writes ``run_config.json`` and then ``metrics.json`` (last: its presence marks a finished run); returns both
    as written (JSON types, as a reader of the files gets them: the card made from them is the one ``acamkd-push``
    re-renders from the folder)."""
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
            print(f"| {label} | {row['model']} | {row['params']:,} | {values} |")
    print()


# ----------------------------------------------------------------------------------------------------- entry points
def main(argv: list[str] | None = None) -> None:
    """``acamkd-distill`` (and ``scripts/distill.py``): :func:`run` on the command line's flags.

    Ctrl-C and SIGTERM stop training at the next step boundary with a checkpoint (:mod:`acamkd_hf.interrupts`; a
    second Ctrl-C at once) and end with one line saying how to resume (exit status 130 / 143); a preset's backbone
    that cannot be downloaded ends with one line saying how to run anyway (exit status 1); an input error with one
    line (exit status 2)."""
    interrupted, unraisable_hook = False, sys.unraisablehook
    interrupts = Interrupts()
    try:
        with interrupts:
            run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        interrupted = True
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
            print(f"\n{interrupted_message()}", file=sys.stderr)
        _TRAINING_INTO[:] = []  # said: the next run in this process starts with none
        raise SystemExit(interrupts.exit_status)


def interrupted_message() -> str:
    """The one line Ctrl-C ends with: rerunning the same command resumes (see :func:`checkpoint_to_resume`)."""
    folder = _TRAINING_INTO[0] if _TRAINING_INTO else None
    last = get_last_checkpoint(folder) if folder and os.path.isdir(folder) else None
    if last is not None:
        return f"interrupted: run the same command again to resume from {last}."
    if folder is not None:
        return f"interrupted before the first checkpoint in {folder}: the same command starts this training again."
    return "interrupted before training started: run the same command again."


def dry_run_report(output_dir: str, repo_id: str, include_distillation_modules: bool, private: bool,
                   revision: str | None) -> str:
    """``acamkd-push --dry_run``: the target repository, each file with its size as uploaded (records without local
    paths, the card rendered for ``repo_id``), and the card."""
    uploads = upload_contents(output_dir, repo_id, include_distillation_modules)
    lines = [f"would push to https://huggingface.co/{repo_id}" + (f" (branch {revision})" if revision else "")
             + (" as a private repository" if private else "") + f": {len(uploads)} files, nothing uploaded"]
    lines += [f"  {name:<40} {_size(content):>12}" for name, content in uploads.items()]
    lines += ["", "README.md (the model card):", "", uploads["README.md"].decode()]
    return "\n".join(lines)


def _size(content: bytes | str) -> str:
    count = len(content) if isinstance(content, bytes) else Path(content).stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def push_main(argv: list[str] | None = None) -> int:
    """``acamkd-push`` (and ``scripts/push_to_hub.py``): uploads exactly the student's files, run_config.json,
    metrics.json and the training log (:func:`acamkd_hf.hub.files_to_push`), with the card rendered for the Hub
    repository (its usage snippet names ``repo_id``). The local folder is never modified. Returns the exit status:
    1, with the reason, when it cannot push."""
    parser = argparse.ArgumentParser(
        prog="acamkd-push",
        description="Push a distilled student folder (written by acamkd-distill) to the Hugging Face Hub, with its "
        "model card. The local folder is not modified.",
    )
    parser.add_argument("output_dir", help="the student folder written by acamkd-distill")
    parser.add_argument("repo_id", help="the Hub repository, e.g. your-name/model-name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--include_distillation_modules", action="store_true",
                        help="also upload the adapters/fusion/selection units of the latest checkpoint")
    parser.add_argument("--dry_run", action="store_true",
                        help="list the files a push would upload (the card rendered for REPO_ID among them); upload "
                        "and write nothing")
    args = parser.parse_args(argv)
    try:
        if args.dry_run:  # what a push would upload, where, and the card itself; uploads and writes nothing
            print(dry_run_report(args.output_dir, args.repo_id, args.include_distillation_modules, args.private,
                                 args.revision))
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
