"""The model card of a distilled student, and its push to the Hugging Face Hub.

A run of ``acamkd-distill`` (``scripts/distill.py``) leaves ``run_config.json`` (every setting) and ``metrics.json``
(every number it measured) in the student's folder. :func:`model_card` renders ``model_cards/distilled_student.md``
from those two records with ``huggingface_hub.ModelCard``: ``model-index`` holds the measured metrics; the text names
the teacher, the method with every distillation setting, the training budget, the student trained alone when the
run measured it, usage, limitations and the paper. The run builds its card from the records in memory;
:func:`build_model_card` / :func:`write_model_card` read them back from a finished folder (``acamkd-push``). :func:`push_student` uploads exactly the student folder's files
(:func:`files_to_push`): never the teacher, never checkpoints, the distillation modules only when asked, never a
token.
"""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token

from .tasks import TASKS
from .checkpointing import DISTILLATION_MODULES_NAME

CARD_TEMPLATE = "distilled_student.md"
METHOD_TITLES = {
    "acamkd": "ACAM-KD",
    "mse": "feature MSE (FitNet-style)",
    "mgd": "MGD (masked generative distillation)",
    "cwd": "CWD (channel-wise distillation)",
    "pkd": "PKD (Pearson-correlation feature distillation)",
    "none": "no distillation (the student trained alone)",
}
#: Files of the run's record pushed next to the model (the training log is trainer_state.json's log_history).
RECORD_FILES = (
    "README.md",
    "run_config.json",
    "metrics.json",
    "trainer_state.json",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    "training_args.json",
)
#: The student's own files: config, weights (single or sharded), image processor, custom modeling code.
MODEL_FILE_SUFFIXES = (".safetensors", ".safetensors.index.json", ".py")
MODEL_FILES = ("config.json", "preprocessor_config.json")


class HubPushError(RuntimeError):
    """A push that could not happen; the local folder is untouched."""


def card_template_path() -> Path:
    """Path of the card template shipped in ``model_cards/`` (installed as ``acamkd_hf.model_cards``)."""
    return Path(str(files("acamkd_hf.model_cards").joinpath(CARD_TEMPLATE)))


