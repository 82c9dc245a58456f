"""End to end through the user's command: `accelerate launch scripts/distill.py ...` on a tiny synthetic set.

The saved folder must be a plain HF model that `from_pretrained` and `pipeline("image-segmentation")` load offline,
and it must be the *trained* student: evaluated here independently (numpy confusion matrix), it reproduces the
mIoU the run reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

import acamkd_hf.models  # noqa: F401  (registers the DeepLabV3 classes with the Auto API)
from acamkd_hf import cli, workflow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "distill.py"


def _run(args: list[str], launcher: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HOME": str(tmp_path / "hf_home")}  # accelerate reads its default config from HF_HOME
    done = subprocess.run([*launcher, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, f"distill.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def _independent_miou(model, processor, root: Path, num_classes: int) -> float:
    """mIoU of `model` on the validation split, computed here from the files on disk (labelIds -> trainIds by the
    official table, restricted to the set's classes), without the package's data or metric code."""
    official = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
                27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    lookup = np.full(256, 255, dtype=np.int64)
    for label_id, train_id in official.items():
        if train_id < num_classes:
            lookup[label_id] = train_id
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    model.eval()
    for image_path in sorted((root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png")):
        label_path = Path(str(image_path).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
        image = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1).float() / 255
        label = lookup[np.array(Image.open(label_path))]
        with torch.no_grad():
            logits = model(pixel_values=((image - mean) / std)[None]).logits
        prediction = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False).argmax(1)[0].numpy()
        valid = label != 255
        np.add.at(confusion, (label[valid], prediction[valid]), 1)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean())


@pytest.mark.slow
def test_accelerate_launch_distill_end_to_end(tmp_path):
    out = tmp_path / "student"
    data = tmp_path / "data"
    _run(
        ["--output_dir", str(out), "--synthetic_dir", str(data), "--synthetic_num_train", "16",
         "--synthetic_num_val", "6", "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
         "--logging_steps", "2", "--disable_tqdm", "true", "--use_cpu", "true"],
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no"],
        tmp_path,
    )
    # The output folder is the student and the run's record, nothing else.
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "run_config.json", "metrics.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "distillation_modules.safetensors").exists()
    run_config = json.loads((out / "run_config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert run_config["distillation"]["method"] == "acamkd"
    assert run_config["distillation"]["teacher"] == str(out) + "_teacher"  # trained here first, method none
    assert (Path(str(out) + "_teacher") / "model.safetensors").is_file()
    assert {"teacher", "student_untrained", "student"} <= set(metrics)

    # Loads as a plain HF model and reproduces the reported mIoU when evaluated independently.
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    processor = AutoImageProcessor.from_pretrained(out)
    num_classes = len(run_config["data"]["id2label"])
    miou = _independent_miou(model, processor, data, num_classes)
    assert miou == pytest.approx(metrics["student"]["eval_mean_iou"], abs=1e-6)

    # The final folder holds the weights training ended with (those of its last checkpoint), not a fresh init ...
    assert metrics["student"]["eval_mean_iou"] != metrics["student_untrained"]["eval_mean_iou"]
    trained_state = model.state_dict()
    checkpoint = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    from_checkpoint = AutoModelForSemanticSegmentation.from_pretrained(checkpoint).state_dict()
    assert all(torch.equal(from_checkpoint[name], tensor) for name, tensor in trained_state.items())

    # ... and runs in a pipeline, offline, on an image of another size.
    segmenter = pipeline("image-segmentation", model=str(out))
    image = Image.open(next((data / "leftImg8bit" / "val").rglob("*.png"))).resize((100, 50))
    masks = segmenter(image)
    assert masks and {m["label"] for m in masks} <= set(run_config["data"]["id2label"].values())
    assert masks[0]["mask"].size == (100, 50)


def test_paper_recipe_parses_with_flag_overrides():
    """The shipped Cityscapes recipe is valid for the parser, holds the paper's settings, and flags override it."""
    recipe = REPO / "configs" / "cityscapes_deeplabv3_r101_to_mbv2.yaml"
    model_args, data_args, args = cli.parse_arguments(
        ["--config", str(recipe), "--teacher", "my/teacher", "--dataset", "/data/cityscapes", "--max_steps", "10"]
    )
    assert (args.teacher, data_args.dataset, model_args.student) == ("my/teacher", "/data/cityscapes", "deeplabv3-mobilenetv2")
    assert args.max_steps == 10  # the flag wins over the recipe's 40000
    settings = args.distillation_settings().with_method_defaults()  # the recipe leaves the method's defaults unset
    assert (settings.method, settings.num_masks, settings.alpha, settings.lambda_div) == ("acamkd", 19, 1.0, 1.0)
    assert args.distillation_points == ["logits"]
    assert (args.learning_rate, args.weight_decay, str(args.optim.value)) == (0.02, 0.0005, "sgd")
    assert args.lr_scheduler_kwargs == {"power": 0.9, "lr_end": 0.0}
    assert data_args.crop_size == [512, 1024]
    assert args.batch_eval_metrics  # the streaming mIoU needs it, whatever the recipe says


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_each_task_has_its_default_recipe_as_a_file_read_like_a_config(task):
    """The default run's settings live in configs/defaults/<task>.yaml (shipped as package data), read exactly as
    --config reads a recipe: no arguments and --config <that file> parse to the same settings."""
    from acamkd_hf.arguments import default_recipe_path

    path = default_recipe_path(task)
    assert path.read_text() == (REPO / "configs" / "defaults" / f"{task}.yaml").read_text()
    assert yaml.safe_load(path.read_text())["task"] == task
    embedded = cli.parse_arguments(["--task", task])
    as_config = cli.parse_arguments(["--config", str(REPO / "configs" / "defaults" / f"{task}.yaml")])
    for default, configured in zip(embedded, as_config):
        assert default == configured


def test_no_arguments_means_the_default_recipe_and_flags_override_it():
    default_recipe = yaml.safe_load((REPO / "configs" / "defaults" / "segmentation.yaml").read_text())
    model_args, data_args, args = cli.parse_arguments([])
    assert args.num_train_epochs == default_recipe["num_train_epochs"] and data_args.dataset is None
    assert (model_args.task, model_args.student, model_args.teacher_architecture) == ("segmentation", "tiny-segformer", "small-segformer")
    assert args.method == "acamkd" and model_args.compare_student_alone
    _, _, args = cli.parse_arguments(["--num_train_epochs", "1"])
    assert args.num_train_epochs == 1 and args.learning_rate == default_recipe["learning_rate"]
    _, _, args = cli.parse_arguments(["--dataset", "/data/x"])  # own data: the Trainer's own defaults
    assert args.learning_rate == 5e-5


def _tiny_flags(tmp_path, out="student"):
    return ["--output_dir", str(tmp_path / out), "--synthetic_dir", str(tmp_path / "data"), "--synthetic_num_train", "8",
            "--synthetic_num_val", "4", "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
            "--disable_tqdm", "true", "--compare_student_alone", "false"]


def test_bad_inputs_fail_before_anything_trains(tmp_path):
    with pytest.raises(ValueError, match=r"'stage9'.*available: logits, stage1"):
        cli.run([*_tiny_flags(tmp_path), "--distillation_points", "stage9"])
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        cli.run([*_tiny_flags(tmp_path), "--student", "./no-such-model"])
    assert not (tmp_path / "student_teacher").exists()  # the teacher was never trained


def test_students_start_from_the_same_weights(tmp_path):
    """The distilled student, the student alone and the untrained row must share one initialisation."""
    task = cli.TASKS["segmentation"]()
    model_args, data_args, args = cli.parse_arguments(_tiny_flags(tmp_path))
    data, data_args = task.prepare_data(data_args, args.seed)
    torch.manual_seed(123)  # whatever happened before: the seed of the run decides
    first = workflow.load_model(task, "tiny-segformer", data, model_args, "student", args.seed).state_dict()
    torch.rand(5)
    second = workflow.load_model(task, "tiny-segformer", data, model_args, "student", args.seed).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_an_output_dir_with_another_runs_checkpoints_is_not_reused(tmp_path):
    flags = [*_tiny_flags(tmp_path), "--method", "none", "--student", "tiny-segformer"]
    first = cli.run(flags)
    # Same settings: the finished run is picked up again (an interrupted one would continue), same result.
    again = cli.run(flags)
    assert again["student"]["eval_mean_iou"] == first["student"]["eval_mean_iou"]
    with pytest.raises(ValueError, match=r"already holds a run .*learning_rate: 0.003 -> 0.001"):
        cli.run([*flags, "--learning_rate", "0.001"])


@pytest.mark.slow
def test_detection_end_to_end(tmp_path):
    """`--task detection`: RT-DETR teacher trained here, distilled at every neck level; the folder loads with
    AutoModelForObjectDetection and runs in pipeline("object-detection") offline; the card holds the COCO mAP."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForObjectDetection

    out = tmp_path / "student"
    data = tmp_path / "data"
    _run(
        ["--task", "detection", "--output_dir", str(out), "--synthetic_dir", str(data), "--synthetic_num_train", "12",
         "--synthetic_num_val", "6", "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
         "--inherit_from_teacher", "true", "--disable_tqdm", "true"],
        [sys.executable],
        tmp_path,
    )
    run_config = json.loads((out / "run_config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert run_config["distillation"]["distillation_points"] == ["neck1", "neck2", "neck3"]  # the paper: every level
    assert run_config["distillation"]["num_masks"] == 6 and run_config["distillation"]["inherit_from_teacher"]
    assert {"eval_map", "eval_map_50", "eval_map_75"} <= set(metrics["student"])
    card = ModelCard.load(out / "README.md")
    assert {r.metric_type for r in card.data.eval_results} >= {"map", "map_50"}
    assert card.data.pipeline_tag == "object-detection"
    assert next(r for r in card.data.eval_results if r.metric_type == "map").metric_value == metrics["student"]["eval_map"]

    model = AutoModelForObjectDetection.from_pretrained(out)
    assert type(model).__name__ == "RTDetrForObjectDetection"
    detector = pipeline("object-detection", model=str(out), threshold=0.0)
    image = Image.open(next((data / "val2017").glob("*"))).convert("RGB")
    detections = detector(image)
    assert isinstance(detections, list)
    labels = set(run_config["data"]["id2label"].values())
    assert all(d["label"] in labels and set(d["box"]) == {"xmin", "ymin", "xmax", "ymax"} for d in detections)


@pytest.mark.parametrize("recipe", ["coco_detr_r101_to_r50.yaml", "coco_rtdetr_r101_to_r18.yaml"])
def test_detection_recipes_parse(recipe):
    model_args, data_args, args = cli.parse_arguments(
        ["--config", str(REPO / "configs" / recipe), "--dataset", "/data/coco", "--teacher", "t"]
    )
    assert model_args.task == "detection" and args.method == "acamkd" and args.num_masks == 6
    assert args.inherit_from_teacher and args.distillation_points[0] == "neck1"
    assert not args.eval_do_concat_batches and args.batch_eval_metrics


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_recipe_parses_with_its_values(recipe):
    """Each recipe becomes the parser's defaults; every value arrives as its flag would give it (lists, dicts,
    numbers of the field's type), and flags still win."""
    import yaml

    values = yaml.safe_load((REPO / "configs" / recipe).read_text())
    parsed = cli.parse_arguments(["--config", str(REPO / "configs" / recipe), "--dataset", "/data/x", "--seed", "7"])
    given = {name: value for name, value in values.items() if value is not None and name not in ("dataset", "seed")}
    for name, value in given.items():
        held = next(getattr(part, name) for part in parsed if hasattr(part, name))
        held = getattr(held, "value", held)  # enums (optim, lr_scheduler_type, strategies) hold the recipe's string
        expected = float(value) if isinstance(held, float) else value  # learning_rate: 0.02, num_train_epochs: 24
        expected = [] if (name, value) == ("report_to", "none") else expected  # TrainingArguments' own spelling
        assert held == expected and type(held) is type(expected), f"{recipe}: {name} = {held!r}, recipe {value!r}"
    assert parsed[2].seed == 7 and parsed[1].dataset == "/data/x"


def test_a_recipe_key_that_is_no_setting_is_refused_naming_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: acamkd\nlearning_rat: 0.01\n")
    with pytest.raises(ValueError, match=rf"{recipe}: 'learning_rat' is not a setting of acamkd-distill\. Did you mean learning_rate"):
        cli.parse_arguments(["--config", str(recipe)])
    recipe.write_text("method: kd\n")
    with pytest.raises(ValueError, match=r"'method' cannot be 'kd'; choose one of: acamkd"):
        cli.parse_arguments(["--config", str(recipe)])
    recipe.write_text("crop_size: [512, 1024]\nscale_range: [1, 2]\nlearning_rate: 3e-3\n")  # YAML: 3e-3 is a string
    _, data_args, args = cli.parse_arguments(["--config", str(recipe)])
    assert (data_args.crop_size, data_args.scale_range, args.learning_rate) == ([512, 1024], [1.0, 2.0], 0.003)


def test_console_entry_points_and_the_script_run_the_cli():
    from importlib.metadata import entry_points

    scripts = {entry.name: entry.value for entry in entry_points(group="console_scripts")}
    assert scripts["acamkd-distill"] == "acamkd_hf.cli:main"
    assert scripts["acamkd-push"] == "acamkd_hf.push_command:main"
    # The documented `accelerate launch scripts/distill.py` runs the same program, --config among its flags.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shown = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0 and "--config FILE" in shown.stdout and "--distillation_points" in shown.stdout
