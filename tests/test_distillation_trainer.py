"""DistillationTrainer invariances and guarantees on tiny models and a tiny synthetic Cityscapes-layout set:
what reaches the student, what must not change, accumulation and resume invariance, saving only the student, and
the start-up errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSemanticSegmentation

from acamkd_hf import DistillationArguments, DistillationTrainer
from acamkd_hf.checkpointing import DISTILLATION_MODULES_NAME
from acamkd_hf.data import (
    SegmentationTransforms,
    collate_segmentation,
    load_cityscapes,
    make_synthetic_cityscapes,
)
from acamkd_hf.models import SEGMENTATION_PRESETS, default_image_processor

IMAGE_SIZE = (32, 64)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic_cityscapes(
        tmp_path_factory.mktemp("synthetic"), num_train=16, num_val=4, image_size=IMAGE_SIZE, num_classes=4, seed=0
    )
    return load_cityscapes(root)


def _datasets(data, *, augment: bool, no_ignore: bool = False):
    lookup = data.label_lookup
    if no_ignore:
        # Every pixel labelled: per-image cross-entropy means then weigh every image equally, which is what makes
        # a batch of 8 and 8 accumulated batches of 1 the same objective.
        lookup = np.where(lookup == 255, 0, lookup).astype(np.uint8)
    processor = default_image_processor(IMAGE_SIZE)
    train_tf = SegmentationTransforms(
        processor,
        train=True,
        crop_size=IMAGE_SIZE,
        scale_range=(0.75, 1.5) if augment else (1.0, 1.0),
        hflip=augment,
        label_lookup=lookup,
    )
    eval_tf = SegmentationTransforms(processor, train=False, label_lookup=lookup)
    return data.dataset["train"].with_transform(train_tf), data.dataset["validation"].with_transform(eval_tf), processor


def _segformer_without_batch_statistics(id2label):
    """Tiny SegFormer with every sample processed independently: no dropout, and the decode head's one BatchNorm
    (SegFormer is otherwise LayerNorm-only) replaced by an identity, since batch statistics of 8 images differ from
    those of 1."""
    model = SEGMENTATION_PRESETS["tiny-segformer"](
        id2label, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0, drop_path_rate=0.0
    )
    model.decode_head.batch_norm = torch.nn.Identity()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return model


def _args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_pin_memory=False,
    )
    values.update(overrides)
    return DistillationArguments(**values)


def _state(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _make(data, tmp_path, *, student=None, teacher=None, augment=True, no_ignore=False, **overrides):
    torch.manual_seed(0)
    teacher = teacher or SEGMENTATION_PRESETS["tiny-deeplabv3-resnet"](data.id2label)
    student = student or SEGMENTATION_PRESETS["tiny-deeplabv3-mobilenetv2-timm"](data.id2label)
    train, evaluation, processor = _datasets(data, augment=augment, no_ignore=no_ignore)
    args = _args(tmp_path, **overrides)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher if args.method != "none" else None,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collate_segmentation,
        processing_class=processor,
    )
    return trainer, teacher


# ----------------------------------------------------------------------------------------------- what changes
def test_teacher_is_bit_identical_and_everything_trained_changes(data, tmp_path):
    trainer, teacher = _make(data, tmp_path, distillation_points=["logits", "stage4"])
    teacher.train()  # even if someone flips it, the trainer keeps the teacher in eval (BatchNorm stats frozen)
    teacher_before = _state(teacher)
    student_before = _state(trainer.student)
    modules_before = _state(trainer.distillation_modules)
    trainer.train()

    for name, tensor in _state(teacher).items():
        assert torch.equal(tensor, teacher_before[name]), f"teacher changed: {name}"
    assert not any(p.requires_grad for p in teacher.parameters())

    student_after = _state(trainer.student)
    changed = [n for n, t in student_after.items() if t.is_floating_point() and not torch.equal(t, student_before[n])]
    assert len(changed) > 0.8 * sum(t.is_floating_point() for t in student_after.values())

    # The key projection's bias cannot train: it adds q.b_k to every logit of a query's row, which the softmax
    # ignores, so its gradient is zero up to rounding (whether rounding moves it depends on the BLAS build).
    for name, parameter in trainer.distillation_modules.named_parameters():
        if name.endswith("fusion.key.bias"):
            assert torch.allclose(parameter.detach(), modules_before[name], atol=1e-6), f"key bias moved: {name}"
            continue
        assert not torch.equal(parameter.detach(), modules_before[name]), f"distillation module did not train: {name}"


def test_every_loss_term_is_logged_per_point(data, tmp_path):
    trainer, _ = _make(data, tmp_path, distillation_points=["logits", "stage3"])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    expected = {"task_loss", "distillation_loss"} | {
        f"distill/{point}/{term}" for point in ("logits", "stage3")
        for term in ("loss", "channel", "spatial", "diversity", "mask_objective")  # the default's adversarial masks
    }
    assert expected <= set(logged[0])
    entry = logged[-1]
    # The terms add up: total = task + distillation; distillation = sum over points of each point's total.
    assert entry["distillation_loss"] == pytest.approx(entry["distill/logits/loss"] + entry["distill/stage3/loss"], rel=1e-4)
    assert entry["distill/logits/loss"] == pytest.approx(
        entry["distill/logits/channel"] + entry["distill/logits/spatial"] + entry["distill/logits/diversity"]
        + entry["distill/logits/mask_objective"], rel=1e-4
    )


def test_method_none_trains_the_student_alone(data, tmp_path):
    trainer, _ = _make(data, tmp_path, method="none")
    assert trainer.teacher is None and trainer.distillation_modules is None
    before = _state(trainer.student)
    trainer.train()
    assert "distillation_loss" not in trainer.state.log_history[0]
    assert any(not torch.equal(t, before[n]) for n, t in _state(trainer.student).items() if t.is_floating_point())


# ----------------------------------------------------------------------------------------------- invariances
def _train_8x1_and_1x8(data, tmp_path, **settings) -> list[tuple[dict, dict, dict]]:
    """Student, distillation modules and first log after 2 updates, for per-device batch 8 x accumulation 1 and
    batch 1 x accumulation 8 from the same start."""
    results = []
    for batch, accumulation in ((8, 1), (1, 8)):
        torch.manual_seed(0)
        student = _segformer_without_batch_statistics(data.id2label)
        trainer, _ = _make(
            data,
            tmp_path / f"{batch}x{accumulation}",
            student=student,
            augment=False,
            no_ignore=True,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=2,
            optim="sgd",
            learning_rate=0.05,
            lr_scheduler_type="constant",
            distillation_points=["logits", "stage2"],
            mask_ramp_steps=2,  # the adversarial reversal ramps within the 2 updates: its clock is tested too
            **settings,
        )
        trainer.train()
        results.append((_state(trainer.student), _state(trainer.distillation_modules), trainer.state.log_history[0]))
    return results


def test_gradient_accumulation_1x8_equals_8x1(data, tmp_path):
    """Per-device batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same weights after 2 updates.

    SegFormer student without BatchNorm (batch statistics would differ) or dropout, no augmentation, no
    ignore pixels (so every image weighs the same in the task loss), SGD, and ACAM-KD's default settings: the
    standardisation's statistics per image and the adversarial ramp counted in optimizer updates keep the update
    independent of the per-device batch. Tolerance 1e-5: only the summation order differs."""
    (student_a, modules_a, log_a), (student_b, modules_b, log_b) = _train_8x1_and_1x8(data, tmp_path)
    initial = _state(_segformer_without_batch_statistics(data.id2label))
    assert any(not torch.equal(student_a[n], t) for n, t in initial.items() if n in student_a)
    for name in student_a:
        torch.testing.assert_close(student_a[name], student_b[name], atol=1e-5, rtol=1e-4, msg=name)
    for name in modules_a:
        torch.testing.assert_close(modules_a[name], modules_b[name], atol=1e-5, rtol=1e-4, msg=name)
    assert log_a["loss"] == pytest.approx(log_b["loss"], rel=1e-4)


def test_gradient_accumulation_with_batch_statistics_is_not_invariant(data, tmp_path):
    """The control of the test above: with the standardisation's statistics over the batch (PKD's, as BatchNorm)
    the same comparison fails, so the equality above is the per-image statistics' doing."""
    (student_a, _, _), (student_b, _, _) = _train_8x1_and_1x8(data, tmp_path, standardize_over="batch")
    largest = max((student_a[name] - student_b[name]).abs().max().item() for name in student_a)
    assert largest > 1e-4


