#!/usr/bin/env python
"""Distil a semantic-segmentation teacher into a student with ACAM-KD (or a baseline), through ``transformers.Trainer``.

    python scripts/distill.py                                   # the embedded default: runs anywhere, < 5 min on CPU
    accelerate launch scripts/distill.py --config configs/cityscapes_deeplabv3_r101_to_mbv2.yaml
    python scripts/distill.py --teacher path/or/hub-id --student deeplabv3-mobilenetv2 \\
        --dataset /data/cityscapes --method acamkd --output_dir outputs/mbv2-acamkd

With no arguments it makes a small synthetic dataset in the Cityscapes layout, trains a small teacher on it
(method ``none``: plain training, this same script), distils a smaller student with ACAM-KD, evaluates both (and the
untrained student), and prints a table. ``--config FILE`` (YAML or JSON) gives a recipe, and flags override its
values; without ``--config`` and ``--dataset``, the embedded synthetic recipe is the base that flags override.
Every ``transformers.TrainingArguments`` flag works (``--help`` lists them all).

The output folder is a ready Hugging Face model folder (config, safetensors, image processor) that
``AutoModelForSemanticSegmentation.from_pretrained`` and ``pipeline("image-segmentation")`` load, plus
``run_config.json`` (every setting of the run) and ``metrics.json`` (what it measured).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

import acamkd_hf
from acamkd_hf import DistillationArguments, DistillationTrainer
from acamkd_hf.hub import push_student, write_model_card
from acamkd_hf.models import describe_label_mismatch
from acamkd_hf.taps import resolve_distillation_points
from acamkd_hf.tasks import TASKS

logger = logging.getLogger("acamkd_hf.distill")


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
  schedule, seed 0, output_dir outputs/acamkd-synthetic (see DEFAULT_RECIPE and acamkd_hf.tasks). With --dataset
  and no --config, the Trainer's own defaults apply: set --learning_rate, --num_train_epochs, --output_dir.
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
def recipe_to_flags(recipe: dict[str, Any]) -> list[str]:
    """A recipe dict as command-line flags (so flags given after it override it)."""
    flags: list[str] = []
    for key, value in recipe.items():
        if value is None:
            continue
        flags.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            flags.extend(str(item) for item in value)
        elif isinstance(value, dict):
            flags.append(json.dumps(value))
        else:
            flags.append(str(value))
    return flags


def read_recipe(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    recipe = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of argument names to values")
    return recipe


def _task_name(argv: list[str]) -> str:
    for at, arg in enumerate(argv):
        if arg == "--task" and at + 1 < len(argv):
            return argv[at + 1]
        if arg.startswith("--task="):
            return arg.split("=", 1)[1]
    return "segmentation"


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, DistillationArguments]:
    """Flags override a base recipe: ``--config FILE`` when given; else, without ``--dataset``, the embedded
    synthetic default of the task (``DEFAULT_RECIPE`` + ``Task.default_recipe``); else nothing (the Trainer's own
    defaults)."""
    argv = list(argv)
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise SystemExit("--config needs a YAML or JSON file")
        base = read_recipe(argv[at + 1])
        del argv[at : at + 2]
    elif "--dataset" not in argv and not any(arg.startswith("--dataset=") for arg in argv):
        task = TASKS.get(_task_name(argv))
        base = {**DEFAULT_RECIPE, **(task.default_recipe if task else {})}
    else:
        base = {}
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, DistillationArguments),
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Only for --help: --config is taken out of argv above (its file becomes flags that the others override).
    parser.add_argument("--config", metavar="FILE", help="A YAML/JSON recipe; flags given with it override its values.")
    model_args, data_args, training_args, *_ = parser.parse_args_into_dataclasses(args=recipe_to_flags(base) + argv)
    task = TASKS[model_args.task]()
    model_args.student = model_args.student or task.default_student
    model_args.teacher_architecture = model_args.teacher_architecture or task.default_teacher
    changes: dict[str, Any] = dict(task.required_training_args)
    if not torch.cuda.is_available():
        changes["dataloader_pin_memory"] = False  # nothing to pin to
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Launched as several processes on a machine without GPUs: without use_cpu, accelerate finds no device
            # and every process would train alone on all the data, into the same output_dir.
            changes["use_cpu"] = True
    return model_args, data_args, replace(training_args, **changes)


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
    base = args.output_dir.rstrip("/")
    folders = [args.output_dir]
    if args.method != "none" and args.teacher is None:
        folders.append(f"{base}_teacher")
    if model_args.compare_student_alone and args.method != "none":
        folders.append(f"{base}_student_alone")
    return folders


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


# ----------------------------------------------------------------------------------------------------- training
def make_trainer(task, student, teacher, args: DistillationArguments, data, image_processor, data_args: DataArguments):
    train, evaluation = task.datasets(data, image_processor, data_args)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        labels_for_metrics=task.labels_for_metrics,
        # The Trainer's own push would upload checkpoints and the internal teacher / baseline runs; the student is
        # pushed once at the end instead, with its card (acamkd_hf.hub.push_student).
        args=replace_args(args, push_to_hub=False),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=task.collate,
        processing_class=image_processor,
        compute_metrics=task.compute_metrics(data, image_processor),
    )


#: Training settings a checkpoint must share with the current run to be resumed automatically.
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
    keys = (*RESUME_KEYS, *args.distillation_settings().to_dict())
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


def evaluate_only(task, model, args: DistillationArguments, data, image_processor, data_args: DataArguments) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:  # an evaluation writes nothing worth keeping
        eval_args = plain_training_args(args, output_dir=scratch)
        return make_trainer(task, model, None, eval_args, data, image_processor, data_args).evaluate()


def replace_args(args: DistillationArguments, **changes) -> DistillationArguments:
    """A copy of the arguments with some fields changed (re-validated by ``__post_init__``)."""
    return replace(args, **changes)


def plain_training_args(args: DistillationArguments, **changes) -> DistillationArguments:
    """The run's recipe for plain training (the teacher trained here, the student alone, evaluations)."""
    return replace(args, method="none", inherit_from_teacher=False, resume_from_checkpoint=None, **changes)


