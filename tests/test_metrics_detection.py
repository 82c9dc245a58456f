"""COCO mAP: pycocotools wiring, the streaming Trainer metric.

Golden values are worked out by hand in this file (IoUs from box arithmetic, APs from COCO's 101-point
interpolation), or computed by calling pycocotools directly with predictions decoded here in numpy.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformers import DetrImageProcessor, Trainer, TrainingArguments
from transformers.utils import ModelOutput

from acamkd_hf.metrics import (
    COCO_METRIC_KEYS,
    CocoDetectionMetrics,
    coco_eval,
    detection_labels_for_metrics,
)

# --------------------------------------------------------------------------------------------------------------
# helpers (independent of the code under test)


def gt_dict(images: list[tuple[int, int, int]], boxes: list[tuple[int, int, list[float]]], iscrowd=()) -> dict:
    """COCO ground truth: images (id, width, height); boxes (image_id, category_id, [x, y, w, h])."""
    crowd = set(iscrowd)
    categories = sorted({c for _, c, _ in boxes} | {3, 7, 11})
    return {
        "images": [{"id": i, "width": w, "height": h} for i, w, h in images],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": list(b), "area": b[2] * b[3],
             "iscrowd": int(k in crowd)}
            for k, (i, c, b) in enumerate(boxes)
        ],  # fmt: skip
        "categories": [{"id": c, "name": f"cat{c}"} for c in categories],
    }


def iou_xywh(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def direct_cocoeval(gt: dict, results: list[dict]) -> dict:
    """pycocotools' own summarize() numbers (stats 0-5 and 8) for the metric keys."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes([dict(r) for r in results]), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return dict(zip(COCO_METRIC_KEYS, [float(stats[i]) for i in (0, 1, 2, 3, 4, 5, 8)]))


def decode_detr_numpy(logits: np.ndarray, boxes: np.ndarray, sizes, label_to_category, image_ids) -> list[dict]:
    """DETR post-processing in numpy: softmax, best real class per query, cxcywh -> xywh in pixels."""
    results = []
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    prob = exp / exp.sum(-1, keepdims=True)
    for b, image_id in enumerate(image_ids):
        h, w = sizes[b]
        scores = prob[b, :, :-1].max(-1)
        labels = prob[b, :, :-1].argmax(-1)
        order = np.argsort(-scores, kind="stable")[:100]
        for q in order:
            cx, cy, bw, bh = boxes[b, q]
            results.append({"image_id": int(image_id), "category_id": label_to_category[int(labels[q])],
                            "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h],
                            "score": float(scores[q])})  # fmt: skip
    return results


@dataclass
class _EvalPrediction:
    predictions: object
    label_ids: object


def detr_logits(labels: list[int], num_queries: int, num_classes: int) -> torch.Tensor:
    """(Q, C + 1) logits: query i confidently predicts labels[i], the other queries "no object"."""
    logits = torch.full((num_queries, num_classes + 1), -8.0)
    logits[:, num_classes] = 8.0
    for q, label in enumerate(labels):
        logits[q, num_classes] = -8.0
        logits[q, label] = 8.0
    return logits


def to_cxcywh(box, width, height) -> list[float]:
    x, y, w, h = box
    return [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]


# --------------------------------------------------------------------------------------------------------------
# COCOeval wiring on hand-made cases


def test_perfect_predictions_give_one_in_every_size_range():
    # small (100 px^2), medium (50x50 = 2500), large (120x100 = 12000 > 96^2) boxes, two categories, two images
    boxes = [
        (1, 3, [10, 10, 10, 10]),
        (1, 7, [40, 40, 50, 50]),
        (2, 7, [5, 5, 120, 100]),
        (2, 3, [150, 150, 20, 12]),
    ]
    gt = gt_dict([(1, 200, 200), (2, 200, 200)], boxes)
    detections = [{"image_id": i, "category_id": c, "bbox": b, "score": 0.9} for i, c, b in boxes]
    result = coco_eval(gt, detections)
    assert set(result) == set(COCO_METRIC_KEYS)
    assert result == pytest.approx(dict.fromkeys(COCO_METRIC_KEYS, 1.0), abs=1e-12)
    # the (N, 7) array form gives the same
    rows = np.array([[i, *b, 0.9, c] for i, c, b in boxes], dtype=np.float64)
    assert coco_eval(gt, rows) == pytest.approx(dict.fromkeys(COCO_METRIC_KEYS, 1.0), abs=1e-12)


