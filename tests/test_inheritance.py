"""Inheritance (student starts from the teacher's neck and head): copied tensors equal the teacher's, the backbone and
mismatched tensors keep the student's values, and the report lists exactly what a hand analysis of each pair says."""

import pytest
import torch

from acamkd_hf.inheritance import InheritanceReport, find_backbone_prefix, inherit_from_teacher
from acamkd_hf.models import DETECTION_PRESETS

ID2LABEL = {0: "square", 1: "ellipse", 2: "triangle"}

# The tiny pairs differ only in the backbone (ResNet 32/64/128/256 vs 16/32/48/64). What reads the backbone's channels
# cannot be inherited, worked out by hand from each architecture: DETR's input projection of the last map (the bias
# is 64 wide in both); RT-DETR's three encoder input projections (1x1 conv, bias-free; their BatchNorms match);
# Deformable DETR's three 1x1 input projections and the stride-2 conv of the extra level, which also reads stage 4.
MISMATCHED = {
    "tiny-detr-resnet": {"model.input_projection.weight": ((64, 256, 1, 1), (64, 64, 1, 1))},
    "tiny-rtdetr-resnet": {
        "model.encoder_input_proj.0.0.weight": ((64, 64, 1, 1), (64, 32, 1, 1)),
        "model.encoder_input_proj.1.0.weight": ((64, 128, 1, 1), (64, 48, 1, 1)),
        "model.encoder_input_proj.2.0.weight": ((64, 256, 1, 1), (64, 64, 1, 1)),
    },
    "tiny-deformable-detr": {
        "model.input_proj.0.0.weight": ((64, 64, 1, 1), (64, 32, 1, 1)),
        "model.input_proj.1.0.weight": ((64, 128, 1, 1), (64, 48, 1, 1)),
        "model.input_proj.2.0.weight": ((64, 256, 1, 1), (64, 64, 1, 1)),
        "model.input_proj.3.0.weight": ((64, 256, 3, 3), (64, 64, 3, 3)),
    },
}


def _build(name, seed, **overrides):
    torch.manual_seed(seed)
    return DETECTION_PRESETS[name](ID2LABEL, **overrides)


def _state(model):
    """name -> tensor for every parameter and buffer, tied duplicates removed (what inheritance walks over)."""
    state = dict(model.named_parameters())
    state.update(model.named_buffers())
    return state


@pytest.mark.parametrize("teacher_name", list(MISMATCHED))
def test_tiny_pair_inherits_everything_but_the_backbone_and_its_readers(teacher_name):
    teacher = _build(teacher_name, seed=0)
    student = _build(teacher_name + "-student", seed=1)
    before = {name: tensor.detach().clone() for name, tensor in _state(student).items()}
    teacher_state = _state(teacher)

    report = inherit_from_teacher(student, teacher)

    backbone = {name for name in before if name.startswith("model.backbone.")}
    expected_inherited = [name for name in before if name not in backbone and name not in MISMATCHED[teacher_name]]
    assert report.backbone_prefix == "model.backbone"
    assert report.skipped_backbone == len(backbone) > 0
    assert report.missing_in_teacher == [] and report.excluded == []
    assert {name: (t, s) for name, t, s in report.shape_mismatch} == MISMATCHED[teacher_name]
    assert sorted(report.inherited) == sorted(expected_inherited)

    after = _state(student)
    for name in expected_inherited:
        assert torch.equal(after[name], teacher_state[name]), name
    for name in backbone | set(MISMATCHED[teacher_name]):
        assert torch.equal(after[name], before[name]), name
    # the copies are real: the inherited random weight matrices all differed before (different seeds; biases, norm
    # weights and zero-initialised layers start equal)
    matrices = [name for name in expected_inherited if before[name].dim() >= 2 and before[name].std() > 0]
    assert len(matrices) > 10
    assert all(not torch.equal(before[name], teacher_state[name]) for name in matrices)


def test_same_architecture_with_shared_backbone_reproduces_the_teacher():
    # Inherit into a student with the teacher's architecture and a copy of its backbone: every output must then be
    # the teacher's, i.e. nothing outside the backbone (parameters, buffers such as BatchNorm statistics) was missed.
    teacher = _build("tiny-rtdetr-resnet", seed=0)
    student = _build("tiny-rtdetr-resnet", seed=1)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    teacher.train()(pixel_values=x)  # move the BatchNorm running statistics away from their init
    teacher.eval()
    student.model.backbone.load_state_dict(teacher.model.backbone.state_dict())
    report = inherit_from_teacher(student, teacher)
    assert report.shape_mismatch == [] and report.missing_in_teacher == []
    with torch.no_grad():
        expected, got = teacher(pixel_values=x), student.eval()(pixel_values=x)
    assert torch.equal(got.logits, expected.logits)
    assert torch.equal(got.pred_boxes, expected.pred_boxes)


