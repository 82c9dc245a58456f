"""Streaming mIoU: confusion matrix, Trainer `batch_eval_metrics` callable.

Golden values come from a plain-numpy per-class IoU written in this file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from acamkd_hf.metrics import (
    ConfusionMatrix,
    StreamingSegmentationMetrics,
    confusion_matrix,
    metrics_from_confusion_matrix,
)

K = 6
IGNORE = 255


def numpy_reference(pred: np.ndarray, ref: np.ndarray, num_classes: int, ignore: int = IGNORE) -> dict:
    """Per-class IoU / accuracy by direct pixel counting (no confusion matrix)."""
    valid = (ref != ignore) & (ref >= 0)
    ious, accs = [], []
    for c in range(num_classes):
        p, r = (pred == c) & valid, (ref == c) & valid
        inter, union = np.sum(p & r), np.sum(p | r)
        ious.append(inter / union if union else math.nan)
        accs.append(inter / r.sum() if r.sum() else math.nan)
    ious, accs = np.array(ious), np.array(accs)
    return {
        "mean_iou": float(np.nanmean(ious)),
        "mean_accuracy": float(np.nanmean(accs)),
        "overall_accuracy": float(np.sum((pred == ref) & valid) / valid.sum()),
        "per_category_iou": ious,
        "per_category_accuracy": accs,
    }


def random_maps(seed: int, shape=(4, 24, 40), num_classes=K):
    """Random predictions / references with ~15 % ignore pixels; class K-1 never appears (IoU must be NaN)."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, num_classes - 1, size=shape)
    # predictions agree with the reference 60 % of the time so IoUs are far from 0 and differ per class
    pred = np.where(rng.random(shape) < 0.6, ref, rng.integers(0, num_classes - 1, size=shape))
    ref = np.where(rng.random(shape) < 0.15, IGNORE, ref)
    return pred, ref


def assert_matches(result: dict, expected: dict):
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key
    np.testing.assert_allclose(
        np.array(result["per_category_iou"], dtype=float), expected["per_category_iou"], atol=1e-12
    )
    np.testing.assert_allclose(
        np.array(result["per_category_accuracy"], dtype=float), expected["per_category_accuracy"], atol=1e-12
    )


def test_confusion_matrix_counts_pairs():
    pred, ref = random_maps(0)
    matrix = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(ref), K, IGNORE)
    assert matrix.dtype == torch.int64 and matrix.shape == (K, K)
    expected = np.zeros((K, K), dtype=np.int64)
    for r, p in zip(ref.ravel(), pred.ravel()):
        if r != IGNORE:
            expected[r, p] += 1
    np.testing.assert_array_equal(matrix.numpy(), expected)


def test_several_batches_equal_one_batch_and_numpy():
    batches = [random_maps(seed) for seed in range(3)]
    streamed = ConfusionMatrix(K, IGNORE)
    for pred, ref in batches:
        streamed.update(torch.from_numpy(pred), torch.from_numpy(ref))
    whole = ConfusionMatrix(K, IGNORE)
    all_pred = np.concatenate([b[0] for b in batches])
    all_ref = np.concatenate([b[1] for b in batches])
    whole.update(torch.from_numpy(all_pred), torch.from_numpy(all_ref))

    expected = numpy_reference(all_pred, all_ref, K)
    assert math.isnan(expected["per_category_iou"][K - 1])  # the absent class exercises the NaN path
    assert_matches(streamed.compute(), expected)
    assert_matches(whole.compute(), expected)
    assert torch.equal(streamed.matrix, whole.matrix)

    streamed.reset()
    assert int(streamed.matrix.sum()) == 0


def test_padding_is_ignored_and_bad_classes_raise():
    pred = torch.tensor([[0, 1, 1, 2]])
    ref = torch.tensor([[0, -100, 255, 2]])  # -100: Trainer's cross-process label padding
    cm = ConfusionMatrix(3)
    cm.update(pred, ref)
    assert int(cm.matrix.sum()) == 2 and cm.compute()["overall_accuracy"] == 1.0
    with pytest.raises(ValueError, match="num_classes"):
        cm.update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="predicted classes"):
        cm.update(torch.tensor([5]), torch.tensor([1]))


def test_full_resolution_map_is_counted_in_int64():
    rng = np.random.default_rng(0)
    ref = torch.from_numpy(rng.integers(0, 19, size=(1, 1024, 2048), dtype=np.int64))
    ref[:, :100] = 255
    pred = torch.zeros_like(ref)
    cm = ConfusionMatrix(19)
    cm.update(pred, ref)
    assert cm.matrix.dtype == torch.int64
    assert int(cm.matrix.sum()) == 924 * 2048
    assert int(cm.matrix[:, 0].sum()) == 924 * 2048  # everything predicted as class 0


class _EvalPrediction:
    def __init__(self, predictions, label_ids):
        self.predictions, self.label_ids = predictions, label_ids


