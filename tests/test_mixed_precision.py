"""Mixed precision: the teacher runs under the student's autocast, the fusion attention in the compute dtype, the
selection units, masks and losses in float32 (CPU bf16 here; CUDA fp16/bf16 take the same code path)."""

import pytest
import torch

from acamkd_hf import DistillationArguments, DistillationTrainer
from acamkd_hf.acamkd_loss import ACAMKDLoss
from acamkd_hf.data import SegmentationTransforms, collate_segmentation, load_cityscapes, make_synthetic_cityscapes
from acamkd_hf.fusion import MAX_FACTORED_KEYS, FactoredFusion
from acamkd_hf.models import SEGMENTATION_PRESETS, default_image_processor

IMAGE_SIZE = (32, 64)


def _record_dtypes(module, name, seen):
    def hook(_, inputs, output):
        seen.setdefault(name, output.dtype if torch.is_tensor(output) else output.logits.dtype)

    return module.register_forward_hook(hook)


def _record_fusion_dtype(fusion, seen):
    """Records (forward hook) the dtype of what the fusion hands the masks (its attention weights, when factored)."""

    def hook(_, inputs, output):
        seen.setdefault("fusion", output.weights.dtype if isinstance(output, FactoredFusion) else output.dtype)
        seen.setdefault("factored", isinstance(output, FactoredFusion))

    return fusion.register_forward_hook(hook)


@pytest.mark.parametrize("size", [8, 17])  # 64 key tokens: the factored fusion; 289 (> MAX_FACTORED_KEYS): the kernel
def test_acamkd_loss_under_bf16_autocast_fuses_in_bf16_and_masks_and_losses_in_fp32(size):
    torch.manual_seed(0)
    loss = ACAMKDLoss(16, 32, num_masks=3, fusion_kv_reduction=1)  # the exact fusion: both paths by map size
    student, teacher = torch.randn(2, 16, size, size), torch.randn(2, 32, size, size)
    reference = loss(student, teacher)  # float32 throughout
    reference_masks = loss.masks(student, teacher)
    seen = {}
    _record_fusion_dtype(loss.fusion, seen)
    _record_dtypes(loss.align, "align", seen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(student, teacher)
        mixed_masks = loss.masks(student, teacher)
    assert seen["align"] == torch.bfloat16 and seen["fusion"] == torch.bfloat16  # the compute dtype
    assert seen["factored"] == (size * size <= MAX_FACTORED_KEYS)
    assert all(masks.dtype == torch.float32 for masks in mixed_masks.values())
    assert all(value.dtype == torch.float32 for value in mixed.values())
    # Same numbers up to bf16 rounding of the fused feature and the adapter (8 bits of mantissa).
    for term in ("channel", "spatial", "diversity", "loss"):
        torch.testing.assert_close(mixed[term], reference[term], rtol=3e-2, atol=1e-3, msg=term)
    for kind, masks in mixed_masks.items():
        torch.testing.assert_close(masks, reference_masks[kind], rtol=0, atol=2e-2, msg=kind)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic_cityscapes(
        tmp_path_factory.mktemp("synthetic"), num_train=4, num_val=2, image_size=IMAGE_SIZE, num_classes=4, seed=0
    )
    return load_cityscapes(root)


def test_bf16_training_runs_the_teacher_under_the_same_autocast(data, tmp_path):
    processor = default_image_processor(IMAGE_SIZE)
    train = data.dataset["train"].with_transform(
        SegmentationTransforms(processor, train=True, crop_size=IMAGE_SIZE, label_lookup=data.label_lookup)
    )
    torch.manual_seed(0)
    teacher = SEGMENTATION_PRESETS["tiny-segformer"](data.id2label)
    student = SEGMENTATION_PRESETS["tiny-segformer"](data.id2label)
    args = DistillationArguments(
        output_dir=str(tmp_path / "out"), bf16=True, use_cpu=True, per_device_train_batch_size=2, max_steps=2,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_pin_memory=False,
        distillation_points=["logits", "stage4"],
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train, data_collator=collate_segmentation,
        processing_class=processor,
    )  # fmt: skip
    seen = {}
    _record_dtypes(teacher.decode_head.classifier, "teacher", seen)
    _record_dtypes(student.decode_head.classifier, "student", seen)
    point = trainer.distillation_modules.points["logits"]
    _record_fusion_dtype(point.fusion, seen)
    mask_dtypes = set()
    activate = point.masking.activate  # scores -> masks, for every kind

    def recording_activate(scores):
        masks = activate(scores)
        mask_dtypes.add(masks.dtype)
        return masks

    point.masking.activate = recording_activate
    trainer.train()
    assert seen == {"teacher": torch.bfloat16, "student": torch.bfloat16, "fusion": torch.bfloat16, "factored": True}
    assert mask_dtypes == {torch.float32}
    # Master weights stay float32 (autocast, not a bf16 model); the logged terms are finite.
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    assert all(torch.isfinite(torch.tensor(entry["distill/logits/spatial"])) for entry in logged)
