"""The command line's arguments: the model and data dataclasses, ``--help`` by group, and recipes.

``acamkd-distill`` parses three dataclasses with ``HfArgumentParser`` (:class:`ModelArguments`,
:class:`DataArguments`, :class:`~acamkd_hf.config.DistillationArguments`: the distillation settings plus every
``transformers.TrainingArguments`` flag). A recipe (``--config FILE``, or without it and ``--dataset`` the task's
default recipe ``configs/defaults/<task>.yaml``) becomes the parser's defaults, so flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser

from .config import DistillationArguments
from .models.detection import detection_size_conventions
from .settings import DistillationSettings
from .tasks import TASKS


def _per_task(attribute: str) -> str:
    """``"segmentation: tiny-segformer; detection: ..."``: a task default for help texts, read from the tasks."""
    def shown(value):
        return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    return "; ".join(f"{name}: {shown(getattr(task, attribute))}" for name, task in TASKS.items())



@dataclass
class ModelArguments:
    task: str = field(default="segmentation", metadata={"help": "What is distilled.", "choices": list(TASKS)})
    student: str | None = field(
        default=None,
        metadata={"help": "Student: a preset (see acamkd_hf.models), a Hub id or a local folder. A checkpoint with other "
                          "classes gets the dataset's (its class heads start anew; one line says which). Default: the "
                          f"task's small CPU student ({_per_task('default_student')})."},
    )
    teacher_architecture: str | None = field(
        default=None,
        metadata={"help": "When no --teacher is given: the preset trained here first as the teacher (method none). "
                          f"Default: the task's ({_per_task('default_teacher')})."},
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
        default=None, metadata={"help": f"H W of the synthetic images (default: the task's; {_per_task('synthetic_image_size')})."}
    )
    synthetic_num_classes: int | None = field(
        default=None, metadata={"help": f"Classes of the synthetic set (default: the task's; {_per_task('synthetic_num_classes')})."}
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
        metadata={"help": f"Detection input size, by the family's convention: {detection_size_conventions()}. "
                          "Default: the student's own processor; a preset: its family's, the synthetic set's side for "
                          "it. A size the model cannot take is refused with the nearest ones. Metrics are always "
                          "scored on the original image sizes."},
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

#: What ``acamkd-distill --help`` says first (for its users; the module docstring is for the code's readers).
DESCRIPTION = """\
Distil a teacher into a student with ACAM-KD (or a baseline), through transformers.Trainer.

  acamkd-distill                                 # the default: a synthetic set, a few minutes on a CPU
  accelerate launch scripts/distill.py --config configs/cityscapes_deeplabv3_r101_to_mbv2.yaml \\
      --teacher path/or/hub-id --dataset /data/cityscapes

--config FILE (YAML or JSON) gives a recipe and flags override its values. The output folder is a Hugging Face model
folder (from_pretrained, pipeline) plus run_config.json, metrics.json and a model card.
"""

EPILOG = """\
Defaults: without --config and --dataset, the task's default recipe (configs/defaults/<task>.yaml: a synthetic set,
ACAM-KD with the control row, a few minutes on a CPU) replaces their defaults. With --dataset and no --config,
the Trainer's own defaults apply: set --learning_rate, --num_train_epochs, --output_dir.
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
    ("training", "transformers.TrainingArguments (every flag; a recipe's values replace their defaults)",
     lambda: _field_names(DistillationArguments)),
)

#: TrainingArguments fields whose default DistillationArguments changes: they stay in the training group.
_TRAINING_OVERRIDES = ("remove_unused_columns", "label_names", "ddp_find_unused_parameters")

def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]

def _own_field_names(cls) -> list[str]:
    inherited = {name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for name in _field_names(base)}
    return [name for name in _field_names(cls) if name not in inherited and name not in _TRAINING_OVERRIDES]

def build_parser() -> HfArgumentParser:
    """The parser of every flag: the model, data and distillation (+ ``TrainingArguments``) dataclasses, ``--config``."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, DistillationArguments),
        prog="acamkd-distill",
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a flag is spelled in full: a misspelled one is an error with the closest flag named
    )
    parser.add_argument("--config", metavar="FILE", help="A YAML/JSON recipe; flags given with it override its values.")
    group_help(parser)
    return parser

def group_help(parser: argparse.ArgumentParser, groups=HELP_GROUPS) -> None:
    """Moves every dataclass flag from the one "options" group into ``groups`` (default :data:`HELP_GROUPS`;
    presentation only: parsing does not depend on groups), so ``--help`` shows the models, data and distillation
    flags before the ~700 lines of ``TrainingArguments``."""
    optionals = parser._optionals  # noqa: SLF001 (argparse has no public way to regroup actions)
    placed: set[int] = set()
    for _, title, names in groups:
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


def default_recipe_path(task: str) -> Path:
    """The task's default recipe, ``configs/defaults/<task>.yaml`` (installed as ``acamkd_hf.default_recipes``)."""
    return Path(str(files("acamkd_hf.default_recipes").joinpath(f"{task}.yaml")))


def base_recipe(argv: list[str]) -> tuple[dict[str, Any], str]:
    """The recipe that flags override, and where it comes from: ``--config FILE`` when given; else, without
    ``--dataset``, the default recipe of ``--task`` (:func:`default_recipe_path`); else nothing (the Trainer's own
    defaults)."""
    chooser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # reads these three, ignores the rest
    for flag in ("--config", "--task", "--dataset"):
        chooser.add_argument(flag)
    given, _ = chooser.parse_known_args(argv)
    if given.config is not None:
        return read_recipe(given.config), given.config
    if given.dataset is None:
        task = given.task if given.task in TASKS else "segmentation"  # an unknown --task: the parser says so
        return read_recipe(str(default_recipe_path(task))), f"the default recipe of {task}"
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


__all__ = ["DataArguments", "HELP_GROUPS", "ModelArguments", "build_parser", "default_recipe_path", "group_help",
           "parse_arguments", "read_recipe", "refuse_unknown_flags"]