@pytest.mark.parametrize("save_steps", [4, 3], ids=["at-epoch-end", "mid-epoch"])
def test_resume_equals_uninterrupted(data, tmp_path, save_steps):
    """8 steps in one go (4 per epoch, saving every `save_steps`) == resuming the checkpoint of step `save_steps`
    for the rest: student, distillation modules, optimizer, scheduler and the random augmentations all restored.
    Mid-epoch is the hard case: the Trainer restores the global RNG only after the first resumed batches were
    read, so augmentations must not depend on it (acamkd_hf.seeding)."""
    common = dict(max_steps=8, save_strategy="steps", save_steps=save_steps, distillation_points=["logits", "stage4"],
                  lr_scheduler_type="linear", warmup_steps=2)
    straight, _ = _make(data, tmp_path, **common)
    straight.train()
    checkpoint = tmp_path / "out" / f"checkpoint-{save_steps}"
    assert (checkpoint / DISTILLATION_MODULES_NAME).is_file()

    resumed, _ = _make(data, tmp_path, **{**common, "output_dir": str(tmp_path / "resumed")})
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for module in ("student", "distillation_modules"):
        expected, got = _state(getattr(straight, module)), _state(getattr(resumed, module))
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-6, msg=f"{module}.{name}")
    assert resumed.state.log_history[-1]["train_loss"] is not None
    # A wrong resume would also change the logged losses of steps 5..8.
    straight_losses = [e["loss"] for e in straight.state.log_history if "loss" in e][save_steps:]
    resumed_losses = [e["loss"] for e in resumed.state.log_history if "loss" in e and e["step"] > save_steps]
    assert resumed_losses == pytest.approx(straight_losses, rel=1e-5)