def test_streaming_metric_upsamples_and_matches_numpy():
    id2label = {0: "road", 1: "sidewalk", 2: "traffic light", 3: "car", 4: "sky", 5: "bus"}
    metric = StreamingSegmentationMetrics(id2label)
    torch.manual_seed(0)
    all_pred, all_ref = [], []
    for step in range(3):
        logits = torch.randn(2, K - 1, 8, 12)
        logits = torch.cat([logits, torch.full((2, 1, 8, 12), -1e4)], dim=1)  # class 5 is never predicted
        _, ref = random_maps(step, shape=(2, 32, 48))
        # reference upsampling done here with torch's own interpolate, independently of the metric's code path
        all_pred.append(F.interpolate(logits, size=(32, 48), mode="bilinear", align_corners=False).argmax(1).numpy())
        all_ref.append(ref)
        # the three ways predictions arrive: tensor, tuple (logits first, e.g. with hidden states), numpy
        predictions = [logits, (logits, torch.zeros(1)), logits.numpy()][step]
        out = metric(_EvalPrediction(predictions, torch.from_numpy(ref)), compute_result=step == 2)
        if step < 2:
            assert out == {}
    expected = numpy_reference(np.concatenate(all_pred), np.concatenate(all_ref), K)
    assert set(out) == {"mean_iou", "mean_accuracy", "overall_accuracy"} | {
        "iou_road",
        "iou_sidewalk",
        "iou_traffic_light",
        "iou_car",
        "iou_sky",
        "iou_bus",
    }
    assert out["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    assert out["overall_accuracy"] == pytest.approx(expected["overall_accuracy"], abs=1e-12)
    assert out["iou_traffic_light"] == pytest.approx(expected["per_category_iou"][2], abs=1e-12)
    assert math.isnan(out["iou_bus"])
    # state was reset: one more batch on its own gives that batch's numbers only
    logits = torch.randn(2, K, 32, 48)
    _, ref = random_maps(7, shape=(2, 32, 48))
    out = metric(_EvalPrediction(logits, torch.from_numpy(ref)), compute_result=True)
    assert out["mean_iou"] == pytest.approx(numpy_reference(logits.argmax(1).numpy(), ref, K)["mean_iou"], abs=1e-12)


def test_summed_matrices_give_the_hand_computed_numbers():
    matrices = [[[3, 1, 0], [0, 4, 0], [0, 0, 0]], [[1, 0, 0], [2, 2, 0], [0, 0, 0]]]
    result = metrics_from_confusion_matrix(sum(np.array(m) for m in matrices))
    # summed matrix [[4,1,0],[2,6,0],[0,0,0]]: IoU0 = 4/(5+6-4) = 4/7, IoU1 = 6/(8+7-6) = 6/9, class 2 absent
    assert result["per_category_iou"][0] == pytest.approx(4 / 7)
    assert result["per_category_iou"][1] == pytest.approx(6 / 9)
    assert math.isnan(result["per_category_iou"][2])
    assert result["mean_iou"] == pytest.approx((4 / 7 + 6 / 9) / 2)
    assert result["overall_accuracy"] == pytest.approx(10 / 13)
    assert result["mean_accuracy"] == pytest.approx((4 / 5 + 6 / 8) / 2)


def test_trainer_batch_eval_metrics_contract(tmp_path):
    """Trainer(batch_eval_metrics=True) calls the metric per batch as documented, and the result is right."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = SegformerConfig(
        num_labels=K, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16, sr_ratios=[4, 2, 1, 1],
    )  # fmt: skip
    model = SegformerForSemanticSegmentation(config).eval()
    rng = np.random.default_rng(0)
    samples = [
        {"pixel_values": torch.from_numpy(rng.normal(size=(3, 32, 64)).astype(np.float32)),
         "labels": torch.from_numpy(np.where(rng.random((32, 64)) < 0.1, IGNORE, rng.integers(0, K, (32, 64))))}
        for _ in range(5)
    ]  # fmt: skip

    class Recording(StreamingSegmentationMetrics):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = []

        def __call__(self, eval_pred, compute_result=False):
            self.calls.append((type(eval_pred.predictions), tuple(eval_pred.predictions.shape),
                               tuple(eval_pred.label_ids.shape), compute_result))  # fmt: skip
            return super().__call__(eval_pred, compute_result=compute_result)

    from acamkd_hf.data import collate_segmentation

    metric = Recording({i: f"class {i}" for i in range(K)})
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, batch_eval_metrics=True, use_cpu=True,
        report_to=[], remove_unused_columns=False, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, eval_dataset=samples, data_collator=collate_segmentation,
                      compute_metrics=metric)  # fmt: skip
    result = trainer.evaluate()

    # 5 samples, batch 2: three calls, logits at 1/4 resolution, labels at full resolution, last one computes
    assert metric.calls == [
        (torch.Tensor, (2, K, 8, 16), (2, 32, 64), False),
        (torch.Tensor, (2, K, 8, 16), (2, 32, 64), False),
        (torch.Tensor, (1, K, 8, 16), (1, 32, 64), True),
    ]
    with torch.no_grad():
        logits = model(pixel_values=torch.stack([s["pixel_values"] for s in samples])).logits
    pred = F.interpolate(logits, size=(32, 64), mode="bilinear", align_corners=False).argmax(1).numpy()
    expected = numpy_reference(pred, torch.stack([s["labels"] for s in samples]).numpy(), K)
    assert result["eval_mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-9)
    assert result["eval_overall_accuracy"] == pytest.approx(expected["overall_accuracy"], abs=1e-9)
    assert result["eval_iou_class_3"] == pytest.approx(expected["per_category_iou"][3], abs=1e-9)