def describe(model, name: str) -> dict[str, Any]:
    return {"model": name, "model_type": model.config.model_type, "params": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
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
        resolve_distillation_points(
            student, teacher, args.distillation_points, student_name=model_args.student, teacher_name=teacher_name
        )  # before anything trains: a wrong name lists the available ones
    image_processor = task.image_processor(
        model_args.student, data, trust_remote_code=model_args.trust_remote_code, revision=model_args.model_revision
    )

    def train(model, run_args):
        return train_and_evaluate(make_trainer(task, model, None, run_args, data, image_processor, data_args), run_args)

    results: dict[str, Any] = {}
    if args.method != "none":
        if args.teacher is None:
            teacher_dir = f"{args.output_dir.rstrip('/')}_teacher"
            logger.info(f"no --teacher given: training {teacher_name} first (method none) into {teacher_dir}")
            teacher_args = plain_training_args(
                args, output_dir=teacher_dir, num_train_epochs=model_args.teacher_num_train_epochs or args.num_train_epochs
            )
            results["teacher"] = {**describe(teacher, teacher_name), "trained_here": teacher_dir, **train(teacher, teacher_args)}
            args = replace_args(args, teacher=teacher_dir)
        else:
            results["teacher"] = {**describe(teacher, teacher_name),
                                  **evaluate_only(task, teacher, args, data, image_processor, data_args)}

    results["student_untrained"] = {**describe(student, model_args.student),
                                    **evaluate_only(task, student, args, data, image_processor, data_args)}

    if model_args.compare_student_alone and args.method != "none":
        alone_dir = f"{args.output_dir.rstrip('/')}_student_alone"
        alone = load_model(task, model_args.student, data, model_args, "student", args.seed)
        alone_args = plain_training_args(args, output_dir=alone_dir)
        results["student_alone"] = {**describe(alone, model_args.student), "output_dir": alone_dir, **train(alone, alone_args)}

    trainer = make_trainer(task, student, teacher, args, data, image_processor, data_args)
    results["student"] = {**describe(student, model_args.student), "method": args.method, **train_and_evaluate(trainer, args)}

    if trainer.is_world_process_zero():
        write_run_files(args, trainer.distillation_settings.to_dict(), model_args, data_args, data, results, synthetic)
        card = write_model_card(args.output_dir, repo_id=args.hub_model_id)
        print_table(task, results, args.method)
        logger.info(f"student, run record and model card ({card.name}) in {args.output_dir}")
        if args.push_to_hub:
            repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
            url = push_student(args.output_dir, repo_id, private=args.hub_private_repo, token=args.hub_token,
                               revision=args.hub_revision)
            logger.info(f"pushed to {url}")
    return results


def hardware(args: DistillationArguments) -> dict[str, Any]:
    if torch.cuda.is_available() and not args.use_cpu:
        device = f"{args.world_size} x {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU ({os.cpu_count()} cores), {args.world_size} process(es)"
    return {"device": device, "num_processes": args.world_size}


def write_run_files(args, distillation_settings, model_args, data_args, data, results, synthetic: bool) -> None:
    run_config = {
        "acamkd_hf_version": acamkd_hf.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "hardware": hardware(args),
        "model": asdict(model_args),
        "data": {**asdict(data_args), "synthetic": synthetic, "num_labels": data.num_labels, "id2label": data.id2label},
        "distillation": distillation_settings,  # as used: defaults resolved
        "training": json.loads(args.to_json_string()),
    }
    Path(args.output_dir, "run_config.json").write_text(json.dumps(run_config, indent=2, default=str))
    Path(args.output_dir, "metrics.json").write_text(json.dumps(results, indent=2, default=str))


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


if __name__ == "__main__":
    main()
