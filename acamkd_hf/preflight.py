"""What is checked before anything trains: output folders, flags of the other task, the teacher's classes, and the
settings that do not fit the data or the launch (said once, at the start).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .arguments import DataArguments, ModelArguments
from .config import DistillationArguments
from .families.segmentation import input_size_problem
from .models.detection import DETECTORS, detection_input_problem, nearest_input_sides
from .models.labels import check_teacher_labels, describe_label_mismatch
from .taps import is_module_point, probe_feature_shapes


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
    if args.distilling and args.teacher is None:
        folders.append(sibling_folder(args, "teacher"))
    if model_args.compare_student_alone and args.distilling:
        folders.append(sibling_folder(args, "student_alone"))
    return folders

def sibling_folder(args: DistillationArguments, role: str) -> str:
    """The folder of the teacher trained here / the student trained alone: ``<output_dir>_<role>``."""
    return f"{args.output_dir.rstrip('/')}_{role}"

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


def _input_problem(model, size: tuple[int, int]) -> str | None:
    """Why ``model`` cannot take inputs of ``size`` = (H, W): its family's rule (a segmenter's, e.g. DPT's square
    grid; a detector's: stride multiples, enough positions for its queries), else None."""
    if not _is_detector(model):
        return input_size_problem(model, size)
    problem = detection_input_problem(model, size)
    if problem is not None and size[0] == size[1]:  # square inputs: the sides it can take instead are named
        problem += f"; use {nearest_input_sides(model, int(size[0]))}"
    return problem


def _is_detector(model) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in DETECTORS


def check_models_take_the_inputs(
    models: dict[str, tuple[str, object]], points: list[str], training_size: tuple[int, int],
    evaluation_size: tuple[int, int],
) -> None:
    """Each model takes the run's inputs, checked before anything trains (the teacher trained here would train first).

    models: role -> (name, model), e.g. {"student": ("tiny-dpt", model)}; points: the resolved distillation points;
    training_size, evaluation_size: (H, W) of the first training / evaluation example as the model receives it.

    Raises ValueError naming the model: a family's input-size rule (DPT: square inputs), or a ``module:`` point whose
    output is not a (B, C, H, W) map at the training size (found by one dry forward of each model).
    """
    for role, (name, model) in models.items():
        for what, (height, width) in (("training inputs", training_size), ("evaluation inputs", evaluation_size)):
            problem = _input_problem(model, (height, width))
            if problem:
                how = ("--image_size sets the input side" if _is_detector(model) else
                       "--crop_size H W sets the training crops; validation images are used whole; the synthetic "
                       "set's size: --synthetic_image_size H W")
                raise ValueError(
                    f"the {role} {name!r} cannot take the {what} ({height}x{width}): {problem}. Train and evaluate on "
                    f"inputs it takes ({how})."
                )
    module_points = [point for point in points if is_module_point(point)]
    if not module_points:
        return
    for role, (name, model) in models.items():
        try:
            probe_feature_shapes(model, module_points, training_size)
        except RuntimeError as error:
            raise ValueError(f"the {role} {name!r}: {error}") from error


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


def untrained_teacher_warnings(task, args: DistillationArguments) -> list[str]:
    """A ``--teacher`` that names a preset: a randomly initialised model (nothing is downloaded), so the student would
    imitate noise."""
    if not args.distilling or args.teacher not in task.presets:
        return []
    return [f"--teacher {args.teacher} is a preset: randomly initialised, it knows nothing, and the student would "
            "imitate noise. Pass a trained teacher (a folder or Hub id), or leave --teacher out and name its "
            f"architecture with --teacher_architecture {args.teacher} to train it here first."]


def launch_warnings(args: DistillationArguments) -> list[str]:
    """A launch that does not do what its config says: FSDP (``accelerate launch --config_file fsdp.yaml``) on CPU
    processes, which accelerate runs as plain data-parallel CPU training."""
    if args.use_cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        return ["FSDP was asked for, but the processes train on CPU: accelerate runs them as plain data-parallel "
                "(DDP-style) training, nothing is sharded. FSDP needs GPUs."]
    return []


__all__ = ["check_models_take_the_inputs", "check_task_flags", "check_teacher", "check_writable_directory",
           "launch_warnings", "output_directories", "recipe_warnings", "sibling_folder",
           "untrained_teacher_warnings"]
