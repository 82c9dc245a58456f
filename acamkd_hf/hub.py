"""The model card of a distilled student, and its push to the Hugging Face Hub.

A run of ``acamkd-distill`` (``scripts/distill.py``) leaves ``run_config.json`` (every setting) and ``metrics.json``
(every number it measured) in the student's folder. :func:`model_card` renders ``model_cards/distilled_student.md``
from those two records with ``huggingface_hub.ModelCard``: ``model-index`` holds the measured metrics; the text names
the teacher, the method with every distillation setting, the training budget, the student trained alone when the
run measured it, usage, limitations and the paper. The run builds its card from the records in memory;
:func:`build_model_card` reads them back from a finished folder (``acamkd-push``). :func:`push_student` uploads
exactly the student folder's files (:func:`files_to_push`) and a card rendered for the Hub repository, in one
commit: never the teacher, never checkpoints, the distillation modules only when asked, never a token; the local
folder is never modified.

The card holds no absolute local path: the usage snippet names the folder relative to where the run started (the
Hub id in the pushed card), a local teacher by its folder name, a local dataset by its layout.
"""

from __future__ import annotations

import json
import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token

from .checkpointing import DISTILLATION_MODULES_NAME
from .model_sources import is_hub_id
from .run_record import read_run
from .tasks import TASKS

