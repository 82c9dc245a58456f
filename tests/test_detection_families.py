"""The detection families of issue 23 (RT-DETRv2, D-FINE, DEIMv2, LW-DETR, RF-DETR, Conditional DETR, DAB-DETR) next to
DETR, Deformable DETR and RT-DETR: each family's processor is the one its public checkpoints ship and scores its
model's logits the way its loss trains them (perfect predictions score mAP 1), input-size rules that are the models'
real limits, errors that list every family, inheritance that copies the decoder, and the command line end to end
(a few steps, COCO mAP, a saved student that `pipeline("object-detection")` loads) for same- and cross-family pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForObjectDetection, ResNetConfig, ResNetForImageClassification, pipeline
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

from acamkd_hf import cli
from acamkd_hf.data import load_coco, make_synthetic_coco
from acamkd_hf.families import DETECTION_FAMILIES
from acamkd_hf.inheritance import inherit_from_teacher
from acamkd_hf.metrics import CocoDetectionMetrics
from acamkd_hf.models import (
    DETECTION_PRESET_FAMILIES,
    DETECTION_PRESETS,
    DETECTORS,
    default_detection_image_processor,
    detection_family,
    load_detection_model,
)
from acamkd_hf.models.detection import detection_input_size_error

ID2LABEL = {0: "cat", 1: "dog"}
#: family -> its tiny teacher (the new families' students are "<teacher>-student")
TINY = {family: next(name for name, f in DETECTION_PRESET_FAMILIES.items() if f == family and name.startswith("tiny-"))
        for family in DETECTORS}
#: What the families' public checkpoints ship where transformers' AutoImageProcessor has no entry for the model_type
#: (it then reads preprocessor_config.json): PekingU/rtdetr_v2_*, ustc-community/dfine-* (RTDetrImageProcessor) and
#: IDEA-Research/dab-detr-resnet-50 (what transformers' DAB-DETR conversion script writes).
UNMAPPED = {"rt_detr_v2": "RTDetrImageProcessor", "d_fine": "RTDetrImageProcessor",
            "dab-detr": "ConditionalDetrImageProcessor"}
TITLES = ["DETR", "Conditional DETR", "DAB-DETR", "Deformable DETR", "RT-DETR", "RT-DETRv2", "D-FINE", "DEIMv2",
          "LW-DETR", "RF-DETR"]


def _build(name, seed=0, id2label=ID2LABEL):
    torch.manual_seed(seed)
    return DETECTION_PRESETS[name](id2label)


def test_the_table_covers_exactly_the_families_with_points():
    assert sorted(detector.model_class for detector in DETECTORS.values()) == sorted(DETECTION_FAMILIES)
    for name, family in DETECTION_PRESET_FAMILIES.items():
        if name.startswith("tiny-"):
            assert type(_build(name)).__name__ == DETECTORS[family].model_class, name


@pytest.mark.parametrize("family", list(DETECTORS))
def test_each_family_gets_the_processor_of_its_public_checkpoints(family):
    expected = UNMAPPED.get(family) or IMAGE_PROCESSOR_MAPPING_NAMES[family]["torchvision"]
    assert type(default_detection_image_processor(family, 128)).__name__ == expected


@pytest.mark.parametrize("family", list(DETECTORS))
def test_perfect_predictions_score_one_through_the_familys_post_processing(family):
    """The tiny model's own output layout (queries, classes + a "no object" logit or not), filled with the targets:
    the family's processor must read it as its loss trains it (a softmax processor on sigmoid logits drops the last
    class; a sigmoid processor on DETR's logits predicts "no object" as a class), giving mAP 1 on the originals."""
    model = _build(TINY[family]).eval()
    with torch.no_grad():
        queries, width = model(pixel_values=torch.zeros(1, 3, 128, 128)).logits.shape[1:]
    no_object = width == len(ID2LABEL) + 1
    sizes = {1: (96, 160), 2: (128, 128)}  # image id -> (height, width)
    targets = {1: [(0, [10, 20, 50, 40]), (1, [90, 30, 60, 60])], 2: [(1, [5, 5, 100, 70])]}  # (label, x y w h)
    ground_truth = {
        "images": [{"id": i, "height": h, "width": w} for i, (h, w) in sizes.items()],
        "annotations": [{"id": 10 * i + k, "image_id": i, "category_id": (3, 7)[label], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0}
                        for i, objects in targets.items() for k, (label, box) in enumerate(objects)],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    metric = CocoDetectionMetrics(default_detection_image_processor(family, 128), ground_truth, {0: 3, 1: 7})
    logits = torch.full((2, queries, width), -8.0)
    boxes = torch.full((2, queries, 4), 0.5)
    if no_object:
        logits[..., -1] = 8.0
    for row, (image_id, objects) in enumerate(targets.items()):
        height, width_px = sizes[image_id]
        for query, (label, (x, y, w, h)) in enumerate(objects):
            logits[row, query, label] = 8.0
            if no_object:
                logits[row, query, -1] = -8.0
            boxes[row, query] = torch.tensor([(x + w / 2) / width_px, (y + h / 2) / height, w / width_px, h / height])
    metric.update((logits, boxes), [{"image_id": torch.tensor([i])} for i in targets])
    assert metric.compute()["map"] == pytest.approx(1.0, abs=1e-9)
    assert no_object == (family == "detr")  # DETR alone has a "no object" class (softmax); the rest score sigmoids


@pytest.mark.parametrize("family", ["rt_detr_v2", "d_fine", "deimv2", "lw_detr", "rf_detr"])
def test_the_input_size_rules_are_the_models_real_limits(family):
    # The real-time DETRs merge strides 8..32; the tiny ViTs have patch 16 and 2 windows per side: a side must be a
    # multiple of 32. And these two-stage models pick their queries (30; LW-DETR 20, RF-DETR 16) among the positions
    # of their maps: 32 px gives 16 + 4 + 1 = 21 at strides 8, 16, 32 (LW-DETR's 8 and 32: 16 + 1; RF-DETR's 16: 4).
    # Each refused size makes the model itself fail; 64 and 96 run.
    model = _build(TINY[family]).eval()
    title = DETECTORS[family].title
    with torch.no_grad():
        for side in (64, 96):
            model(pixel_values=torch.zeros(1, 3, side, side))
        for side in (80, 32):
            with pytest.raises(Exception):  # noqa: B017 (the model's own crash: a shape or top-k error)
                model(pixel_values=torch.zeros(1, 3, side, side))
    assert detection_input_size_error(model, 64) is None and detection_input_size_error(model, 96) is None
    assert detection_input_size_error(model, 80) == (
        f"--image_size 80: {title} needs a multiple of 32 ({DETECTORS[family].size_reason}); use 64 or 96")
    positions = {"lw_detr": 17, "rf_detr": 4}.get(family, 21)
    assert detection_input_size_error(model, 32).startswith(
        f"--image_size 32: {title} picks its {model.config.num_queries} queries among the positions of its maps (")
    assert detection_input_size_error(model, 32).endswith(
        f"and 32x32 px give only {positions}; use 64")
    with pytest.raises(ValueError, match=f"{title} needs a multiple of 32"):
        default_detection_image_processor(model, 80)
    assert detection_input_size_error(family, 32) is None  # by name: the model's query count is not known


def test_default_sizes_follow_the_public_checkpoints_or_the_models_backbone():
    side = {family: default_detection_image_processor(family).size for family in DETECTORS}
    assert side["d_fine"] == side["rt_detr_v2"] == side["deimv2"] == side["lw_detr"] == {"height": 640, "width": 640}
    assert side["rf_detr"] == {"height": 560, "width": 560}  # RF-DETR-B; a model brings its backbone's resolution
    assert default_detection_image_processor(_build("tiny-rfdetr")).size == {"height": 128, "width": 128}
    assert side["conditional_detr"] == side["dab-detr"] == {"shortest_edge": 800, "longest_edge": 1333}
    normalised = {family for family in DETECTORS if default_detection_image_processor(family).do_normalize}
    assert normalised == {"detr", "conditional_detr", "dab-detr", "deformable_detr", "lw_detr", "rf_detr"}


def test_family_names_and_aliases():
    assert [detection_family(name) for name in ("D-FINE", "dfine", "RT-DETRv2", "rtdetrv2", "dab_detr", "LW-DETR",
                                               "rf-detr", "Conditional DETR", "deimv2")] == [
        "d_fine", "d_fine", "rt_detr_v2", "rt_detr_v2", "dab-detr", "lw_detr", "rf_detr", "conditional_detr", "deimv2"]
    assert detection_family("tiny-dfine-student") == "d_fine"
    assert detection_family(_build("tiny-dab-detr")) == "dab-detr"
    with pytest.raises(ValueError, match="Unknown detection family 'yolos'; expected one of detr, conditional_detr"):
        detection_family("yolos")


def test_a_checkpoint_without_a_detection_head_is_refused_naming_every_family(tmp_path):
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1]))\
        .save_pretrained(tmp_path)
    with pytest.raises(ValueError) as info:
        load_detection_model(str(tmp_path), role="student")
    assert str(info.value).endswith("in transformers (" + ", ".join(TITLES[:-1]) + f" and {TITLES[-1]}).")