def read_run(output_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(run_config, metrics)`` of a folder written by ``acamkd-distill`` (``scripts/distill.py``)."""
    folder = Path(output_dir)
    missing = [name for name in ("run_config.json", "metrics.json") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no {' or '.join(missing)}: it is not the output folder of a finished scripts/distill.py run"
        )
    return json.loads((folder / "run_config.json").read_text()), json.loads((folder / "metrics.json").read_text())


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def build_model_card(output_dir: str | os.PathLike, repo_id: str | None = None) -> ModelCard:
    """The student's card from a finished folder: its ``run_config.json``, ``metrics.json`` and ``config.json``
    (offline; nothing is sent). ``repo_id`` defaults to the folder's name."""
    run_config, metrics = read_run(output_dir)
    config_path = Path(output_dir) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return model_card(
        run_config, metrics, repo_id=repo_id or Path(output_dir).resolve().name, model_type=config.get("model_type")
    )


def model_card(run_config: dict[str, Any], metrics: dict[str, Any], *, repo_id: str, model_type: str | None) -> ModelCard:
    """The student's card from the run's record: ``run_config`` and ``metrics`` are the dicts that
    ``run_config.json`` and ``metrics.json`` hold; ``model_type`` is the student's (its ``config.model_type``)."""
    task = TASKS[run_config["model"].get("task", "segmentation")]
    distillation = run_config["distillation"]
    data = run_config["data"]
    training = run_config["training"]
    method = distillation["method"]
    student = metrics["student"]
    teacher_record = metrics.get("teacher", {})

    dataset_id = data.get("dataset") or "synthetic"
    dataset_name = "a synthetic dataset" if data.get("synthetic") else Path(dataset_id).name if os.path.exists(dataset_id) else dataset_id
    eval_results = [
        EvalResult(
            task_type=task.pipeline_tag,
            task_name=task.title,
            dataset_type=dataset_id if _is_hub_id(dataset_id) else f"synthetic-{task.name}" if data.get("synthetic") else Path(dataset_id).name,
            dataset_name=dataset_name,
            dataset_split="validation",
            metric_type=key,
            metric_name=title,
            metric_value=float(student[f"eval_{key}"]),
        )
        for key, title in task.metrics
        if f"eval_{key}" in student
    ]
    teacher_id = distillation.get("teacher")
    student_id = run_config["model"]["student"]
    tags = ["knowledge-distillation", task.pipeline_tag, "acamkd-hf"]
    tags += ["acam-kd"] if method == "acamkd" else [method]
    tags += [t for t in (model_type, teacher_record.get("model_type")) if t and t not in tags]
    card_data = ModelCardData(
        model_name=repo_id,
        library_name="transformers",
        pipeline_tag=task.pipeline_tag,
        tags=tags,
        base_model=student_id if _is_hub_id(student_id) else None,
        datasets=[dataset_id] if _is_hub_id(dataset_id) else None,
        eval_results=eval_results or None,
        teacher_model=teacher_id,  # extra metadata: the teacher the student was distilled from
        distillation_method=method,
    )

    rows = []
    for label, key in (("teacher", "teacher"), ("student alone (no distillation)", "student_alone"), (f"**this model** ({METHOD_TITLES[method]})", "student")):
        if key in metrics:
            rows.append({"label": label, "values": [_fmt(metrics[key].get(f"eval_{name}")) for name, _ in task.metrics]})
    processes = run_config.get("hardware", {}).get("num_processes", 1)
    effective_batch = training["per_device_train_batch_size"] * processes * training["gradient_accumulation_steps"]
    training_rows = [
        ("optimizer steps", student.get("global_step", "-")),
        ("epochs", _fmt(student.get("epoch"))),
        ("batch", f"{effective_batch} = {training['per_device_train_batch_size']} per device x {processes} process(es) x {training['gradient_accumulation_steps']} accumulation"),
        ("optimizer", f"{training['optim']}, learning rate {training['learning_rate']}, weight decay {training['weight_decay']}, {training['lr_scheduler_type']} schedule"),
        ("hardware", run_config.get("hardware", {}).get("device", "-")),
        ("training time", f"{student['train_runtime']:.0f} s" if "train_runtime" in student else "-"),
        ("seed", training["seed"]),
        ("software", f"acamkd-hf {run_config['acamkd_hf_version']}, transformers {run_config['transformers_version']}, torch {run_config['torch_version']}"),
    ]
    teacher = {
        "name": teacher_id or "-",
        "params": teacher_record.get("params"),
        "revision": run_config["model"].get("model_revision"),
        "trained_here": bool(teacher_record.get("trained_here")),
    }
    if teacher["trained_here"]:
        teacher["name"] = f"{teacher_record['model']} (trained by this run, saved at {teacher_id})"
    return ModelCard.from_template(
        card_data,
        template_path=str(card_template_path()),
        model_name=repo_id,
        repo_id=repo_id,
        method=method,
        method_title=METHOD_TITLES[method],
        task_title=task.title,
        pipeline_tag=task.pipeline_tag,
        auto_class=task.auto_class,
        metric_titles=[title for _, title in task.metrics],
        student={"architecture": student["model"], "params": student["params"]},
        teacher=teacher,
        dataset={"name": dataset_name, "split": "validation", "num_labels": len(data.get("id2label", {})), "synthetic": bool(data.get("synthetic"))},
        results=rows,
        has_student_alone="student_alone" in metrics,
        distillation_settings=[(name, value) for name, value in distillation.items() if name != "teacher"],
        training_rows=training_rows,
        needs_package=model_type == "timm_deeplabv3",
    )


def write_model_card(output_dir: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Renders the card of a finished folder into ``output_dir/README.md`` (``acamkd-push``, and a push of a folder
    without one; a run writes its own card from its record at the end, pushed or not)."""
    path = Path(output_dir) / "README.md"
    build_model_card(output_dir, repo_id).save(path)
    return path


def files_to_push(output_dir: str | os.PathLike, include_distillation_modules: bool = False) -> list[str]:
    """The exact top-level files of the student folder that a push uploads (sorted).

    Never: checkpoint folders, the teacher (its own folder), the distillation modules (only in checkpoints; with
    ``include_distillation_modules`` the latest checkpoint's copy is added as ``distillation_modules.safetensors``).
    """
    folder = Path(output_dir)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json and safetensors weights)")
    names = sorted(
        path.name
        for path in folder.iterdir()
        if path.is_file()
        and path.name != DISTILLATION_MODULES_NAME
        and (path.name in MODEL_FILES or path.name in RECORD_FILES or path.name.endswith(MODEL_FILE_SUFFIXES))
    )
    if include_distillation_modules:
        names.append(DISTILLATION_MODULES_NAME)
    return names


def _latest_distillation_modules(folder: Path) -> Path:
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    for checkpoint in reversed(checkpoints):
        if (checkpoint / DISTILLATION_MODULES_NAME).is_file():
            return checkpoint / DISTILLATION_MODULES_NAME
    raise FileNotFoundError(f"no checkpoint in {folder} holds {DISTILLATION_MODULES_NAME} (method 'none', or checkpoints removed)")


def push_student(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    include_distillation_modules: bool = False,
    commit_message: str | None = None,
) -> str:
    """Uploads the student folder (:func:`files_to_push`) to ``repo_id``; returns the repository URL.

    Writes the card first if the folder has none. Raises :class:`HubPushError` (the folder untouched) when no token
    is available or the Hub cannot be reached. The token is never printed or written anywhere.
    """
    folder = Path(output_dir)
    names = files_to_push(folder, include_distillation_modules)
    modules_file = _latest_distillation_modules(folder) if include_distillation_modules else None
    if not (folder / "README.md").is_file():
        write_model_card(folder, repo_id)
        names = files_to_push(folder, include_distillation_modules)
    token = token or get_token()
    if not token:
        raise HubPushError(
            f"no Hugging Face token: log in with `hf auth login` or set HF_TOKEN, then run "
            f"`python scripts/push_to_hub.py {folder} {repo_id}`. Nothing was uploaded; {folder} is intact."
        )
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            allow_patterns=[name for name in names if name != DISTILLATION_MODULES_NAME],
            revision=revision,
            commit_message=commit_message or "Upload distilled student (acamkd-hf)",
        )
        if modules_file is not None:
            api.upload_file(
                path_or_fileobj=str(modules_file),
                path_in_repo=DISTILLATION_MODULES_NAME,
                repo_id=repo_id,
                revision=revision,
                commit_message="Upload the distillation modules (adapters, fusion, selection units)",
            )
    except Exception as error:  # network, HTTP, permission: say what happened; never show the token
        message = str(error).replace(token, "<token>")
        raise HubPushError(
            f"could not push {folder} to {repo_id}: {type(error).__name__}: {message}. Nothing was removed locally; "
            f"retry with `python scripts/push_to_hub.py {folder} {repo_id}`."
        ) from None
    return str(url)


__all__ = [
    "HubPushError",
    "model_card",
    "build_model_card",
    "write_model_card",
    "files_to_push",
    "push_student",
    "card_template_path",
    "read_run",
]
