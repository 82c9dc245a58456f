"""One contract, tested across every supported model family the way timm tests ``features_only`` over all its models.

For each family of :data:`acamkd_hf.families.FAMILIES` (its first ``tiny-*`` preset, random init, nothing
downloaded):

1. every advertised point is a ``(B, C, H, W)`` map whose size is the input's divided by an integer stride (the stride
   the README's generated table states), the same shape the dry-run probe reports;
2. the student learns at it: imitating the teacher at every point at once (MSE through its adapter), the distillation
   loss on a fixed batch goes down over a few optimizer steps;
3. a student of this family pairs with a teacher of ANOTHER family of the same task at the shared default points
   (``logits`` / the neck levels) under the default method (ACAM-KD): the loss is finite and reaches the student;
4. a saved student reloads with ``from_pretrained`` (same weights) and in ``pipeline()`` with its image processor.

A family without a ``tiny-*`` preset fails the first test: adding a family means adding its tiny preset.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForObjectDetection, AutoModelForSemanticSegmentation, pipeline

from acamkd_hf.distiller import Distiller, build_distillation_loss
from acamkd_hf.families import DETECTION_FAMILIES, SEGMENTATION_FAMILIES
from acamkd_hf.families.table import PROBE_SIDE, tiny_presets
from acamkd_hf.models import (
    DETECTION_PRESETS,
    SEGMENTATION_PRESETS,
    default_detection_image_processor,
    default_image_processor,
)
from acamkd_hf.settings import DistillationSettings
from acamkd_hf.taps import FeatureTaps, available_points, freeze_teacher, probe_feature_shapes, resolve_distillation_points

ID2LABEL = {i: f"class{i}" for i in range(4)}
SIDE = PROBE_SIDE  # the README's strides are measured at this side
TASKS = {
    "segmentation": (SEGMENTATION_FAMILIES, SEGMENTATION_PRESETS),
    "detection": (DETECTION_FAMILIES, DETECTION_PRESETS),
}
FAMILY_CASES = [(task, family) for task, (families, _) in TASKS.items() for family in families]


def build(task: str, family: str, seed: int):
    torch.manual_seed(seed)
    return TASKS[task][1][tiny_presets(task)[family]](ID2LABEL)


def batch(task: str, size: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(size, 3, SIDE, SIDE, generator=generator)
    if task == "segmentation":
        labels = torch.randint(0, len(ID2LABEL), (size, SIDE, SIDE), generator=generator)
    else:
        labels = [{"class_labels": torch.tensor([i % len(ID2LABEL)]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])}
                  for i in range(size)]
    return {"pixel_values": pixel_values, "labels": labels}


def distiller(student, teacher, points, method: str = "acamkd"):
    settings = DistillationSettings(method=method).resolved(points, num_masks=2)
    shapes = [probe_feature_shapes(model, points, (SIDE, SIDE)) for model in (student, teacher)]
    return Distiller(student, build_distillation_loss(settings, *shapes))


def teacher_features(teacher, points, pixel_values):
    taps = FeatureTaps(teacher, points)
    try:
        with torch.no_grad():
            return taps.collect(teacher(pixel_values=pixel_values))
    finally:
        taps.remove()


@pytest.mark.parametrize("task", list(TASKS))
def test_every_family_has_a_tiny_preset(task):
    families, _ = TASKS[task]
    assert sorted(tiny_presets(task)) == sorted(families), "a family without a tiny-* preset cannot be tested"


@pytest.mark.parametrize(("task", "family"), FAMILY_CASES)
def test_every_point_is_a_map_at_an_integer_stride(task, family):
    model = build(task, family, seed=0).eval()
    points = available_points(model)
    assert points, f"{family} advertises no point"
    probed = probe_feature_shapes(model, points, (SIDE, SIDE))
    taps = FeatureTaps(model, points)
    with torch.no_grad():
        features = taps.collect(model(pixel_values=batch(task)["pixel_values"]))
    taps.remove()
    for point in points:
        feature = features[point]
        assert feature.dim() == 4 and feature.shape[0] == 2, (point, feature.shape)
        assert tuple(feature.shape[1:]) == probed[point], point
        height, width = feature.shape[-2:]
        assert SIDE % height == 0 and SIDE // height == SIDE // width, f"{point}: {height}x{width} from {SIDE}"
    if task == "detection":
        assert any(point.startswith("neck") for point in points), "a detector's points start with its neck levels"
    else:
        assert points[0] == "logits"


@pytest.mark.parametrize(("task", "family"), FAMILY_CASES)
def test_the_student_learns_at_every_point(task, family):
    teacher = freeze_teacher(build(task, family, seed=1))
    student = build(task, family, seed=0).train()
    points = available_points(student)
    # MSE through its adapter: the imitation itself (ACAM-KD's adversarial masks push its total up on purpose)
    model = distiller(student, teacher, points, method="mse").train()
    inputs = batch(task)
    target = teacher_features(teacher, points, inputs["pixel_values"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        output = model(**inputs, teacher_features=target)
        loss = output.loss - output.distillation_terms["task"]  # the distillation part (the task term is detached)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.mark.parametrize(("task", "family"), FAMILY_CASES)
def test_a_teacher_of_another_family_pairs_at_the_shared_points(task, family):
    others = [other for other in TASKS[task][0] if other != family]
    teacher = freeze_teacher(build(task, others[FAMILY_CASES.index((task, family)) % len(others)], seed=1))
    student = build(task, family, seed=0).train()
    points = resolve_distillation_points(student, teacher, None)
    if task == "segmentation":
        assert points == ["logits"]
    else:  # the neck levels both have, from the finest: neck1, neck2, ... (every detector has at least neck1)
        assert points == [f"neck{i}" for i in range(1, len(points) + 1)] and points
    model = distiller(student, teacher, points).train()
    inputs = batch(task)
    output = model(**inputs, teacher_features=teacher_features(teacher, points, inputs["pixel_values"]))
    assert output.distillation_terms["distillation"].isfinite().all()
    (output.loss - output.distillation_terms["task"]).backward()  # the distillation part alone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.parametrize(("task", "family"), FAMILY_CASES)
def test_a_saved_student_reloads_and_runs_in_a_pipeline(task, family, tmp_path):
    model = build(task, family, seed=0).eval()
    model.save_pretrained(tmp_path)
    if task == "segmentation":
        processor, auto_class, pipeline_task = default_image_processor((SIDE, SIDE)), AutoModelForSemanticSegmentation, \
            "image-segmentation"
    else:
        processor, auto_class, pipeline_task = default_detection_image_processor(model, SIDE), \
            AutoModelForObjectDetection, "object-detection"
    processor.save_pretrained(tmp_path)
    reloaded = auto_class.from_pretrained(tmp_path)
    assert type(reloaded) is type(model)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
    runner = pipeline(pipeline_task, model=str(tmp_path))
    results = runner(image, threshold=0.0) if task == "detection" else runner(image)
    assert isinstance(results, list)
    assert {result["label"] for result in results} <= set(ID2LABEL.values())