# ----------------------------------------------------------------------------------------------- saving
def test_saved_folder_is_the_student_only(data, tmp_path):
    trainer, _ = _make(data, tmp_path, save_strategy="steps", save_steps=3)
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    assert not (out / DISTILLATION_MODULES_NAME).exists()  # the artifact is the student, nothing else
    assert (out / "checkpoint-3" / DISTILLATION_MODULES_NAME).is_file()  # checkpoints can resume distillation
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == trainer.student.config.model_type
    loaded = AutoModelForSemanticSegmentation.from_pretrained(out)
    for name, tensor in trainer.student.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in trainer.student.parameters())


# ----------------------------------------------------------------------------------------------- bad input
def test_wrong_distillation_point_lists_the_available_ones(data, tmp_path):
    with pytest.raises(ValueError, match=r"'stage9'.*available: logits, stage1, stage2, stage3, stage4"):
        _make(data, tmp_path, distillation_points=["stage9"])


def test_different_label_sets_fail_at_the_logits_naming_both(data, tmp_path):
    other = dict(data.id2label)
    other[0] = "not-" + other[0]
    teacher = SEGMENTATION_PRESETS["tiny-deeplabv3-resnet"](other)
    with pytest.raises(ValueError, match=r"the teacher '.*' and the student have different label sets, and the "
                                         r"distillation point logits compares class outputs: .*Only in teacher: 'not-"):
        _make(data, tmp_path, teacher=teacher)


def test_different_label_sets_are_allowed_at_feature_points_with_one_warning(data, tmp_path, caplog):
    """A teacher with other classes can still teach features (backbone stages): one warning line, no error."""
    other = {i: f"other{i}" for i in range(len(data.id2label) + 3)}
    teacher = SEGMENTATION_PRESETS["tiny-deeplabv3-resnet"](other)
    with caplog.at_level("WARNING", logger="acamkd_hf.models.labels"):
        trainer, _ = _make(data, tmp_path, teacher=teacher, distillation_points=["stage4"])
    [line] = [r.getMessage() for r in caplog.records if r.name == "acamkd_hf.models.labels"]
    assert line == (f"the teacher '{type(teacher).__name__}' has other classes than the student ({len(other)} vs "
                    f"{len(data.id2label)}): distilling its features at stage4 only; its class outputs are not used.")
    assert trainer.distillation_settings.distillation_points == ["stage4"]


