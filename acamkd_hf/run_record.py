"""The run record: ``run_config.json`` (every setting, versions, hardware) and ``metrics.json`` (what was measured)
written into the student's folder, and read back (the model card, ``acamkd-push``, a rerun of a finished command).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypedDict

import torch
import transformers

import acamkd_hf

from .arguments import DataArguments, ModelArguments
from .config import DistillationArguments
from .distiller import recorded_settings
from .model_sources import is_hub_id, known_license, model_source
from .models import PRETRAINED_BACKBONE_PRESETS
from .models.backbone_weights import pretrained_backbone_license
from .settings import DistillationSettings
from .tasks import TASKS


class RunConfig(TypedDict):
    """``run_config.json``: what the run was (the model card, ``acamkd-push`` and a rerun's finished-run check read
    it back through :func:`read_run`)."""

    acamkd_hf_version: str
    torch_version: str
    transformers_version: str
    hardware: dict[str, Any]  # device, num_processes, torch_threads
    model: dict[str, Any]  # ModelArguments + student_base_model / student_license + teacher_source
    data: dict[str, Any]  # DataArguments + origin, layout, num_labels, id2label
    distillation: dict[str, Any]  # the teacher + the settings the method reads (distiller.recorded_settings)
    training: dict[str, Any]  # TrainingArguments as JSON
    arguments: dict[str, Any]  # the command's settings before anything was resolved (arguments_record)


class Metrics(TypedDict, total=False):
    """``metrics.json``: one row per model of the run (``eval_*`` metrics, ``model``, ``params``...)."""

    teacher: dict[str, Any]
    student_untrained: dict[str, Any]
    student_alone: dict[str, Any]
    student: dict[str, Any]


def arguments_record(model_args: ModelArguments, data_args: DataArguments, args: DistillationArguments) -> dict[str, Any]:
    """Every setting as this command gives it (recipe + flags, before the run resolves anything): what
    ``run_config.json`` records as ``arguments``, and what tells a rerun of the same command (:func:`finished_run`)."""
    return json.loads(json.dumps(
        {"model": asdict(model_args), "data": asdict(data_args), "training": json.loads(args.to_json_string())},
        default=str,
    ))

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
    student = model_args.student
    license_ = None
    if student in PRETRAINED_BACKBONE_PRESETS and model_args.pretrained_backbone is not False and not model_args.backbone_weights:
        license_ = pretrained_backbone_license(student)
    elif student not in TASKS[model_args.task].presets:
        license_ = known_license(student, revision=model_args.model_revision)
    return {"base_model": student if is_hub_id(student) else None, "license": license_}

def run_record(args, settings: DistillationSettings, model_args, data_args, data, origin: dict[str, Any],
               arguments: dict[str, Any]) -> RunConfig:
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

def write_run_record(output_dir: str, run_config: RunConfig, metrics: Metrics) -> tuple[RunConfig, Metrics]:
    """Writes ``run_config.json`` and then ``metrics.json`` (last: its presence marks a finished run); returns both
    as written (JSON types, as a reader of the files gets them: the card made from them is the one ``acamkd-push``
    re-renders from the folder)."""
    written = []
    for name, record in (("run_config.json", run_config), ("metrics.json", metrics)):
        text = json.dumps(record, indent=2, default=str)
        Path(output_dir, name).write_text(text)
        written.append(json.loads(text))
    return written[0], written[1]


def read_run(output_dir: str | os.PathLike) -> tuple[RunConfig, Metrics]:
    """``(run_config, metrics)`` of a folder written by ``acamkd-distill`` (``scripts/distill.py``)."""
    folder = Path(output_dir)
    missing = [name for name in ("run_config.json", "metrics.json") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no {' or '.join(missing)}: it is not the output folder of a finished scripts/distill.py run"
        )
    return json.loads((folder / "run_config.json").read_text()), json.loads((folder / "metrics.json").read_text())


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


__all__ = ["Metrics", "RunConfig", "arguments_record", "finished_run", "local_model_path", "read_run", "run_record", "write_run_record"]