# What reads the backbone's channels cannot be inherited (worked out from each architecture); LW-DETR's projector
# samples each ViT layer (a transposed conv and a stride-2 conv per layer, both reading the ViT width) and then
# concatenates them (its first conv): all of those mismatch.
MISMATCHED = {
    "tiny-rtdetrv2": {f"model.encoder_input_proj.{i}.0.weight" for i in range(3)},
    "tiny-dfine": {f"model.encoder_input_proj.{i}.0.weight" for i in range(3)},
    "tiny-deimv2": set(),  # its input projections are part of the backbone path (model.conv_encoder)
    "tiny-rfdetr": {"model.backbone.projector.projector_layer.conv1.conv.weight"},
    "tiny-conditional-detr": {"model.input_projection.weight"},
    "tiny-dab-detr": {"model.input_projection.weight"},
}


@pytest.mark.parametrize("teacher_name", [*MISMATCHED, "tiny-lwdetr"])
def test_inheritance_copies_the_decoder_and_leaves_the_backbone(teacher_name):
    teacher, student = _build(teacher_name, seed=0), _build(teacher_name + "-student", seed=1)
    decoder = {name: tensor.clone() for name, tensor in student.model.decoder.state_dict().items()}
    report = inherit_from_teacher(student, teacher)
    backbone = student.get_submodule(report.backbone_prefix)
    before = _build(teacher_name + "-student", seed=1).get_submodule(report.backbone_prefix).state_dict()
    teacher_decoder = teacher.model.decoder.state_dict()
    assert any(not torch.equal(tensor, teacher_decoder[name]) for name, tensor in decoder.items())  # differed before
    inherited = student.model.decoder.state_dict()
    assert all(torch.equal(tensor, teacher_decoder[name]) for name, tensor in inherited.items())
    assert all(torch.equal(tensor, before[name]) for name, tensor in backbone.state_dict().items())
    mismatched = {name for name, _, _ in report.shape_mismatch}
    if teacher_name == "tiny-lwdetr":
        assert mismatched and all(".sampling_layers." in name or ".projector_layer.conv1.conv." in name
                                  for name in mismatched)
    else:
        assert mismatched == MISMATCHED[teacher_name]
    assert report.missing_in_teacher == []


