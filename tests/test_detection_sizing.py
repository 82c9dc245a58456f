"""Detection image sizing by each family's convention on a COCO folder of mixed sizes (a real COCO trait: 640x426,
426x640, portrait and small images side by side): RT-DETR a square multiple of 32, the DETR family shortest/longest
edge with padding; predictions still scored on the original sizes; a wrong size refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from acamkd_hf import cli
from acamkd_hf.data import DetectionTransforms, collate_detection, load_coco
from acamkd_hf.data.checks import lazily_decoded
from acamkd_hf.metrics import CocoDetectionMetrics
from acamkd_hf.models import default_detection_image_processor

#: (width, height) of the images: COCO's two common sizes both ways, a portrait one, small ones of odd sizes
SIZES = [(640, 426), (426, 640), (120, 200), (160, 120), (333, 500), (150, 151)]
FAMILIES = {"rt_detr": "tiny-rtdetr-resnet-student", "detr": "tiny-detr-resnet-student",
            "deformable_detr": "tiny-deformable-detr-student"}


def write_mixed_coco(root: Path) -> Path:
    """A COCO folder (train2017 / val2017 + annotations) whose images have the sizes above, two boxes each."""
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        images, annotations = [], []
        for index, (width, height) in enumerate(SIZES):
            Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(root / split / f"{index}.jpg")
            images.append({"id": index + 1, "file_name": f"{index}.jpg", "width": width, "height": height})
            for k, category in enumerate((3, 7)):
                w, h = width // 4, height // 3
                x, y = (width - w) * (k + 1) / 3, (height - h) * (2 - k) / 3
                annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "bbox": [x, y, w, h],
                                    "category_id": category, "area": w * h, "iscrowd": 0})
        doc = {"images": images, "annotations": annotations, "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory) -> Path:
    return write_mixed_coco(tmp_path_factory.mktemp("mixed") / "coco")


def test_each_family_resizes_by_its_own_convention(mixed_root):
    data = load_coco(mixed_root)
    for family, expected in (("rt_detr", 640), ("detr", 800), ("deformable_detr", 800)):
        processor = default_detection_image_processor(family)
        transformed = data.dataset["validation"].with_transform(DetectionTransforms(processor, train=False))
        for example, (width, height) in zip(transformed, SIZES):
            out_height, out_width = example["labels"]["size"].tolist()
            assert example["labels"]["orig_size"].tolist() == [height, width]
            if family == "rt_detr":
                assert (out_height, out_width) == (expected, expected)
            else:  # shortest edge 800 unless the longest would pass 1333; aspect ratio kept
                scale = min(expected / min(width, height), 1333 / max(width, height))
                assert abs(out_height - height * scale) <= 1 and abs(out_width - width * scale) <= 1, (family, width, height)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_perfect_predictions_score_one_on_the_original_sizes(mixed_root, family):
    """Targets of mixed-size images in one batch (padded for the DETR family), fed back as predictions, score mAP
    1.0 against the original annotations: the boxes stay relative to each image, whatever the resize and padding."""
    data = load_coco(mixed_root)
    processor = default_detection_image_processor(family, 64 if family == "rt_detr" else 48)
    validation = data.dataset["validation"].with_transform(DetectionTransforms(processor, train=False))
    metric = CocoDetectionMetrics(processor, data.ground_truth["validation"], data.label_to_category_id)
    num_classes, queries = data.num_labels, 6
    for batch in DataLoader(validation, batch_size=len(SIZES), collate_fn=collate_detection):
        size = len(batch["labels"])
        sigmoid = family != "detr"  # RT-DETR and Deformable DETR score classes with a sigmoid, no "no object" class
        if sigmoid:
            logits = torch.full((size, queries, num_classes), -8.0)
        else:
            logits = torch.full((size, queries, num_classes + 1), -8.0)
            logits[..., num_classes] = 8.0
        boxes = torch.full((size, queries, 4), 0.5)
        for i, target in enumerate(batch["labels"]):
            n = len(target["class_labels"])
            if not sigmoid:
                logits[i, :n, num_classes] = -8.0
            logits[i, torch.arange(n), target["class_labels"]] = 8.0
            boxes[i, :n] = target["boxes"]
        metric.update((logits, boxes), batch["labels"])
    scores = metric.compute()
    assert scores["map"] == pytest.approx(1.0, abs=1e-9) and scores["map_50"] == pytest.approx(1.0, abs=1e-9)


def test_rtdetr_refuses_a_size_that_is_not_a_multiple_of_32():
    with pytest.raises(ValueError, match="RT-DETR needs a multiple of 32.*use 96 or 128"):
        default_detection_image_processor("rt_detr", 100)
    assert default_detection_image_processor("detr", 100).size["shortest_edge"] == 100  # the DETR family pads


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_detection_family_trains_and_scores_on_a_mixed_size_coco_folder(mixed_root, tmp_path, family):
    """The CLI on the mixed folder (the crash of a real COCO user: RT-DETR built for the first image's 160x120, a
    size its encoder cannot merge): two training steps and an evaluation for each family's student."""
    output = tmp_path / "out"
    results = cli.run(["--task", "detection", "--dataset", str(mixed_root), "--student", FAMILIES[family],
                       "--method", "none", "--image_size", "64", "--max_steps", "2", "--per_device_train_batch_size", "3",
                       "--per_device_eval_batch_size", "6", "--output_dir", str(output), "--report_to", "none",
                       "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true"])
    assert results["student"]["global_step"] == 2 and "eval_map" in results["student"]
    saved = json.loads((output / "preprocessor_config.json").read_text())
    assert saved["size"] == ({"height": 64, "width": 64} if family == "rt_detr"
                             else {"shortest_edge": 64, "longest_edge": 107})