def test_tied_weights_stay_tied():
    # Deformable DETR ties its per-layer class/box heads to layer 0; inheritance copies the shared tensor once.
    teacher = _build("tiny-deformable-detr", seed=0)
    student = _build("tiny-deformable-detr-student", seed=1)
    inherit_from_teacher(student, teacher)
    assert student.class_embed[1].weight is student.class_embed[0].weight
    assert torch.equal(student.class_embed[1].weight, teacher.class_embed[1].weight)
    assert torch.equal(student.bbox_embed[1].layers[2].weight, teacher.bbox_embed[0].layers[2].weight)


def test_missing_in_teacher_and_exclusions():
    teacher = _build("tiny-detr-resnet", seed=0)
    student = _build("tiny-detr-resnet-student", seed=1, decoder_layers=3)
    before = {name: tensor.detach().clone() for name, tensor in _state(student).items()}
    report = inherit_from_teacher(student, teacher, exclude_prefixes=["class_labels_classifier", "bbox_predictor."])
    extra_layer = [name for name in before if name.startswith("model.decoder.layers.2.")]
    heads = ["class_labels_classifier.weight", "class_labels_classifier.bias"] + [
        name for name in before if name.startswith("bbox_predictor.")
    ]
    assert len(extra_layer) > 0
    assert report.missing_in_teacher == extra_layer
    assert sorted(report.excluded) == sorted(heads)
    for name in extra_layer + heads:
        assert torch.equal(_state(student)[name], before[name]), name
    assert "model.decoder.layers.1.mlp.fc1.weight" in report.inherited


def test_label_mismatch_refuses_to_copy_heads():
    teacher = _build("tiny-detr-resnet", seed=0)
    student = DETECTION_PRESETS["tiny-detr-resnet-student"]({0: "ellipse", 1: "square", 2: "triangle"})
    before = {name: tensor.detach().clone() for name, tensor in _state(student).items()}
    with pytest.raises(ValueError, match="Different order"):
        inherit_from_teacher(student, teacher)
    assert all(torch.equal(tensor, before[name]) for name, tensor in _state(student).items())


def test_summary_names_counts_and_first_names():
    report = InheritanceReport(
        inherited=["a.w", "a.b", "c.w", "d.w"],
        shape_mismatch=[("proj.w", (4, 8), (4, 2))],
        missing_in_teacher=[],
        skipped_backbone=7,
        backbone_prefix="model.backbone",
    )
    assert report.summary() == (
        "Inheritance: copied 4 of 5 non-backbone tensors from the teacher: a.w, a.b, c.w, ... (+1)\n"
        "  shape mismatch, kept the student's: 1: proj.w (teacher (4, 8) vs student (4, 2))\n"
        "  missing in the teacher, kept the student's: 0\n"
        "  backbone ('model.backbone') left as initialised: 7 tensors"
    )


def test_backbone_prefix_per_family():
    assert find_backbone_prefix(_build("tiny-detr-resnet", 0)) == "model.backbone"
    from acamkd_hf.models import SEGMENTATION_PRESETS

    assert find_backbone_prefix(SEGMENTATION_PRESETS["tiny-segformer"](ID2LABEL)) == "segformer"
    with pytest.raises(TypeError, match="No backbone prefix"):
        find_backbone_prefix(torch.nn.Linear(2, 2))


def test_the_control_row_inherits_when_the_distilled_student_does(tmp_path, monkeypatch):
    """--compare_student_alone with --inherit_from_teacher: the control starts from the teacher's neck and heads too
    (the benchmark's student_inherited), so the table's control differs from the distilled student by the imitation
    alone."""
    import acamkd_hf.trainer as trainer_module
    from acamkd_hf import cli

    calls = []
    original = trainer_module.inherit_from_teacher

    def recording(student, teacher):
        calls.append((id(student), id(teacher)))
        return original(student, teacher)

    monkeypatch.setattr(trainer_module, "inherit_from_teacher", recording)
    results = cli.run(["--task", "detection", "--output_dir", str(tmp_path / "student"), "--synthetic_dir",
                       str(tmp_path / "data"), "--synthetic_num_train", "8", "--synthetic_num_val", "4",
                       "--max_steps", "1", "--teacher_num_train_epochs", "1", "--per_device_train_batch_size", "4",
                       "--compare_student_alone", "true", "--inherit_from_teacher", "true", "--disable_tqdm", "true",
                       "--report_to", "none", "--save_strategy", "no"])
    assert len(calls) == 2 and calls[0][1] == calls[1][1] and calls[0][0] != calls[1][0]  # control + student
    assert results["student_alone"]["inherited_from_teacher"] is True


def test_a_cross_family_pair_is_said_to_be_one():
    # RT-DETR -> D-FINE share many names (D-FINE's decoder grew out of RT-DETR's): copied by name and shape, said so.
    teacher, student = _build("tiny-rtdetr-resnet", 1), _build("tiny-dfine-student", 0)
    report = inherit_from_teacher(student, teacher)
    assert report.families == ("RTDetrForObjectDetection", "DFineForObjectDetection")
    assert report.inherited and "different families (RTDetrForObjectDetection -> DFineForObjectDetection)" in report.summary()
    same = inherit_from_teacher(_build("tiny-rtdetr-resnet-student", 0), teacher)
    assert same.families is None and "different families" not in same.summary()