# ------------------------------------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """A synthetic COCO folder (6 train, 3 val images of 64x64)."""
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=6, num_val=3, image_size=(64, 64))


def _run(coco: Path, output: Path, teacher: str, student: str, *extra: str) -> dict:
    return cli.run(["--task", "detection", "--dataset", str(coco), "--image_size", "64", "--teacher", teacher,
                    "--student", student, "--output_dir", str(output), "--max_steps", "2",
                    "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "3",
                    "--compare_student_alone", "false", "--disable_tqdm", "true", "--report_to", "none",
                    "--save_strategy", "no", *extra])  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("teacher", "student"), [
    ("tiny-dfine", "tiny-dfine-student"), ("tiny-rtdetrv2", "tiny-rtdetrv2-student"),
    ("tiny-rfdetr", "tiny-rfdetr-student"), ("tiny-rtdetr-resnet", "tiny-dfine-student"),
])
def test_a_pair_distils_scores_and_saves_a_student_the_pipeline_loads(coco, tmp_path, teacher, student):
    results = _run(coco, tmp_path / "student", teacher, student)
    assert results["student"]["global_step"] == 2
    for row in ("teacher", "student_untrained", "student"):
        assert 0.0 <= results[row]["eval_map"] <= 1.0 and "eval_map_50" in results[row], row
    family = DETECTORS[DETECTION_PRESET_FAMILIES[student]]
    detector = pipeline("object-detection", model=str(tmp_path / "student"))
    assert type(detector.model).__name__ == family.model_class
    assert type(detector.image_processor) is family.processor
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    found = detector(image, threshold=0.0)
    assert found and {d["label"] for d in found} <= set(load_coco(coco).id2label.values())
    assert all(0 <= d["box"]["xmin"] <= d["box"]["xmax"] <= 80 and 0 <= d["box"]["ymin"] <= d["box"]["ymax"] <= 48
               for d in found)


@pytest.mark.slow
def test_inherit_from_teacher_gives_the_saved_student_the_teachers_decoder(coco, tmp_path):
    # learning rate 0: the one training step changes no weight, so the saved student is the inherited one
    teacher = _build("tiny-dfine", seed=3, id2label=load_coco(coco).id2label)
    teacher.save_pretrained(tmp_path / "teacher")
    _run(coco, tmp_path / "student", str(tmp_path / "teacher"), "tiny-dfine-student", "--inherit_from_teacher", "true",
         "--learning_rate", "0", "--max_steps", "1")
    saved = AutoModelForObjectDetection.from_pretrained(tmp_path / "student").state_dict()
    reference = teacher.state_dict()
    decoder = [name for name in saved if name.startswith("model.decoder.")]
    assert decoder and all(torch.equal(saved[name], reference[name]) for name in decoder)
    assert saved["model.backbone.model.embedder.stem1.convolution.weight"].shape != \
        reference["model.backbone.model.embedder.stem1.convolution.weight"].shape  # the student's own backbone


@pytest.mark.parametrize(("recipe", "teacher", "student"), [
    ("coco_rtdetrv2_r101_to_r18.yaml", "PekingU/rtdetr_v2_r101vd", "PekingU/rtdetr_v2_r18vd"),
    ("coco_dfine_x_to_s.yaml", "ustc-community/dfine-xlarge-coco", "ustc-community/dfine-small-coco"),
])
def test_the_hub_checkpoint_recipes_parse(recipe, teacher, student):
    model_args, data_args, args = cli.parse_arguments(
        ["--config", str(Path(__file__).resolve().parents[1] / "configs" / recipe), "--dataset", "/data/coco"])
    assert (model_args.task, args.teacher, model_args.student) == ("detection", teacher, student)
    assert args.method == "acamkd" and args.num_masks == 6 and args.distillation_points == ["neck1", "neck2", "neck3"]
    assert not args.inherit_from_teacher  # the students start from their COCO checkpoints