def test_distillation_without_a_teacher_is_refused(data, tmp_path):
    train, _, _ = _datasets(data, augment=False)
    student = SEGMENTATION_PRESETS["tiny-deeplabv3-mobilenetv2-timm"](data.id2label)
    with pytest.raises(ValueError, match="needs a teacher_model"):
        DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=train)


def test_unknown_method_and_switches_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--method 'kd' is not one of: acamkd, mse, mgd, cwd, pkd, none"):
        _args(tmp_path, method="kd")
    with pytest.raises(ValueError, match="--fusion_mode"):
        _args(tmp_path, fusion_mode="student")


@pytest.mark.parametrize("method", ["mse", "mgd", "cwd", "pkd"])
def test_baselines_train_through_the_same_trainer(data, tmp_path, method):
    trainer, _ = _make(data, tmp_path, method=method, max_steps=2)
    before = _state(trainer.distillation_modules)
    trainer.train()
    assert f"distill/logits/{method}" in trainer.state.log_history[0]
    assert any(not torch.equal(t, before[n]) for n, t in _state(trainer.distillation_modules).items())



@pytest.mark.parametrize(
    "teacher_name,student_name",
    [
        ("tiny-deeplabv3-resnet", "tiny-segformer"),  # CNN teacher -> transformer student
        ("tiny-segformer", "tiny-deeplabv3-mobilenetv2-timm"),  # transformer -> CNN
        ("tiny-upernet", "tiny-mobilenetv2-hf-deeplabv3"),  # full-resolution logits -> stride-8 logits
        ("tiny-mobilenetv2-hf-deeplabv3", "tiny-upernet"),  # stride-8 teacher -> full-resolution student
    ],
)
def test_any_family_pairs_with_any_other(data, tmp_path, teacher_name, student_name):
    teacher = SEGMENTATION_PRESETS[teacher_name](data.id2label)
    student = SEGMENTATION_PRESETS[student_name](data.id2label)
    trainer, _ = _make(data, tmp_path, teacher=teacher, student=student, max_steps=1,
                       distillation_points=["logits", "stage3"])
    before = _state(trainer.student)
    trainer.train()
    assert {"distill/logits/spatial", "distill/stage3/channel"} <= set(trainer.state.log_history[0])
    assert any(not torch.equal(t, before[n]) for n, t in _state(trainer.student).items() if t.is_floating_point())


def test_mask_normalizer_reaches_every_point_and_small_terms_are_logged_with_significant_digits(data, tmp_path):
    trainer, _ = _make(data, tmp_path, distillation_points=["logits", "stage4"], mask_normalizer="sum_sq", max_steps=1)
    assert {point.mask_normalizer for point in trainer.distillation_modules.points.values()} == {"sum_sq"}
    assert trainer.distillation_settings.mask_normalizer == "sum_sq"
    trainer._term_sums, trainer._term_steps = {"logits/spatial_mask_mean": torch.tensor(3.2e-9)}, 1
    logs = {"loss": 1.0}
    trainer.log(logs)
    assert logs["distill/logits/spatial_mask_mean"] == pytest.approx(3.2e-9, rel=1e-5)  # not rounded to 0
    with pytest.raises(ValueError, match="--mask_normalizer 'mean' is not one of: sum, sum_sq"):
        _args(tmp_path, mask_normalizer="mean")


def test_points_at_different_strides_are_paired_with_one_warning(data, tmp_path, caplog):
    # At this input: DeepLabV3's stage3 is dilated (stride 8), SegFormer's is at stride 16; both stage2s at stride 8.
    student = SEGMENTATION_PRESETS["tiny-segformer"](data.id2label)
    with caplog.at_level("WARNING", logger="acamkd_hf.trainer"):
        _make(data, tmp_path, student=student, distillation_points=["stage2", "stage3"], method="mse")
    lines = [r.getMessage() for r in caplog.records if r.name == "acamkd_hf.trainer" and "different strides" in r.getMessage()]
    height, width = IMAGE_SIZE
    assert lines == [f"distillation point stage3: the student's map is {height // 16}x{width // 16} and the teacher's "
                     f"{height // 8}x{width // 8} for the same input: maps of different strides (pyramid levels) are "
                     "paired, the student's resized to the teacher's. Name points at the same stride (the README's "
                     "table of families lists them) if that is not intended."]
