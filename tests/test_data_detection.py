"""Detection data: synthetic COCO-layout generator, COCO / `datasets` loaders, transforms and collate.

Expected values come from the raw json written on disk (read here with the json module) or from hand arithmetic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DetrImageProcessor, RTDetrImageProcessor

from acamkd_hf.data import (
    DetectionTransforms,
    collate_detection,
    load_coco,
    load_detection_data,
    make_synthetic_coco,
)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=60, num_val=20, seed=0)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


# --------------------------------------------------------------------------------------------------------------
# generator


def test_synthetic_set_has_the_real_coco_layout_and_content(synthetic_root):
    root = synthetic_root
    for split, count, first_id in (("train2017", 60, 1), ("val2017", 20, 100001)):
        doc = read_json(root / "annotations" / f"instances_{split}.json")
        assert {"images", "annotations", "categories"} <= set(doc)
        assert len(doc["images"]) == count
        assert doc["images"][0]["id"] == first_id
        for image in doc["images"]:
            with Image.open(root / split / image["file_name"]) as im:
                assert im.size == (image["width"], image["height"]) == (128, 128)
                assert im.mode == "RGB"
        assert sorted(c["id"] for c in doc["categories"]) == [1, 3, 5, 7, 9, 11]  # non-contiguous
        assert [c["id"] for c in doc["categories"]] != [1, 3, 5, 7, 9, 11]  # not listed in id order either

    doc = read_json(root / "annotations" / "instances_train2017.json")
    anns = doc["annotations"]
    assert len({a["id"] for a in anns}) == len(anns)
    per_image = Counter(a["image_id"] for a in anns)
    assert sum(1 for im in doc["images"] if im["id"] not in per_image) >= 2  # empty images
    assert 1 <= sum(a["iscrowd"] for a in anns) < len(anns) // 10  # a few crowds
    for a in anns:  # inside the image, positive, area = box area (segmentation = the box)
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 128 and y + h <= 128
        assert a["area"] == pytest.approx(w * h)
    sizes = Counter("small" if a["area"] < 32**2 else "medium" if a["area"] < 96**2 else "large" for a in anns)
    assert min(sizes["small"], sizes["medium"], sizes["large"]) >= 3, sizes
    by_image: dict[int, list] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    assert any(len({a["category_id"] for a in group}) >= 3 for group in by_image.values())  # several classes
    assert any(  # overlapping objects
        box_iou(p["bbox"], q["bbox"]) > 0.05
        for group in by_image.values()
        for i, p in enumerate(group)
        for q in group[i + 1 :]
    )
    # the drawn pixels carry the class colour: the centre pixel of big "red square" boxes is red
    red = [a for a in anns if a["category_id"] == 1 and a["area"] > 400 and not a["iscrowd"]]
    assert red
    image_files = {im["id"]: im["file_name"] for im in doc["images"]}
    reds = 0
    for a in red:
        x, y, w, h = a["bbox"]
        pixel = np.asarray(Image.open(root / "train2017" / image_files[a["image_id"]]))[int(y + h / 2), int(x + w / 2)]
        reds += int(pixel[0] > 150 and pixel[1] < 110 and pixel[2] < 110)
    assert reds >= len(red) // 2  # (others may be covered by a later object)


def test_synthetic_set_is_deterministic(tmp_path):
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
        return h.hexdigest()

    a = digest(make_synthetic_coco(tmp_path / "a", num_train=6, num_val=3, seed=1))
    b = digest(make_synthetic_coco(tmp_path / "b", num_train=6, num_val=3, seed=1))
    c = digest(make_synthetic_coco(tmp_path / "c", num_train=6, num_val=3, seed=2))
    assert a == b != c


# --------------------------------------------------------------------------------------------------------------
# load_coco


def test_load_coco_remaps_categories_and_keeps_empty_images(synthetic_root):
    data = load_coco(synthetic_root)
    assert set(data.dataset) == {"train", "validation"}
    assert data.label_to_category_id == {0: 1, 1: 3, 2: 5, 3: 7, 4: 9, 5: 11}
    assert data.num_labels == 6
    assert data.id2label[0] == "red square" and data.label2id["green disc"] == 1
    assert data.ground_truth["validation"] == str(synthetic_root / "annotations" / "instances_val2017.json")

    for split, name in (("train", "train2017"), ("validation", "val2017")):
        doc = read_json(synthetic_root / "annotations" / f"instances_{name}.json")
        ds = data.dataset[split]
        assert len(ds) == len(doc["images"])  # images without objects are kept
        assert ds.features["objects"]["category"].feature.names == [data.id2label[k] for k in range(6)]
        raw: dict[int, list] = {im["id"]: [] for im in doc["images"]}
        for a in doc["annotations"]:
            raw[a["image_id"]].append(a)
        empty = 0
        for row in ds.select_columns(["image_id", "width", "height", "objects"]):
            anns = raw[row["image_id"]]
            objects = row["objects"]
            empty += not anns
            assert objects["id"] == [a["id"] for a in anns]
            # contiguous label -> back to the original id, and crowds kept with their flag
            assert [data.label_to_category_id[c] for c in objects["category"]] == [a["category_id"] for a in anns]
            assert objects["iscrowd"] == [a["iscrowd"] for a in anns]
            assert np.allclose(objects["bbox"], [a["bbox"] for a in anns]) if anns else objects["bbox"] == []
            assert (row["width"], row["height"]) == (128, 128)
        assert empty >= 1
    image = data.dataset["train"][0]["image"]
    assert image.size == (128, 128)


def test_load_coco_accepts_images_subfolder(synthetic_root, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(synthetic_root / "annotations", root / "annotations")
    for split in ("train2017", "val2017"):
        shutil.copytree(synthetic_root / split, root / "images" / split)
    data = load_coco(root)
    assert len(data.dataset["validation"]) == 20
    stored = data.dataset["validation"].cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert Path(stored["path"]).parent == root / "images" / "val2017"


def _write_small_coco(root: Path, annotations: list[dict], images=((1, "a.png", 40, 30), (2, "b.png", 20, 20))):
    """A hand-made COCO folder: images (id, file, width, height) written as PNGs, one split per name."""
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for _, file_name, width, height in images:
            Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(root / split / file_name)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
        "annotations": annotations,
        "categories": [{"id": 4, "name": "four"}, {"id": 2, "name": "two"}],
    }
    for split in ("train2017", "val2017"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))


def test_load_coco_clips_and_drops_boxes_and_logs_counts(tmp_path, caplog):
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 4, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},  # fine
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [-5, 20, 20, 15], "area": 300, "iscrowd": 0},  # clipped
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [50, 5, 10, 10], "area": 100, "iscrowd": 0},  # outside
        {"id": 4, "image_id": 2, "category_id": 4, "bbox": [3, 3, 0, 8], "area": 0, "iscrowd": 0},  # zero width
        {"id": 5, "image_id": 2, "category_id": 4, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1},  # crowd
    ]
    _write_small_coco(tmp_path, annotations)
    with caplog.at_level(logging.WARNING, logger="acamkd_hf.data.coco"):
        data = load_coco(tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "acamkd_hf.data.coco"]
    assert len(lines) == 2  # one per split
    assert "instances_train2017.json" in lines[0] and "instances_val2017.json" in lines[1]
    assert all("1 box(es) clipped" in line and "2 dropped" in line for line in lines)

    assert data.label_to_category_id == {0: 2, 1: 4} and data.id2label == {0: "two", 1: "four"}
    first, second = data.dataset["train"][0]["objects"], data.dataset["train"][1]["objects"]
    assert first["id"] == [1, 2]
    assert first["bbox"] == [[5, 5, 10, 10], [0, 20, 15, 10]]  # x -5..15 -> 0..15; y 20..35 -> 20..30 (height 30)
    assert first["category"] == [1, 0]
    assert second["id"] == [5] and second["iscrowd"] == [1]  # the crowd stays, flagged


def test_load_coco_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_coco(tmp_path / "nowhere")

    _write_small_coco(tmp_path / "a", [{"id": 1, "image_id": 999, "category_id": 4, "bbox": [1, 1, 5, 5],
                                        "area": 25, "iscrowd": 0}])  # fmt: skip
    with pytest.raises(ValueError, match="999"):
        load_coco(tmp_path / "a")

    _write_small_coco(tmp_path / "b", [])
    (tmp_path / "b" / "val2017" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"image 2 \(b.png\)"):
        load_coco(tmp_path / "b")

    _write_small_coco(tmp_path / "c", [])
    (tmp_path / "c" / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotations/instances_val2017\.json"):
        load_coco(tmp_path / "c")

    _write_small_coco(tmp_path / "d", [])
    shutil.rmtree(tmp_path / "d" / "train2017")
    with pytest.raises(FileNotFoundError, match=r"train2017 and .*images/train2017"):
        load_coco(tmp_path / "d")


def test_load_detection_data_picks_coco_folders(synthetic_root):
    data = load_detection_data(synthetic_root, id2label={k: f"class {k}" for k in range(6)})
    assert data.id2label[5] == "class 5"
    assert data.dataset["train"].features["objects"]["category"].feature.names[5] == "class 5"
    assert data.label_to_category_id[5] == 11


# --------------------------------------------------------------------------------------------------------------
# `datasets` code path (Hub layout) on local folders


def test_load_detection_data_parquet_in_cppe5_layout(tmp_path):
    """image_id + image + objects {id, area (int), bbox, category ClassLabel}; no width/height, no iscrowd."""
    features = datasets.Features({
        "image_id": datasets.Value("int64"),
        "image": datasets.Image(),
        "objects": datasets.Sequence({"id": datasets.Value("int64"), "area": datasets.Value("int64"),
                                      "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                                      "category": datasets.ClassLabel(names=["Coverall", "Mask"])}),
    })  # fmt: skip
    for i, (w, h) in enumerate([(40, 30), (32, 50)]):
        Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    rows = {
        "image_id": [15, 16],
        "image": [str(tmp_path / "0.png"), str(tmp_path / "1.png")],
        "objects": [{"id": [], "area": [], "bbox": [], "category": []},
                    {"id": [8, 9], "area": [120, 40], "bbox": [[1, 2, 10, 12], [20, 40, 20, 20]], "category": [1, 0]}],
    }  # fmt: skip
    ds = datasets.Dataset.from_dict(rows, features=features)
    (tmp_path / "data").mkdir()
    ds.to_parquet(tmp_path / "data" / "train-00000-of-00001.parquet")
    ds.to_parquet(tmp_path / "data" / "test-00000-of-00001.parquet")

    data = load_detection_data(str(tmp_path), ground_truth_dir=tmp_path / "gt")
    assert data.id2label == {0: "Coverall", 1: "Mask"} and data.label_to_category_id == {0: 0, 1: 1}
    row = data.dataset["validation"][1]  # "test" serves as validation
    assert (row["image_id"], row["width"], row["height"]) == (16, 32, 50)  # sizes from the image headers
    # the second box reaches y = 60 > 50: clipped to height 10
    assert row["objects"] == {"id": [8, 9], "area": [120.0, 40.0], "bbox": [[1, 2, 10, 12], [20, 40, 12, 10]],
                              "category": [1, 0], "iscrowd": [0, 0]}  # fmt: skip
    assert row["image"].size == (32, 50)

    from pycocotools.coco import COCO

    gt = read_json(data.ground_truth["validation"])
    assert Path(data.ground_truth["validation"]).parent == tmp_path / "gt"
    assert gt["images"] == [{"id": 15, "width": 40, "height": 30, "file_name": "15"},
                            {"id": 16, "width": 32, "height": 50, "file_name": "16"}]  # fmt: skip
    assert [(a["id"], a["image_id"], a["category_id"], a["bbox"]) for a in gt["annotations"]] == [
        (8, 16, 1, [1, 2, 10, 12]), (9, 16, 0, [20, 40, 12, 10])
    ]  # fmt: skip
    assert gt["categories"] == [{"id": 0, "name": "Coverall"}, {"id": 1, "name": "Mask"}]
    COCO(data.ground_truth["validation"])  # pycocotools reads it


def test_load_detection_data_imagefolder_with_integer_categories(tmp_path):
    """imagefolder + metadata.jsonl (objects {bbox, categories} as plain ints, no image_id): id2label needed."""
    for split in ("train", "validation"):
        (tmp_path / split).mkdir()
        lines = []
        for i in range(2):
            Image.fromarray(np.zeros((24, 36, 3), dtype=np.uint8)).save(tmp_path / split / f"{i}.png")
            objects = {"bbox": [[2, 3, 8, 9]] * (i + 1), "categories": [90, 7][: i + 1]}
            lines.append(json.dumps({"file_name": f"{i}.png", "objects": objects}))
        (tmp_path / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="id2label"):
        load_detection_data(str(tmp_path), ground_truth_dir=tmp_path / "gt")
    data = load_detection_data(str(tmp_path), id2label={90: "toothbrush", 7: "train"}, ground_truth_dir=tmp_path / "gt")
    assert data.id2label == {0: "train", 1: "toothbrush"}
    assert data.label_to_category_id == {0: 7, 1: 90}
    rows = data.dataset["validation"].select_columns(["image_id", "objects"])
    assert rows["image_id"] == [0, 1]  # the row index
    assert [r["category"] for r in rows["objects"]] == [[1], [1, 0]]
    gt = read_json(data.ground_truth["validation"])
    assert sorted(a["category_id"] for a in gt["annotations"]) == [7, 90, 90]
    assert len({a["id"] for a in gt["annotations"]}) == 3  # renumbered: the source ids repeat


# --------------------------------------------------------------------------------------------------------------
# transforms and collate


def _example(width=150, height=100):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    return {
        "image": [Image.fromarray(pixels)],
        "image_id": [42],
        "objects": [{"bbox": [[10.0, 20.0, 30.0, 40.0], [100.0, 0.0, 50.0, 100.0], [60.0, 60.0, 20.0, 20.0]],
                     "category": [2, 0, 1], "area": [1200.0, 5000.0, 400.0], "iscrowd": [0, 0, 1]}],
    }  # fmt: skip


# (cx, cy, w, h) / (W, H) by hand for the two non-crowd boxes of _example() in a 150 x 100 image
_EXPECTED = [[25 / 150, 40 / 100, 30 / 150, 40 / 100], [125 / 150, 50 / 100, 50 / 150, 100 / 100]]


def test_transforms_normalise_boxes_and_drop_crowds():
    processor = DetrImageProcessor(size={"height": 64, "width": 96})
    out = DetectionTransforms(processor, train=False)(_example())
    assert out["pixel_values"][0].shape == (3, 64, 96)
    assert out["pixel_mask"][0].shape == (64, 96) and bool(out["pixel_mask"][0].all())
    labels = out["labels"][0]
    assert labels["class_labels"].tolist() == [2, 0]  # the crowd box is not a target
    assert torch.allclose(labels["boxes"], torch.tensor(_EXPECTED), atol=1e-6)
    assert labels["image_id"].tolist() == [42]
    assert labels["orig_size"].tolist() == [100, 150] and labels["size"].tolist() == [64, 96]


@pytest.mark.parametrize(
    "processor",
    [
        RTDetrImageProcessor(size={"height": 64, "width": 64}),
        pytest.param("detr_pil", id="DetrImageProcessorPil"),
    ],
    ids=["RTDetrImageProcessor", "DetrImageProcessorPil"],
)
def test_transforms_work_with_other_processors(processor):
    if processor == "detr_pil":
        from transformers.models.detr import DetrImageProcessorPil

        processor = DetrImageProcessorPil(size={"height": 64, "width": 96})
    out = DetectionTransforms(processor, train=False)(_example())
    labels = out["labels"][0]
    assert labels["class_labels"].tolist() == [2, 0]
    assert torch.allclose(labels["boxes"], torch.tensor(_EXPECTED), atol=1e-6)
    assert ("pixel_mask" in out) == (not isinstance(processor, RTDetrImageProcessor))  # RT-DETR does not pad


def test_training_flip_mirrors_image_and_boxes_consistently():
    processor = DetrImageProcessor(size={"height": 64, "width": 96})
    example = _example()
    plain = DetectionTransforms(processor, train=False)(example)
    train = DetectionTransforms(processor, train=True)
    torch.manual_seed(0)
    outcomes = [train(example) for _ in range(12)]
    flipped_count = 0
    for out in outcomes:
        boxes = out["labels"][0]["boxes"]
        if torch.allclose(boxes, plain["labels"][0]["boxes"]):
            assert torch.equal(out["pixel_values"][0], plain["pixel_values"][0])
        else:
            flipped_count += 1
            mirrored = torch.tensor(_EXPECTED)
            mirrored[:, 0] = 1 - mirrored[:, 0]  # cx -> 1 - cx, the rest unchanged
            assert torch.allclose(boxes, mirrored, atol=1e-6)
            assert torch.allclose(out["pixel_values"][0], plain["pixel_values"][0].flip(-1), atol=1e-4)
    assert 0 < flipped_count < 12
    # the flips come from torch's global RNG: same seed, same flips
    torch.manual_seed(0)
    again = [train(example)["labels"][0]["boxes"] for _ in range(12)]
    assert all(torch.equal(a, o["labels"][0]["boxes"]) for a, o in zip(again, outcomes))
    # hflip=False never flips
    no_flip = DetectionTransforms(processor, train=True, hflip=False)
    assert all(torch.equal(no_flip(example)["pixel_values"][0], plain["pixel_values"][0]) for _ in range(4))


def test_collate_pads_mixed_sizes_and_keeps_boxes_relative_to_each_image():
    processor = DetrImageProcessor(size={"shortest_edge": 48, "longest_edge": 96})
    transform = DetectionTransforms(processor, train=False)
    wide, tall = transform(_example(150, 100)), transform(_example(60, 90))
    samples = [{k: v[0] for k, v in out.items()} for out in (wide, tall)]
    assert samples[0]["pixel_values"].shape == (3, 48, 72) and samples[1]["pixel_values"].shape == (3, 72, 48)
    batch = collate_detection(samples)
    assert batch["pixel_values"].shape == (2, 3, 72, 72)
    mask = batch["pixel_mask"]
    assert mask[0, :48, :72].all() and not mask[0, 48:].any()
    assert mask[1, :72, :48].all() and not mask[1, :, 48:].any()
    assert torch.equal(batch["pixel_values"][1, :, :72, :48], samples[1]["pixel_values"])
    assert not batch["pixel_values"][1, :, :, 48:].any()
    assert batch["labels"][0] is samples[0]["labels"]  # untouched: still relative to the unpadded image
    assert torch.allclose(batch["labels"][0]["boxes"], torch.tensor(_EXPECTED), atol=1e-6)

    same = collate_detection([samples[0], samples[0]])
    assert same["pixel_values"].shape == (2, 3, 48, 72) and same["pixel_mask"].all()
    no_mask = collate_detection([{"pixel_values": torch.ones(3, 4, 4), "labels": {}}] * 2)
    assert set(no_mask) == {"pixel_values", "labels"}


def test_pipeline_from_disk_to_batches_with_perfect_predictions(synthetic_root):
    """load_coco -> with_transform -> DataLoader -> targets that, fed back as predictions, score mAP 1.0."""
    from torch.utils.data import DataLoader

    from acamkd_hf.metrics import CocoDetectionMetrics

    data = load_coco(synthetic_root)
    processor = DetrImageProcessor(size={"height": 128, "width": 128})
    validation = data.dataset["validation"].with_transform(DetectionTransforms(processor, train=False))
    metric = CocoDetectionMetrics(processor, data.ground_truth["validation"], data.label_to_category_id)
    num_classes, queries = data.num_labels, 12
    for batch in DataLoader(validation, batch_size=8, collate_fn=collate_detection):
        assert batch["pixel_values"].shape[1:] == (3, 128, 128)
        size = len(batch["labels"])
        logits = torch.full((size, queries, num_classes + 1), -8.0)
        logits[..., num_classes] = 8.0
        boxes = torch.full((size, queries, 4), 0.5)
        for i, target in enumerate(batch["labels"]):
            n = len(target["class_labels"])
            logits[i, :n, num_classes] = -8.0
            logits[i, torch.arange(n), target["class_labels"]] = 8.0
            boxes[i, :n] = target["boxes"]
        metric.update((logits, boxes), batch["labels"])
    # crowd boxes are neither targets nor counted as misses; remapped ids match the json's
    assert metric.compute() == pytest.approx(
        {"map": 1.0, "map_50": 1.0, "map_75": 1.0, "map_small": 1.0, "map_medium": 1.0, "map_large": 1.0,
         "mar_100": 1.0}, abs=1e-9
    )  # fmt: skip
