"""Pretrained checkpoints with another label set, as users bring them from the Hub (issue 15, items 1 and 2).

The Hub is unreachable here: tiny models are saved with `save_pretrained` to folders that stand for the Hub
checkpoints (`nvidia/mit-b0`: a SegFormer with 1000 ImageNet classes; `PekingU/rtdetr_r18vd`: an RT-DETR with 80
COCO classes) and go through the real loaders and the real command.

- A student with another label set is loaded with the dataset's labels and `ignore_mismatched_sizes=True` (as
  transformers' run_semantic_segmentation.py / run_object_detection.py do); one line names the head weights that
  start anew; the distilled folder loads with `from_pretrained` / `pipeline` with the dataset's labels.
- An architecture without a head for the task is refused in one sentence.
- A teacher with another label set: refused where class outputs are compared (tests/test_bad_inputs.py,
  tests/test_distillation_trainer.py), allowed with one warning at feature points (here, end to end).
- Label-set messages are short: counts and at most 5 names per list, then "... and N more".
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image
from transformers import (
    AutoModelForObjectDetection,
    AutoModelForSemanticSegmentation,
    ResNetConfig,
    ResNetForImageClassification,
    SegformerForImageClassification,
    pipeline,
)

from acamkd_hf import cli
from acamkd_hf.data import make_synthetic_cityscapes, make_synthetic_coco
from acamkd_hf.models import (
    DETECTION_PRESETS,
    SEGMENTATION_PRESETS,
    default_detection_image_processor,
    describe_label_mismatch,
    load_detection_model,
    load_segmentation_model,
)

IMAGENET = {i: f"imagenet_class_{i}" for i in range(1000)}  # stands for nvidia/mit-b0's 1000 ImageNet labels
COCO80 = {i: f"coco_class_{i}" for i in range(80)}  # stands for PekingU/rtdetr_r18vd's 80 COCO labels


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("city"), num_train=8, num_val=4, image_size=(32, 64))


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=8, num_val=4, image_size=(64, 64))


def _labels_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "acamkd_hf.models.labels"]


def _seg_flags(tmp_path: Path, dataset: Path, *extra: str) -> list[str]:
    return ["--dataset", str(dataset), "--output_dir", str(tmp_path / "student"), "--num_train_epochs", "1",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3",
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", *extra]  # fmt: skip


@pytest.mark.slow
def test_a_1000_class_segformer_student_distils_on_the_8_class_set_and_loads_with_its_labels(tmp_path, cityscapes, caplog):
    """One command: the 1000-class head is re-initialised for the dataset's 8 classes (one line says so), the run
    distils, and the folder loads with from_pretrained / pipeline with the dataset's labels."""
    hub_folder = tmp_path / "mit-b0"  # stands for nvidia/mit-b0
    SEGMENTATION_PRESETS["tiny-segformer"](IMAGENET).save_pretrained(hub_folder)
    with caplog.at_level(logging.WARNING, logger="acamkd_hf.models.labels"):
        cli.run(_seg_flags(tmp_path, cityscapes, "--student", str(hub_folder), "--teacher_architecture", "tiny-segformer"))
    assert _labels_lines(caplog) == [
        f"student {hub_folder}: its 1000 classes replaced by the dataset's 8; re-initialised (shape depends on the "
        "classes): decode_head.classifier."
    ]  # once, though the student is loaded twice (the untrained row and the distilled one share it)
    out = tmp_path / "student"
    dataset_labels = json.loads((out / "run_config.json").read_text())["data"]["id2label"]
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert model.config.num_labels == 8 and model.config.id2label == {int(k): v for k, v in dataset_labels.items()}
    card = (out / "README.md").read_text()
    assert "A **mit-b0** semantic-segmentation model" in card and str(tmp_path) not in card
    segmenter = pipeline("image-segmentation", model=str(out))
    image = Image.open(next((cityscapes / "leftImg8bit" / "val").rglob("*.png")))
    assert {mask["label"] for mask in segmenter(image)} <= set(dataset_labels.values())


def test_an_image_classification_checkpoint_gets_a_new_decode_head(tmp_path, caplog):
    """nvidia/mit-b0 is really a SegformerForImageClassification checkpoint: transformers builds the segmentation
    model from its encoder with a fresh decode head, and the line says so (its classifier is not used)."""
    folder = tmp_path / "mit-b0-classifier"
    encoder = SEGMENTATION_PRESETS["tiny-segformer"](IMAGENET).config
    SegformerForImageClassification(encoder).save_pretrained(folder)
    with caplog.at_level(logging.WARNING, logger="acamkd_hf.models.labels"):
        model = load_segmentation_model(str(folder), {0: "road", 1: "car"}, role="student")
    assert type(model).__name__ == "SegformerForSemanticSegmentation" and model.config.num_labels == 2
    assert _labels_lines(caplog) == [
        f"student {folder}: its 1000 classes replaced by the dataset's 2; newly initialised (not in the checkpoint): "
        "decode_head; not used: the checkpoint's classifier."
    ]