def test_known_shift_gives_the_hand_computed_ap():
    # A 13 x 20 box shifted by 3 px: IoU = (10 * 20) / (16 * 20) = 0.625, between the thresholds 0.60 and 0.65.
    gt_box = [20.0, 30.0, 13.0, 20.0]
    shifted = [23.0, 30.0, 13.0, 20.0]
    assert iou_xywh(gt_box, shifted) == pytest.approx(0.625)
    gt = gt_dict([(1, 100, 100)], [(1, 3, gt_box)])
    result = coco_eval(gt, [{"image_id": 1, "category_id": 3, "bbox": shifted, "score": 0.8}])
    # matched (AP 1) at IoU thresholds 0.50, 0.55, 0.60; missed (AP 0) at 0.65 ... 0.95: mean 3/10
    assert result["map"] == pytest.approx(0.3)
    assert result["map_50"] == pytest.approx(1.0)
    assert result["map_75"] == pytest.approx(0.0)
    assert result["mar_100"] == pytest.approx(0.3)
    assert result["map_small"] == pytest.approx(0.3)  # area 260 < 32^2
    assert result["map_medium"] == -1.0 and result["map_large"] == -1.0  # no ground truth of those sizes


def test_precision_interpolation_matches_hand_computation():
    # One category, two ground-truth boxes; detections by score: TP, FP (far away), TP.
    # PR points: (R 0.5, P 1), (R 0.5, P 0.5), (R 1, P 2/3); COCO's envelope gives P = 1 up to R = 0.5 and 2/3 after.
    # Over the 101 recall points 0, 0.01, ..., 1: 51 points (0 ... 0.50) at 1 and 50 points at 2/3.
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    gt = gt_dict([(1, 300, 300)], [(1, 7, [10, 10, 40, 40]), (1, 7, [100, 100, 40, 40])])
    detections = [
        {"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [200, 200, 40, 40], "score": 0.8},
        {"image_id": 1, "category_id": 7, "bbox": [100, 100, 40, 40], "score": 0.7},
    ]
    result = coco_eval(gt, detections)
    assert result["map"] == pytest.approx(expected)
    assert result["map_50"] == pytest.approx(expected)
    assert result["mar_100"] == pytest.approx(1.0)
    assert result == pytest.approx(direct_cocoeval(gt, detections))


def test_max_detections_limits_what_is_scored():
    # Twelve boxes of one category, all detected exactly, scores descending. At 10 detections per image only the ten
    # best count: recall 10/12 at precision 1, i.e. the 84 recall points 0 ... 0.83 of 101 at 1, the rest at 0.
    boxes = [(1, 7, [10 + 25 * (k % 6), 10 + 25 * (k // 6), 20, 20]) for k in range(12)]
    gt = gt_dict([(1, 300, 300)], boxes)
    detections = [
        {"image_id": 1, "category_id": 7, "bbox": box, "score": 0.9 - 0.01 * k} for k, (_, _, box) in enumerate(boxes)
    ]
    assert coco_eval(gt, detections)["map"] == pytest.approx(1.0)
    result = coco_eval(gt, detections, max_detections=10)
    assert result["map"] == pytest.approx(84 / 101) and result["map_50"] == pytest.approx(84 / 101)
    assert result["mar_100"] == pytest.approx(10 / 12)


def test_crowd_regions_are_ignored_not_missed():
    # a crowd box: a detection on it is neither a TP nor a FP, and nobody must detect it
    gt = gt_dict([(1, 200, 200)], [(1, 3, [10, 10, 30, 30]), (1, 3, [100, 100, 60, 60])], iscrowd=[1])
    detections = [
        {"image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "score": 0.9},
        {"image_id": 1, "category_id": 3, "bbox": [100, 100, 60, 60], "score": 0.5},
    ]
    assert coco_eval(gt, detections)["map"] == pytest.approx(1.0)


def test_no_predictions_give_zeros_with_a_warning(caplog):
    from pycocotools.coco import COCO

    gt = gt_dict([(1, 100, 100)], [(1, 3, [10, 10, 20, 20])])
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        with pytest.raises(IndexError):  # why the guard exists
            coco.loadRes([])
    with caplog.at_level(logging.WARNING, logger="acamkd_hf.metrics.detection"):
        assert coco_eval(gt, []) == dict.fromkeys(COCO_METRIC_KEYS, 0.0)
    assert any("no detections" in r.getMessage() for r in caplog.records)

    # the streaming metric: every score under the threshold -> no detection -> zeros, no crash
    caplog.clear()
    metric = CocoDetectionMetrics(DetrImageProcessor(), gt, {0: 3}, threshold=0.99)
    logits = torch.zeros(1, 5, 2)  # softmax 0.5 everywhere
    labels = [{"image_id": torch.tensor([1]), "orig_size": torch.tensor([100, 100])}]
    with caplog.at_level(logging.WARNING, logger="acamkd_hf.metrics.detection"):
        out = metric(_EvalPrediction((logits, torch.rand(1, 5, 4)), labels), compute_result=True)
    assert out == dict.fromkeys(COCO_METRIC_KEYS, 0.0)
    assert any("no detections" in r.getMessage() for r in caplog.records)


def test_contiguous_labels_round_trip_to_category_ids():
    # ground truth in original ids 3 and 11 (non-contiguous); the model predicts contiguous labels 0 and 1
    width, height = 160, 120
    boxes = [(5, 3, [10, 20, 40, 30]), (5, 11, [80, 50, 60, 50])]
    gt = gt_dict([(5, width, height)], boxes)
    logits = detr_logits([0, 1], num_queries=4, num_classes=2)[None]
    pred_boxes = torch.tensor(
        [[to_cxcywh(boxes[0][2], width, height), to_cxcywh(boxes[1][2], width, height), [0.5] * 4, [0.5] * 4]]
    )
    labels = [{"image_id": torch.tensor([5]), "orig_size": torch.tensor([height, width])}]

    right = CocoDetectionMetrics(DetrImageProcessor(), gt, {0: 3, 1: 11})
    assert right(_EvalPrediction((logits, pred_boxes), labels), compute_result=True)["map"] == pytest.approx(1.0)
    swapped = CocoDetectionMetrics(DetrImageProcessor(), gt, {0: 11, 1: 3})
    assert swapped(_EvalPrediction((logits, pred_boxes), labels), compute_result=True)["map"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not in the ground truth"):
        CocoDetectionMetrics(DetrImageProcessor(), gt, {0: 3, 1: 4})


def test_label_forms_duplicates_and_seen_images():
    width, height = 100, 80
    boxes = [(1, 3, [10, 10, 30, 30]), (2, 3, [50, 20, 40, 40]), (3, 7, [0, 0, 50, 50])]
    gt = gt_dict([(1, width, height), (2, width, height), (3, width, height)], boxes)
    logits = torch.stack([detr_logits([0], 3, 2), detr_logits([0], 3, 2)])
    pred = torch.tensor([[to_cxcywh(boxes[0][2], width, height)] * 3, [to_cxcywh(boxes[1][2], width, height)] * 3])
    targets = [{"image_id": torch.tensor([1]), "orig_size": torch.tensor([height, width])},
               {"image_id": torch.tensor([2]), "orig_size": torch.tensor([height, width])}]  # fmt: skip
    metric = CocoDetectionMetrics(DetrImageProcessor(), gt, {0: 3, 1: 7})

    # images 1 and 2 perfectly detected, image 3 never seen: scored on the images seen -> 1.0
    metric.update((logits, pred), targets)
    assert metric.compute()["map"] == pytest.approx(1.0)
    # the same batch again (distributed padding duplicates) changes nothing
    metric.update((logits, pred), detection_labels_for_metrics(targets))
    assert metric.compute()["map"] == pytest.approx(1.0)
    metric.reset()

    # (B,) id tensor form, and the multi-process gathered dict form (one id per rank, rank-major rows)
    ids = detection_labels_for_metrics(targets)
    assert ids.tolist() == [1, 2]
    gathered = [{"image_id": torch.tensor([1, 2])}]  # rank 0 had image 1, rank 1 image 2, batch 1 per rank
    metric.update((logits, pred), gathered)
    assert metric.compute()["map"] == pytest.approx(1.0)
    metric.reset()

    # seeing image 3 without any detection for it: its ground truth is missed -> category 7 has AP 0
    logits3 = torch.cat([logits, torch.full((1, 3, 3), -8.0).index_fill_(2, torch.tensor([2]), 8.0)])
    pred3 = torch.cat([pred, torch.full((1, 3, 4), 0.5)])
    targets3 = targets + [{"image_id": torch.tensor([3]), "orig_size": torch.tensor([height, width])}]
    metric.update((logits3, pred3), targets3)
    assert metric.compute()["map"] == pytest.approx(0.5)  # mean over categories 3 (AP 1) and 7 (AP 0)

    with pytest.raises(ValueError, match="not in the ground truth"):
        metric.update((logits[:1], pred[:1]), [{"image_id": torch.tensor([99])}])


# --------------------------------------------------------------------------------------------------------------
# Streaming through a real Trainer


@dataclass
class _DetectionOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None


class _StubDetector(torch.nn.Module):
    """Returns fixed logits / boxes per sample (looked up by the index written in pixel_values), and a loss."""

    def __init__(self, logits: torch.Tensor, boxes: torch.Tensor, as_tuple: bool):
        super().__init__()
        self.register_buffer("table_logits", logits)
        self.register_buffer("table_boxes", boxes)
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.as_tuple = as_tuple

    def forward(self, pixel_values, pixel_mask=None, labels=None):
        index = pixel_values[:, 0, 0, 0].long()
        loss = self.weight * 0 + 1.0
        logits, boxes = self.table_logits[index], self.table_boxes[index]
        if self.as_tuple:
            return (loss, logits, boxes)
        return _DetectionOutput(loss=loss, logits=logits, pred_boxes=boxes)


def _random_case(seed: int, num_images: int = 5, num_queries: int = 6):
    """Ground truth with varied sizes and categories, and noisy predictions around it (AP well inside (0, 1))."""
    rng = np.random.default_rng(seed)
    label_to_category = {0: 2, 1: 5, 2: 9}
    images, boxes = [], []
    sizes = []
    for k in range(num_images):
        image_id = 100 + 7 * k
        w, h = int(rng.integers(60, 160)), int(rng.integers(60, 160))
        images.append((image_id, w, h))
        sizes.append((h, w))
        for _ in range(int(rng.integers(0, 4))):
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            boxes.append((image_id, label_to_category[int(rng.integers(0, 3))], [x, y, float(bw), float(bh)]))
    gt = gt_dict(images, boxes)
    logits = torch.from_numpy(rng.normal(0, 2, size=(num_images, num_queries, 4)).astype(np.float32))
    pred = np.zeros((num_images, num_queries, 4), dtype=np.float32)
    for k, (image_id, w, h) in enumerate(images):
        own = [b for i, _, b in boxes if i == image_id]
        for q in range(num_queries):
            if own and q < 2 * len(own):
                x, y, bw, bh = own[q % len(own)]
                jitter = rng.normal(0, 0.08 * min(bw, bh), size=4)
                pred[k, q] = to_cxcywh([x + jitter[0], y + jitter[1], bw + jitter[2], bh + jitter[3]], w, h)
            else:
                pred[k, q] = [*rng.uniform(0.2, 0.8, size=2), *rng.uniform(0.1, 0.4, size=2)]
    return gt, images, sizes, label_to_category, logits, torch.from_numpy(pred)


@pytest.mark.parametrize("as_tuple", [False, True], ids=["model_output", "tuple"])
def test_streaming_metric_through_trainer_equals_direct_cocoeval(tmp_path, as_tuple):
    gt, images, sizes, label_to_category, logits, pred = _random_case(0)
    samples = [
        {"pixel_values": torch.full((3, 4, 4), float(k)),
         "labels": {"image_id": torch.tensor([image_id]), "orig_size": torch.tensor([h, w]),
                    "class_labels": torch.arange(k % 3), "boxes": torch.rand(k % 3, 4)}}
        for k, (image_id, w, h) in enumerate(images)
    ]  # fmt: skip

    def collate(batch):
        return {"pixel_values": torch.stack([s["pixel_values"] for s in batch]), "labels": [s["labels"] for s in batch]}

    class Recording(CocoDetectionMetrics):
        calls: list = []

        def __call__(self, eval_pred, compute_result=True):
            p, labels = eval_pred.predictions, eval_pred.label_ids
            self.calls.append((type(p), [tuple(t.shape) for t in p], type(labels), type(labels[0]),
                               tuple(labels[0]["orig_size"].shape), compute_result))  # fmt: skip
            return super().__call__(eval_pred, compute_result=compute_result)

    metric = Recording(DetrImageProcessor(), gt, label_to_category)
    metric.calls = []
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, batch_eval_metrics=True, use_cpu=True, report_to=[],
        remove_unused_columns=False, label_names=["labels"], dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Trainer(model=_StubDetector(logits, pred, as_tuple), args=args, eval_dataset=samples,
                      data_collator=collate, compute_metrics=metric)  # fmt: skip
    result = trainer.evaluate()

    # What Trainer 5.x hands over per batch: predictions = (logits, pred_boxes) without the loss; label_ids = the
    # list of target dicts; on the last (short) batch the gather truncates EVERY tensor to the remaining sample
    # count, so orig_size (2,) arrives as (1,) -- the reason the metric reads only image_id.
    assert metric.calls == [
        (tuple, [(2, 6, 4), (2, 6, 4)], list, dict, (2,), False),
        (tuple, [(2, 6, 4), (2, 6, 4)], list, dict, (2,), False),
        (tuple, [(1, 6, 4), (1, 6, 4)], list, dict, (1,), True),
    ]
    direct = direct_cocoeval(
        gt, decode_detr_numpy(logits.numpy(), pred.numpy(), sizes, label_to_category, [i for i, _, _ in images])
    )
    assert 0.05 < direct["map"] < 0.95  # a non-trivial case
    for key in COCO_METRIC_KEYS:
        assert result[f"eval_{key}"] == pytest.approx(direct[key], abs=1e-9), key


def test_real_detr_outputs_through_trainer(tmp_path):
    """DetrForObjectDetection's own output (loss_dict first, then logits, pred_boxes, hidden states)."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    torch.manual_seed(0)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage4"])  # fmt: skip
    config = DetrConfig(backbone_config=backbone, d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
                        num_queries=5, num_labels=3, auxiliary_loss=False)  # fmt: skip
    model = DetrForObjectDetection(config).eval()
    # 3 classes + "no object": logits and boxes are both (B, 5, 4), only their order tells them apart
    gt = gt_dict([(1, 64, 48), (2, 64, 48), (3, 64, 48)], [(1, 3, [4, 4, 30, 20]), (2, 7, [10, 5, 40, 40]),
                                                           (3, 11, [0, 0, 64, 48])])  # fmt: skip
    label_to_category = {0: 3, 1: 7, 2: 11}
    pixel_values = torch.randn(3, 3, 48, 64)
    samples = [
        {"pixel_values": pixel_values[k], "pixel_mask": torch.ones(48, 64, dtype=torch.long),
         "labels": {"image_id": torch.tensor([k + 1]), "class_labels": torch.tensor([k]),
                    "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]]), "orig_size": torch.tensor([48, 64])}}
        for k in range(3)
    ]  # fmt: skip

    def collate(batch):
        return {
            "pixel_values": torch.stack([s["pixel_values"] for s in batch]),
            "pixel_mask": torch.stack([s["pixel_mask"] for s in batch]),
            "labels": [s["labels"] for s in batch],
        }

    seen = []

    class Recording(CocoDetectionMetrics):
        def __call__(self, eval_pred, compute_result=True):
            seen.append([type(p).__name__ for p in eval_pred.predictions])
            return super().__call__(eval_pred, compute_result=compute_result)

    metric = Recording(DetrImageProcessor(), gt, label_to_category)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, batch_eval_metrics=True,
                             use_cpu=True, report_to=[], remove_unused_columns=False)  # fmt: skip
    trainer = Trainer(model=model, args=args, eval_dataset=samples, data_collator=collate, compute_metrics=metric)
    result = trainer.evaluate()
    assert seen[0][0] == "dict" and seen[0][1:3] == ["Tensor", "Tensor"]  # (loss_dict, logits, pred_boxes, ...)

    with torch.no_grad():
        out = model(pixel_values=pixel_values, pixel_mask=torch.ones(3, 48, 64, dtype=torch.long))
    direct = direct_cocoeval(
        gt, decode_detr_numpy(out.logits.numpy(), out.pred_boxes.numpy(), [(48, 64)] * 3, label_to_category, [1, 2, 3])
    )
    for key in COCO_METRIC_KEYS:
        assert result[f"eval_{key}"] == pytest.approx(direct[key], abs=1e-6), key