def test_wrong_sizing_flags_are_one_line_errors(mixed_root, tmp_path, capsys):
    common = ["--task", "detection", "--dataset", str(mixed_root), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*common, "--image_size", "100", "--method", "none"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("acamkd-distill: error: --image_size 100: RT-DETR needs a multiple of 32")
    assert not any("Traceback" in line for line in lines)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*common, "--crop_size", "64", "64"])
    assert exit_info.value.code == 2
    assert "--crop_size is a segmentation flag" in capsys.readouterr().err
    # A rule that depends on the model (a windowed ViT's multiple), checked before training, with the nearest sides.
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*common, "--teacher", "tiny-rtdetr-resnet", "--student", "tiny-lwdetr-student", "--image_size", "72"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "acamkd-distill: error: the student 'tiny-lwdetr-student' cannot take the training inputs (72x72): LW-DETR "
        "needs a multiple of 32 (its ViT's patch size times its windows per side); use 64 or 96. Train and evaluate on "
        "inputs it takes (--image_size sets the input side).")


def _exif_coco(root: Path, annotated_size: tuple[int, int]) -> Path:
    """One JPEG stored 160x120 with EXIF orientation 6 (a phone's portrait photo), annotated with
    ``annotated_size`` and one box in the stored frame."""
    (root / "annotations").mkdir(parents=True)
    stored = np.zeros((120, 160, 3), dtype=np.uint8)
    stored[10:40, 100:150] = 255  # the object, in the stored frame: x 100..150, y 10..40
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    width, height = annotated_size
    for split in ("train2017", "val2017"):
        (root / split).mkdir()
        Image.fromarray(stored).save(root / split / "phone.jpg", exif=exif, quality=95)
        doc = {"images": [{"id": 1, "file_name": "phone.jpg", "width": width, "height": height}],
               "annotations": [{"id": 1, "image_id": 1, "bbox": [100, 10, 50, 30], "category_id": 1, "area": 1500,
                                "iscrowd": 0}],
               "categories": [{"id": 1, "name": "thing"}]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def test_an_exif_rotated_jpeg_is_read_in_the_frame_its_boxes_are_in(tmp_path):
    data = load_coco(_exif_coco(tmp_path / "coco", (160, 120)))
    processor = default_detection_image_processor("rt_detr", 64)
    validation = lazily_decoded(data.dataset["validation"], ["image"])  # as the task hands it to the transforms
    example = validation.with_transform(DetectionTransforms(processor, train=False))[0]
    assert example["labels"]["orig_size"].tolist() == [120, 160]  # stored frame, not the upright 160x120
    cx, cy, w, h = example["labels"]["boxes"][0].tolist()
    pixels = example["pixel_values"]  # the white object is where the box says, in the resized image
    x0, x1, y0, y1 = int((cx - w / 2) * 64) + 1, int((cx + w / 2) * 64) - 1, int((cy - h / 2) * 64) + 1, int((cy + h / 2) * 64) - 1
    assert pixels[:, y0:y1, x0:x1].mean() > 0.9 and pixels.mean() < 0.3


def test_an_image_that_does_not_match_its_annotation_is_named(tmp_path):
    data = load_coco(_exif_coco(tmp_path / "coco", (200, 100)))
    processor = default_detection_image_processor("rt_detr", 64)
    with pytest.raises(ValueError, match=r"phone.jpg is 120x160 as decoded, but its annotation says 200x100"):
        lazily_decoded(data.dataset["validation"], ["image"]).with_transform(DetectionTransforms(processor, train=False))[0]


def test_loading_a_coco_split_says_what_it_holds(tmp_path, caplog):
    root = write_mixed_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_val2017.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["iscrowd"] = 1
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 2]  # image 2 without annotations
    path.write_text(json.dumps(doc))
    Image.open(root / "val2017" / "0.jpg").convert("L").save(root / "val2017" / "0.jpg")  # a grayscale JPEG
    rgba = Image.open(root / "val2017" / "3.jpg").convert("RGBA")  # an RGBA PNG under its JPEG-looking name's json entry
    rgba.save(root / "val2017" / "3.png")
    doc["images"][3]["file_name"] = "3.png"
    path.write_text(json.dumps(doc))
    with caplog.at_level("INFO", logger="acamkd_hf.data.coco"):
        load_coco(root)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("instances_val2017.json:")]
    assert line.startswith(f"instances_val2017.json: {len(SIZES)} images (1 without annotations: background "
                           f"images), {2 * len(SIZES) - 2} boxes (1 crowd: left out of the training targets")
    assert "; 1 L, 1 RGBA images not stored as RGB, converted as they are read" in line