def test_an_architecture_without_a_head_for_the_task_is_refused_in_one_sentence(tmp_path, cityscapes):
    folder = tmp_path / "resnet-classifier"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                                              id2label=IMAGENET)).save_pretrained(folder)  # fmt: skip
    with pytest.raises(ValueError) as info:
        cli.run(_seg_flags(tmp_path, cityscapes, "--student", str(folder)))
    assert str(info.value) == (
        f"the student '{folder}' is a resnet checkpoint (ResNetForImageClassification), and transformers has no "
        "semantic-segmentation model for that architecture: use a semantic-segmentation checkpoint or one whose "
        "backbone has a semantic-segmentation model in transformers (any of them distils at logits; the stages too for "
        "DeepLabV3, Segformer, MobileNetV2, UperNet, DPT, Beit, MobileViT and MobileViTV2; mask classification "
        "(Mask2Former, MaskFormer, OneFormer, EoMT) is not supported yet)."
    )
    assert not (tmp_path / "student").exists() and not (tmp_path / "student_teacher").exists()
    segformer = tmp_path / "segformer"
    SEGMENTATION_PRESETS["tiny-segformer"]({0: "a"}).save_pretrained(segformer)
    with pytest.raises(ValueError, match=r"the student '.*segformer' is a segformer checkpoint .* no object-detection model"):
        load_detection_model(str(segformer), {0: "a"}, role="student")


@pytest.mark.slow
def test_an_80_class_rtdetr_student_distils_on_the_6_class_set_and_loads_with_its_labels(tmp_path, coco, caplog):
    hub_folder = tmp_path / "rtdetr_r18vd"  # stands for PekingU/rtdetr_r18vd: 80 classes, with its processor
    DETECTION_PRESETS["tiny-rtdetr-resnet-student"](COCO80).save_pretrained(hub_folder)
    default_detection_image_processor("rt_detr", 64).save_pretrained(hub_folder)
    flags = ["--task", "detection", "--dataset", str(coco), "--student", str(hub_folder), "--teacher_architecture",
             "tiny-rtdetr-resnet", "--output_dir", str(tmp_path / "student"), "--num_train_epochs", "1",
             "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--save_strategy", "no",
             "--report_to", "none", "--disable_tqdm", "true", "--inherit_from_teacher", "true"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="acamkd_hf.models.labels"):
        cli.run(flags)
    [line] = _labels_lines(caplog)
    assert line == (
        f"student {hub_folder}: its 80 classes replaced by the dataset's 6; re-initialised (shape depends on the "
        "classes): model.decoder.class_embed, model.denoising_class_embed, model.enc_score_head."
    )
    out = tmp_path / "student"
    dataset_labels = json.loads((out / "run_config.json").read_text())["data"]["id2label"]
    model = AutoModelForObjectDetection.from_pretrained(out)
    assert model.config.id2label == {int(k): v for k, v in dataset_labels.items()}
    detector = pipeline("object-detection", model=str(out), threshold=0.0)
    detections = detector(Image.open(next((coco / "val2017").glob("*"))).convert("RGB"))
    assert detections and {d["label"] for d in detections} <= set(dataset_labels.values())


@pytest.mark.slow
def test_a_teacher_with_other_classes_teaches_features_with_one_warning(tmp_path, cityscapes, caplog):
    """A 1000-class teacher at a backbone stage: allowed, said once; it is not scored on the dataset (its
    predictions are of other classes), and the card says why."""
    teacher = tmp_path / "imagenet-teacher"
    SEGMENTATION_PRESETS["tiny-segformer"](IMAGENET).save_pretrained(teacher)
    with caplog.at_level(logging.WARNING):
        results = cli.run(_seg_flags(tmp_path, cityscapes, "--teacher", str(teacher), "--student", "micro-segformer",
                                     "--distillation_points", "stage4", "--compare_student_alone", "false"))
    warned = [r.getMessage() for r in caplog.records if "other classes than" in r.getMessage()]
    assert warned == [f"the teacher '{teacher}' has other classes than the student (1000 vs 8): distilling its "
                      "features at stage4 only; its class outputs are not used."]
    assert results["teacher"]["not_evaluated"] == "another label set than the dataset's"
    assert "eval_mean_iou" not in results["teacher"] and "eval_mean_iou" in results["student"]
    card = (tmp_path / "student" / "README.md").read_text()
    assert "not evaluated on this dataset: another label set than the dataset's" in card


def test_label_set_messages_are_short():
    message = describe_label_mismatch(IMAGENET, {i: f"c{i}" for i in range(8)}, name_a="student", name_b="dataset")
    assert message == (
        "Label sets differ (student: 1000 classes, dataset: 8 classes). Only in student: 'imagenet_class_0', "
        "'imagenet_class_1', 'imagenet_class_2', 'imagenet_class_3', 'imagenet_class_4' ... and 995 more. Only in "
        "dataset: 'c0', 'c1', 'c2', 'c3', 'c4' ... and 3 more."
    )
    reordered = {i: name for i, name in enumerate(reversed(list(COCO80.values())))}
    moved = describe_label_mismatch(COCO80, reordered, name_a="teacher", name_b="dataset")
    assert moved.startswith("Label sets differ (teacher: 80 classes, dataset: 80 classes). Different order: ")
    assert moved.endswith(" ... and 75 more.") and len(re.findall(r"teacher id", moved)) == 5
    assert len(moved) < 400