CARD_TEMPLATE = "distilled_student.md"
METHOD_TITLES = {
    "acamkd": "ACAM-KD",
    "mse": "feature MSE (FitNet-style)",
    "mgd": "MGD (masked generative distillation)",
    "cwd": "CWD (channel-wise distillation)",
    "pkd": "PKD (Pearson-correlation feature distillation)",
    "none": "no distillation (the student trained alone)",
}
#: Why each ACAM-KD variant, in the card (the variants themselves: acamkd_hf.settings.ACAMKD_VARIANTS).
ACAMKD_VARIANT_REASONS = {
    "recommended": "The project's default, chosen on its quality benchmark ({results}): the imitation on features "
                   "standardised per channel and image (it no longer depends on the features' scale or on the batch "
                   "split), masks with a fixed budget trained to find where the student lags (the adversarial "
                   "objective: the paper's masks shrink to nothing), and the fusion's keys/values reduced to a token "
                   "budget; settings given explicitly override it. On that benchmark it ties the earlier default, and its "
                   "masks add nothing over uniform weighting: a little below it at the segmentation points, level on "
                   "detection necks.",
    "paper": "The paper's losses as written (raw features, exact fusion, masks trained by the total loss, alpha = "
             "lambda = 1); at these weights the masks shrink towards 0 during training ({results}).",
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


#: Where the project lives when the installed package's metadata does not say (pyproject.toml's [project.urls]).
PROJECT_URL = "https://github.com/acamkd-hf/acamkd-hf"


def project_url() -> str:
    """The project's home page, as the installed package declares it (``Homepage`` in pyproject.toml)."""
    try:
        from importlib.metadata import metadata

        for entry in metadata("acamkd-hf").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() == "homepage":
                return url.strip()
    except Exception:  # noqa: BLE001 (not installed: a source checkout on sys.path; the constant)
        pass
    return PROJECT_URL


class HubPushError(RuntimeError):
    """A push that could not happen; the local folder is untouched."""


def card_template_path() -> Path:
    """Path of the card template shipped in ``model_cards/`` (installed as ``acamkd_hf.model_cards``)."""
    return Path(str(files("acamkd_hf.model_cards").joinpath(CARD_TEMPLATE)))


def _dataset_names(task, data: dict[str, Any]) -> tuple[str, str, str | None]:
    """(name in the text, ``dataset_type`` of the eval results, Hub id for the ``datasets`` metadata) of a run's
    data record: a Hub id as it is; a local folder by its layout, never its path or folder name (a folder named
    ``coco`` holding 4 synthetic classes is not COCO); a synthetic set as synthetic however it was passed."""
    dataset = data.get("dataset")
    origin = data.get("origin") or ("synthetic" if data.get("synthetic") else "hub" if is_hub_id(dataset) else "local")
    layout = data.get("layout")
    shape = f"{layout}-layout " if layout else ""
    if origin == "synthetic":
        return f"a synthetic {shape}dataset (made by acamkd-hf)", f"synthetic-{task.name}", None
    if origin == "local":
        return f"a local {shape}dataset", f"local-{layout.lower()}-layout" if layout else "local", None
    return str(dataset), str(dataset), str(dataset)


def _teacher_names(teacher_id: str | None, model_record: dict[str, Any], trained_by: str | None) -> tuple[str | None, str]:
    """(``teacher_model`` metadata, name in the text) without local paths: a Hub id as it is, a local folder by its
    name with a note that it is local."""
    if not teacher_id:
        return None, "-"
    source = model_record.get("teacher_source") or ("hub" if is_hub_id(teacher_id) else "local")
    if source == "hub":
        return teacher_id, teacher_id
    if source == "preset":
        return f"{teacher_id} (acamkd-hf preset, random init)", teacher_id
    folder = Path(teacher_id).name
    if trained_by:
        return f"{folder} (local folder)", f"{trained_by} (trained by this run, saved in the local folder {folder})"
    return f"{folder} (local folder)", f"{folder} (a local folder, not on the Hub)"


def _defined(value: Any) -> bool:
    """False for COCOeval's -1 ("no ground-truth objects of that size on this split"): not a score."""
    return not (isinstance(value, (int, float)) and value == -1)


def _fmt(value: Any) -> str:
    if not _defined(value):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def build_model_card(
    output_dir: str | os.PathLike, repo_id: str | None = None, model_path: str | None = None
) -> ModelCard:
    """The student's card from a finished folder: its ``run_config.json``, ``metrics.json`` and ``config.json``
    (offline; nothing is sent or written). ``repo_id`` defaults to the folder's name; ``model_path`` (what the usage
    snippet loads) to ``repo_id``: the card as pushed."""
    run_config, metrics = read_run(output_dir)
    config_path = Path(output_dir) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    repo_id = repo_id or Path(output_dir).resolve().name
    return model_card(run_config, metrics, repo_id=repo_id, model_type=config.get("model_type"), model_path=model_path,
                      custom_code=custom_code_files(output_dir))


def custom_code_files(output_dir: str | os.PathLike) -> list[str]:
    """The model code a folder ships for ``trust_remote_code`` (its ``*.py`` files, when ``config.json`` has an
    ``auto_map``), sorted."""
    config_path = Path(output_dir) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return sorted(path.name for path in Path(output_dir).glob("*.py")) if config.get("auto_map") else []


def _card_metadata(task, run_config: dict[str, Any], metrics: dict[str, Any], repo_id: str, model_type: str | None,
                   teacher_metadata: str | None) -> ModelCardData:
    """The card's YAML metadata: tags, licence, base model, dataset, eval results (the Hub's model-index)."""
    method = run_config["distillation"]["method"]
    student = metrics["student"]
    model_record = run_config["model"]
    dataset_name, dataset_type, dataset_hub_id = _dataset_names(task, run_config["data"])
    eval_results = [
        EvalResult(
            task_type=task.pipeline_tag,
            task_name=task.title,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split="validation",
            metric_type=key,
            metric_name=title,
            metric_value=float(student[f"eval_{key}"]),
        )
        for key, title in task.metrics
        if f"eval_{key}" in student and _defined(student[f"eval_{key}"])
    ]
    tags = ["knowledge-distillation", task.pipeline_tag, "acamkd-hf"]
    tags += ["acam-kd"] if method == "acamkd" else [method]
    tags += [model_type] if model_type and model_type not in tags else []  # the student's family, not the teacher's
    student_id = model_record["student"]
    return ModelCardData(
        model_name=repo_id,
        library_name="transformers",
        pipeline_tag=task.pipeline_tag,
        tags=tags,
        license=model_record.get("student_license"),
        base_model=model_record.get("student_base_model") or (student_id if is_hub_id(student_id) else None),
        datasets=[dataset_hub_id] if dataset_hub_id else None,
        eval_results=eval_results or None,
        teacher_model=teacher_metadata,  # extra metadata: the teacher (a Hub id, or a local folder's name)
        distillation_method=method,
    )


def _result_rows(task, metrics: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """The card's results table: the teacher, the student alone and this model, where measured."""
    labelled = (("teacher", "teacher"), ("student alone (no distillation)", "student_alone"),
                (f"**this model** ({METHOD_TITLES[method]})", "student"))
    return [{"label": label, "values": [_fmt(metrics[key].get(f"eval_{name}")) for name, _ in task.metrics]}
            for label, key in labelled if key in metrics]


def _training_rows(run_config: dict[str, Any], student: dict[str, Any]) -> list[tuple[str, Any]]:
    """The card's training table: steps, batch as it was made up, optimiser, hardware, time, seed, software."""
    training = run_config["training"]
    processes = run_config.get("hardware", {}).get("num_processes", 1)
    per_device, accumulation = training["per_device_train_batch_size"], training["gradient_accumulation_steps"]
    return [
        ("optimizer steps", student.get("global_step", "-")),
        ("epochs", _fmt(student.get("epoch"))),
        ("batch", f"{per_device * processes * accumulation} = {per_device} per device x {processes} process(es) "
                  f"x {accumulation} accumulation"),
        ("optimizer", f"{training['optim']}, learning rate {training['learning_rate']}, weight decay "
                      f"{training['weight_decay']}, {training['lr_scheduler_type']} schedule"),
        ("hardware", run_config.get("hardware", {}).get("device", "-")),
        ("training time", f"{student['train_runtime']:.0f} s" if "train_runtime" in student else "-"),
        ("seed", training["seed"]),
        ("software", f"acamkd-hf {run_config['acamkd_hf_version']}, transformers {run_config['transformers_version']}, "
                     f"torch {run_config['torch_version']}"),
    ]


def model_card(
    run_config: dict[str, Any],
    metrics: dict[str, Any],
    *,
    repo_id: str,
    model_type: str | None,
    model_path: str | None = None,
    custom_code: list[str] | None = None,
) -> ModelCard:
    """The student's card from the run's record: ``run_config`` and ``metrics`` are the dicts that
    ``run_config.json`` and ``metrics.json`` hold; ``model_type`` is the student's (its ``config.model_type``);
    ``custom_code`` the model code files shipped with it (``config.json``'s ``auto_map``: a user loads them only by
    turning ``trust_remote_code`` on, which the card says);
    ``model_path`` is what the usage snippet loads (default ``repo_id``: the Hub repository; before a push, the
    local folder relative to where the run started)."""
    task = TASKS[run_config["model"].get("task", "segmentation")]
    distillation, data, model_record = run_config["distillation"], run_config["data"], run_config["model"]
    method = distillation["method"]
    student = metrics["student"]
    teacher_record = metrics.get("teacher", {})
    trained_here = bool(teacher_record.get("trained_here"))
    teacher_metadata, teacher_name = _teacher_names(
        distillation.get("teacher"), model_record, teacher_record.get("model") if trained_here else None)
    model_path = model_path or repo_id
    teacher = {
        "name": teacher_name,
        "params": teacher_record.get("params"),
        "revision": model_record.get("model_revision"),
        "trained_here": trained_here,
        "not_evaluated": teacher_record.get("not_evaluated"),
    }
    return ModelCard.from_template(
        _card_metadata(task, run_config, metrics, repo_id, model_type, teacher_metadata),
        template_path=str(card_template_path()),
        model_name=repo_id,
        repo_id=repo_id,
        model_path=model_path,
        local_usage=model_path != repo_id or not is_hub_id(repo_id),
        method=method,
        method_title=METHOD_TITLES[method],
        acamkd_variant=distillation.get("acamkd_variant") if method == "acamkd" else None,
        acamkd_variant_reason=ACAMKD_VARIANT_REASONS.get(distillation.get("acamkd_variant"), "").format(
            results=f"[docs/results.md]({project_url()}/blob/main/docs/results.md)"),
        task_title=task.title,
        pipeline_tag=task.pipeline_tag,
        auto_class=task.auto_class,
        metric_titles=[title for _, title in task.metrics],
        student={"architecture": student["model"], "params": student["params"]},
        teacher=teacher,
        dataset={"name": _dataset_names(task, data)[0], "split": "validation",
                 "num_labels": len(data.get("id2label", {})), "synthetic": bool(data.get("synthetic"))},
        results=_result_rows(task, metrics, method),
        has_student_alone="student_alone" in metrics,
        distillation_settings=[(name, value) for name, value in distillation.items() if name != "teacher"],
        training_rows=_training_rows(run_config, student),
        custom_code=custom_code or [],
        project_url=project_url(),
        example_image="street.png" if task.name == "segmentation" else "image.jpg",
        undefined_metrics=[title for key, title in task.metrics if not _defined(student.get(f"eval_{key}"))],
    )


def files_to_push(output_dir: str | os.PathLike, include_distillation_modules: bool = False) -> list[str]:
    """The exact files a push uploads (sorted): the student folder's top-level model and record files, and
    ``README.md`` (the card, rendered for the Hub repository at push time).

    Never: checkpoint folders, the teacher (its own folder), the distillation modules (only in checkpoints; with
    ``include_distillation_modules`` the latest checkpoint's copy is added as ``distillation_modules.safetensors``).
    """
    folder = Path(output_dir)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json and safetensors weights)")
    names = {
        path.name
        for path in folder.iterdir()
        if path.is_file()
        and path.name != DISTILLATION_MODULES_NAME
        and (path.name in MODEL_FILES or path.name in RECORD_FILES or path.name.endswith(MODEL_FILE_SUFFIXES))
    }
    names.add("README.md")
    if include_distillation_modules:
        names.add(DISTILLATION_MODULES_NAME)
    return sorted(names)


def _latest_distillation_modules(folder: Path) -> Path:
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    for checkpoint in reversed(checkpoints):
        if (checkpoint / DISTILLATION_MODULES_NAME).is_file():
            return checkpoint / DISTILLATION_MODULES_NAME
    raise FileNotFoundError(f"no checkpoint in {folder} holds {DISTILLATION_MODULES_NAME} (method 'none', or checkpoints removed)")


def _without_local_paths(value: Any) -> Any:
    """``value`` (a JSON document) with every absolute local path shortened to ``<local>/<its last part>``."""
    if isinstance(value, dict):
        return {key: _without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(item) for item in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")) and "\n" not in value:
        return f"<local>/{Path(value).name}"
    if isinstance(value, str):  # a command line or a message naming paths: each shortened in place
        return _PATH_IN_TEXT.sub(lambda match: f"<local>/{Path(match.group(0)).name}", value)
    return value


#: An absolute path inside a longer text (after a space, '=', a quote or a bracket; not the '//' of a URL)
_PATH_IN_TEXT = re.compile(r"""(?:(?<=^)|(?<=[\s='"(\[,]))(?:~|/(?!/))[^\s'"),\]]*""")


def _public_json(path: Path) -> bytes | str:
    """A JSON record as pushed: the same document without absolute local paths (output folders, dataset and teacher
    folders: a user's home and folder names stay on their machine); other files as they are."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return str(path)
    public = _without_local_paths(document)
    return str(path) if public == document else (json.dumps(public, indent=2) + "\n").encode()


def upload_contents(
    output_dir: str | os.PathLike, repo_id: str, include_distillation_modules: bool = False
) -> dict[str, bytes | str]:
    """What a push uploads, ``{path in the repository: bytes, or a local file's path}``: the card rendered for
    ``repo_id`` first, the JSON records without local paths, the other files as they are (:func:`files_to_push`)."""
    folder = Path(output_dir)
    names = files_to_push(folder, include_distillation_modules)
    try:
        card = str(build_model_card(folder, repo_id)).encode()
    except FileNotFoundError:  # no run record (a folder not written by acamkd-distill): its own card, if any
        if not (folder / "README.md").is_file():
            raise
        card = (folder / "README.md").read_bytes()
    uploads: dict[str, bytes | str] = {"README.md": card}
    for name in names:
        if name not in ("README.md", DISTILLATION_MODULES_NAME):
            uploads[name] = _public_json(folder / name) if name.endswith(".json") else str(folder / name)
    if include_distillation_modules:
        uploads[DISTILLATION_MODULES_NAME] = str(_latest_distillation_modules(folder))
    return uploads


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
    """Uploads the student folder (:func:`files_to_push`) to ``repo_id`` in one commit, with the card rendered for
    ``repo_id`` (its usage snippet loads the Hub id); returns the repository URL. The local folder is not modified.

    Raises :class:`HubPushError` (the folder untouched) when no token is available or the Hub cannot be reached.
    The token is never printed or written anywhere.
    """
    folder = Path(output_dir)
    uploads = upload_contents(folder, repo_id, include_distillation_modules)
    token = token or get_token()
    if not token:
        raise HubPushError(
            f"no Hugging Face token: log in with `hf auth login` or set HF_TOKEN, then run "
            f"`python scripts/push_to_hub.py {folder} {repo_id}`. Nothing was uploaded; {folder} is intact."
        )
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in uploads.items()]
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(
            repo_id=repo_id,
            operations=operations,
            revision=revision,
            commit_message=commit_message or "Upload distilled student (acamkd-hf)",
        )
    except Exception as error:  # noqa: BLE001 (network, HTTP, permission: say what happened; never show the token)
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
    "files_to_push",
    "push_student",
    "upload_contents",
    "custom_code_files",
    "project_url",
    "card_template_path",
]
