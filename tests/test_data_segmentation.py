"""Segmentation data pipeline: synthetic generator -> Cityscapes layout -> loaders -> transforms.

Golden values are written out by hand here (official Cityscapes ids, ImageNet statistics) or computed with plain
numpy, never by the code under test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from acamkd_hf.data import (
    CITYSCAPES_TRAIN_CLASSES,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    SegmentationTransforms,
    collate_segmentation,
    load_cityscapes,
    load_segmentation_data,
    make_synthetic_cityscapes,
)
from acamkd_hf.data.labels import normalize_id2label

# Official Cityscapes table (cityscapesscripts/helpers/labels.py), labelId -> trainId, written out independently.
OFFICIAL_LABEL_TO_TRAIN = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255,  # unlabeled, ego vehicle, ..., ground
    7: 0, 8: 1, 9: 255, 10: 255,  # road, sidewalk, parking, rail track
    11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255,  # building, wall, fence, guard rail, bridge, tunnel
    17: 5, 18: 255, 19: 6, 20: 7,  # pole, polegroup, traffic light, traffic sign
    21: 8, 22: 9, 23: 10, 24: 11, 25: 12,  # vegetation, terrain, sky, person, rider
    26: 13, 27: 14, 28: 15, 29: 255, 30: 255,  # car, truck, bus, caravan, trailer
    31: 16, 32: 17, 33: 18,  # train, motorcycle, bicycle
}  # fmt: skip
NAMES_19 = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

H, W = 32, 64


def _official_lookup(raw: np.ndarray) -> np.ndarray:
    out = np.full(raw.shape, 255, dtype=np.int64)
    for label_id, train_id in OFFICIAL_LABEL_TO_TRAIN.items():
        out[raw == label_id] = train_id
    return out


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    return make_synthetic_cityscapes(root, num_train=12, num_val=5, image_size=(H, W), num_classes=8, seed=0)


@pytest.fixture(scope="module")
def processor():
    from transformers import SegformerImageProcessor

    return SegformerImageProcessor()


# --------------------------------------------------------------------------------------------------------------------
# Cityscapes constants


def test_constants_match_the_official_table():
    assert list(CITYSCAPES_TRAIN_CLASSES) == NAMES_19
    assert IGNORE_INDEX == 255
    assert LABEL_ID_TO_TRAIN_ID.dtype == np.uint8 and LABEL_ID_TO_TRAIN_ID.shape == (256,)
    for label_id in range(256):
        assert LABEL_ID_TO_TRAIN_ID[label_id] == OFFICIAL_LABEL_TO_TRAIN.get(label_id, 255), label_id


def test_normalize_id2label_gives_int_keys_str_values_sorted_by_id():
    # As read from a json file (string keys, out of order; 10 sorts after 2 as a number) or given in Python.
    normalized = normalize_id2label({"10": "bus", "2": "car", 0: "road", "1": 7})
    assert list(normalized.items()) == [(0, "road"), (1, "7"), (2, "car"), (10, "bus")]
    assert normalize_id2label({}) == {}


# --------------------------------------------------------------------------------------------------------------------
# Generator + loader


def test_synthetic_is_written_in_the_cityscapes_layout(synthetic_root):
    root = synthetic_root
    for split, count in (("train", 12), ("val", 5)):
        images = sorted((root / "leftImg8bit" / split).glob("*/*"))
        labels = sorted((root / "gtFine" / split).glob("*/*"))
        assert len(images) == count and len(labels) == count
        for image in images:
            city = image.parent.name
            match = re.fullmatch(rf"({city})_(\d{{6}})_(\d{{6}})_leftImg8bit\.png", image.name)
            assert match, image.name
            label = root / "gtFine" / split / city / image.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            assert label.is_file()
            with Image.open(image) as im, Image.open(label) as lb:
                assert im.mode == "RGB" and im.size == (W, H)
                assert lb.mode == "L" and lb.size == (W, H)
                raw = np.array(lb)
            # only real labelIds: the 8 classes' ids plus void 0 (unlabeled) / 1 (ego vehicle)
            assert set(np.unique(raw)) <= {0, 1, 7, 8, 11, 12, 13, 17, 19, 20}
            assert (raw[-2:] == 1).all()  # ego-vehicle band at the bottom (H // 16 = 2 rows)


def test_load_cityscapes_reads_the_synthetic_set(synthetic_root):
    data = load_cityscapes(synthetic_root)
    assert set(data.dataset) == {"train", "validation"}
    assert len(data.dataset["train"]) == 12 and len(data.dataset["validation"]) == 5
    assert data.dataset["train"].column_names == ["image", "label"]
    assert data.id2label == dict(enumerate(NAMES_19[:8]))  # restricted by the generator's id2label.json
    assert data.ignore_index == 255
    sample = data.dataset["validation"][0]
    assert sample["image"].size == (W, H) and np.array(sample["label"]).shape == (H, W)
    # The lookup agrees with the official table on every labelId the data can hold.
    for label_id in (0, 1, 7, 8, 11, 12, 13, 17, 19, 20):
        assert data.label_lookup[label_id] == OFFICIAL_LABEL_TO_TRAIN[label_id]


def test_labels_come_out_as_train_ids(synthetic_root, processor):
    data = load_cityscapes(synthetic_root)
    transform = SegmentationTransforms(processor, train=False, label_lookup=data.label_lookup)
    dataset = data.dataset["validation"].with_transform(transform)
    seen = set()
    for i in range(len(dataset)):
        raw = np.array(data.dataset["validation"][i]["label"])
        labels = dataset[i]["labels"]
        assert labels.dtype == torch.int64 and labels.shape == (H, W)
        np.testing.assert_array_equal(labels.numpy(), _official_lookup(raw))
        seen |= set(np.unique(raw).tolist())
    assert {7, 1} <= seen  # road and the ego band were actually exercised


def test_id2label_file_restricts_classes_and_ignores_the_rest(tmp_path):
    root = make_synthetic_cityscapes(tmp_path, num_train=2, num_val=1, image_size=(H, W), num_classes=4)
    data = load_cityscapes(root)
    assert data.id2label == {0: "road", 1: "sidewalk", 2: "building", 3: "wall"}
    assert data.label_lookup[12] == 3  # wall is kept
    assert data.label_lookup[13] == 255 and data.label_lookup[26] == 255  # fence, car: outside the subset
    assert LABEL_ID_TO_TRAIN_ID[13] == 4 and LABEL_ID_TO_TRAIN_ID[26] == 13  # the shared table is untouched


def test_load_segmentation_data_dispatches_cityscapes_folders(synthetic_root):
    data = load_segmentation_data(str(synthetic_root))
    assert len(data.dataset["train"]) == 12 and len(data.dataset["validation"]) == 5
    assert data.id2label == dict(enumerate(NAMES_19[:8]))
    assert data.label_lookup[7] == 0 and data.label_lookup[0] == 255
    renamed = {i: f"c{i}" for i in range(8)}
    assert load_segmentation_data(synthetic_root, id2label=renamed).id2label == renamed
    with pytest.raises(ValueError, match="rename"):
        load_segmentation_data(synthetic_root, id2label={0: "road"})


def test_cityscapes_errors(tmp_path, synthetic_root):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_cityscapes(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        load_cityscapes(tmp_path)

    empty = tmp_path / "empty"
    (empty / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match=re.escape(str(empty / "leftImg8bit" / "train" / "*/*_leftImg8bit.png"))
    ):
        load_cityscapes(empty)

    broken = make_synthetic_cityscapes(tmp_path / "broken", num_train=3, num_val=1, image_size=(H, W))
    victim = sorted((broken / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))[1]
    victim.unlink()
    image_name = victim.name.replace("_gtFine_labelIds.png", "_leftImg8bit.png")
    with pytest.raises(FileNotFoundError, match=re.escape(image_name)) as info:
        load_cityscapes(broken)
    assert str(victim) in str(info.value)


def _write_parquet_dataset(folder: Path, with_id2label: bool) -> None:
    import datasets

    rng = np.random.default_rng(0)

    def split(n):
        return datasets.Dataset.from_dict(
            {
                "pixel_values": [Image.fromarray(rng.integers(0, 255, (8, 16, 3), dtype=np.uint8)) for _ in range(n)],
                "annotation": [Image.fromarray(rng.integers(0, 3, (8, 16), dtype=np.uint8)) for _ in range(n)],
                "scene": list(range(n)),
            },
            features=datasets.Features(
                {"pixel_values": datasets.Image(), "annotation": datasets.Image(), "scene": datasets.Value("int64")}
            ),
        )

    (folder / "data").mkdir(parents=True)
    split(3).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    split(2).to_parquet(str(folder / "data" / "validation-00000-of-00001.parquet"))
    if with_id2label:
        (folder / "id2label.json").write_text(json.dumps({"0": "sky", "1": "tree", "2": "wall"}))


def test_load_segmentation_data_from_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "ds"
    _write_parquet_dataset(folder, with_id2label=True)
    data = load_segmentation_data(folder, cache_dir=str(tmp_path / "cache"))
    assert data.id2label == {0: "sky", 1: "tree", 2: "wall"}
    assert data.label_lookup is None
    assert len(data.dataset["train"]) == 3 and len(data.dataset["validation"]) == 2
    assert data.dataset["train"].column_names == ["image", "label"]  # detected, renamed, extras dropped
    sample = data.dataset["validation"][1]
    assert sample["image"].size == (16, 8) and np.array(sample["label"]).max() <= 2

    # explicit column override and explicit classes (the file is ignored then)
    data = load_segmentation_data(
        folder,
        image_column="pixel_values",
        label_column="annotation",
        id2label={0: "a", 1: "b", 2: "c"},
        cache_dir=str(tmp_path / "cache"),
    )
    assert data.id2label == {0: "a", 1: "b", 2: "c"}
    # a train-only dataset gets its validation split held out of train; classes from a json path
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"1": "y", "0": "x", "2": "z"}))
    data = load_segmentation_data(
        folder, validation_fraction=1 / 3, id2label=str(classes), cache_dir=str(tmp_path / "cache")
    )
    assert len(data.dataset["train"]) == 2 and len(data.dataset["validation"]) == 1
    assert data.id2label == {0: "x", 1: "y", 2: "z"}
    # ADE20K-style maps: 0 -> ignore, k -> k - 1
    data = load_segmentation_data(folder, reduce_labels=True, cache_dir=str(tmp_path / "cache"))
    assert data.label_lookup[0] == 255 and data.label_lookup[1] == 0 and data.label_lookup[150] == 149
    with pytest.raises(ValueError, match="'nope'"):
        load_segmentation_data(folder, label_column="nope", cache_dir=str(tmp_path / "cache"))


def test_load_segmentation_data_asks_for_id2label(tmp_path):
    folder = tmp_path / "ds"
    _write_parquet_dataset(folder, with_id2label=False)
    with pytest.raises(ValueError, match="pass --id2label classes.json"):
        load_segmentation_data(folder, cache_dir=str(tmp_path / "cache"))


# --------------------------------------------------------------------------------------------------------------------
# Generator properties


def _read_split(root: Path, split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    for path in sorted((root / "leftImg8bit" / split).glob("*/*.png")):
        images.append(np.array(Image.open(path)))
        label = root / "gtFine" / split / path.parent.name / path.name.replace("leftImg8bit", "gtFine_labelIds")
        labels.append(_official_lookup(np.array(Image.open(label))))
    return images, labels


def test_generator_is_deterministic(tmp_path):
    a = _read_split(make_synthetic_cityscapes(tmp_path / "a", num_train=3, num_val=2, image_size=(H, W)), "train")
    b = _read_split(make_synthetic_cityscapes(tmp_path / "b", num_train=3, num_val=2, image_size=(H, W)), "train")
    c = _read_split(
        make_synthetic_cityscapes(tmp_path / "c", num_train=3, num_val=2, image_size=(H, W), seed=1), "train"
    )
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a[0], c[0]))


def test_generator_carries_signal(tmp_path):
    root = make_synthetic_cityscapes(tmp_path, num_train=60, num_val=1, image_size=(64, 128), num_classes=8)
    images, labels = _read_split(root, "train")

    # several classes per image (background + at least two shapes)
    counts = [len(set(np.unique(lab).tolist()) - {255}) for lab in labels]
    assert min(counts) >= 3 and np.mean(counts) >= 4

    # Per-class statistics over interior pixels (the pixel and its 8 neighbours share the class): mean colour and
    # mean absolute grey-level difference along 4 directions (texture orientation / frequency).
    colour = {c: [] for c in range(8)}
    texture = {c: [] for c in range(8)}
    for image, label in zip(images, labels):
        grey = image.astype(np.float64).mean(axis=2) / 255.0
        same = np.ones((62, 126), dtype=bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                same &= label[1 + dy : 63 + dy, 1 + dx : 127 + dx] == label[1:63, 1:127]
        centre = grey[1:63, 1:127]
        diffs = [
            np.abs(grey[1:63, 2:128] - centre),  # right
            np.abs(grey[2:64, 1:127] - centre),  # down
            np.abs(grey[2:64, 2:128] - centre),  # down-right
            np.abs(grey[2:64, 0:126] - centre),  # down-left
        ]
        inner_label = label[1:63, 1:127]
        for c in range(8):
            mask = same & (inner_label == c)
            if mask.sum() < 20:
                continue
            colour[c].append(image[1:63, 1:127][mask].mean(axis=0) / 255.0)
            texture[c].append([d[mask].mean() for d in diffs])
    colour = {c: np.mean(v, axis=0) for c, v in colour.items()}
    texture = {c: np.mean(v, axis=0) for c, v in texture.items()}

    for c in range(8):
        for d in range(c + 1, 8):
            distance = np.abs(colour[c] - colour[d]).max() + np.abs(texture[c] - texture[d]).max()
            assert distance > 0.03, (c, d, colour[c], colour[d], texture[c], texture[d])
    # Colour alone is ambiguous by design: the two classes of each pair share their mean colour (up to the
    # per-image jitter, +-0.08 shift and x0.8-1.2 brightness) while pairs differ clearly ...
    for c in range(0, 8, 2):
        assert np.abs(colour[c] - colour[c + 1]).max() < 0.05, (c, colour[c], colour[c + 1])
        for d in range(c + 2, 8, 2):
            assert np.abs(colour[c] - colour[d]).max() > 0.1, (c, d, colour[c], colour[d])
        # ... and differ in texture, also when one of the two is mirrored: training flips images horizontally, which
        # swaps the down-right and down-left differences; a pair whose textures are mirror images (45 / 135 degree
        # stripes) becomes one class to the model and caps every model's mIoU (docs/results.md, settings)
        mirrored = texture[c][[0, 1, 3, 2]]
        for other in (texture[c], mirrored):
            assert np.abs(other - texture[c + 1]).max() > 0.03, (c, other, texture[c + 1])
    # horizontal bars (sidewalk) change going down, vertical bars (building) going right
    assert texture[1][1] > 2 * texture[1][0] and texture[2][0] > 2 * texture[2][1]


# --------------------------------------------------------------------------------------------------------------------
# Transforms


def _sample(label: np.ndarray) -> dict:
    """An image whose red channel encodes its label (R = 20 * label), so alignment can be read back."""
    image = np.zeros(label.shape + (3,), dtype=np.uint8)
    image[..., 0] = 20 * label
    image[..., 1] = 100
    return {"image": [Image.fromarray(image)], "label": [Image.fromarray(label.astype(np.uint8))]}


def _denormalised_red(pixel_values: torch.Tensor) -> np.ndarray:
    red = pixel_values[0].numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return red * 255.0


def test_train_transform_shapes_and_alignment_under_crop_and_flip(processor):
    columns = np.arange(W) // 8  # label grows left -> right: 0..7
    label = np.broadcast_to(columns, (H, W)).copy()
    transform = SegmentationTransforms(processor, train=True, crop_size=(24, 40), scale_range=(1.0, 1.0))
    flipped = unflipped = 0
    for seed in range(16):
        torch.manual_seed(seed)
        out = transform(_sample(label))
        pixel_values, labels = out["pixel_values"][0], out["labels"][0]
        assert pixel_values.shape == (3, 24, 40) and pixel_values.dtype == torch.float32
        assert labels.shape == (24, 40) and labels.dtype == torch.int64
        # the image pixel sits over its own label: R / 20 == label everywhere
        np.testing.assert_allclose(_denormalised_red(pixel_values) / 20.0, labels.numpy(), atol=0.01)
        row = labels[0].numpy()
        if (np.diff(row) >= 0).all() and row[0] < row[-1]:
            unflipped += 1
        elif (np.diff(row) <= 0).all() and row[0] > row[-1]:
            flipped += 1
        else:
            pytest.fail(f"crop row is not monotone: {row}")
    assert flipped > 0 and unflipped > 0


def test_train_transform_scales_label_with_image(processor):
    label = ((np.arange(H)[:, None] // 4 + np.arange(W)[None, :] // 4) % 5).astype(np.uint8)  # 4x4 blocks
    transform = SegmentationTransforms(processor, train=True, crop_size=(32, 64), scale_range=(2.0, 2.0), hflip=False)
    torch.manual_seed(0)
    out = transform(_sample(label))
    labels = out["labels"][0].numpy()
    assert labels.shape == (32, 64) and (labels != 255).all()  # scaled 64x128 > crop: no padding needed
    # Bilinear blends only across block edges: wherever the 3x3 neighbourhood shares one label, the image must
    # still encode exactly that label (a misaligned scale or crop breaks this inside the 8x8 blocks).
    interior = np.ones((30, 62), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            interior &= labels[1 + dy : 31 + dy, 1 + dx : 63 + dx] == labels[1:31, 1:63]
    red = _denormalised_red(out["pixel_values"][0])[1:31, 1:63] / 20.0
    assert interior.mean() > 0.4
    np.testing.assert_allclose(red[interior], labels[1:31, 1:63][interior], atol=0.01)


def test_train_transform_never_invents_label_values(processor):
    # Checkerboard of classes 0 / 7 and ignore: any blending of labels (instead of nearest) creates other values.
    label = np.where((np.arange(H)[:, None] // 3 + np.arange(W)[None, :] // 5) % 2 == 0, 0, 7).astype(np.uint8)
    label[:4] = 255
    transform = SegmentationTransforms(processor, train=True, crop_size=(24, 40), scale_range=(0.6, 1.7))
    for seed in range(8):
        torch.manual_seed(seed)
        labels = transform(_sample(label))["labels"][0]
        assert set(torch.unique(labels).tolist()) <= {0, 7, 255}


def test_train_transform_pads_with_ignore(processor):
    label = (np.arange(H)[:, None] * 0 + np.arange(W)[None, :] % 3).astype(np.uint8)
    transform = SegmentationTransforms(processor, train=True, crop_size=(48, 80), scale_range=(1.0, 1.0))
    torch.manual_seed(0)
    out = transform(_sample(label))
    pixel_values, labels = out["pixel_values"][0], out["labels"][0]
    assert labels.shape == (48, 80)
    valid = labels != 255
    assert int(valid.sum()) == H * W  # every original pixel kept, the rest is padding
    assert (pixel_values[:, ~valid] == 0).all()  # padding is 0 after normalisation (the mean colour)
    np.testing.assert_allclose(_denormalised_red(pixel_values)[valid.numpy()] / 20.0, labels[valid].numpy(), atol=0.01)


def test_train_transform_is_reproducible_under_manual_seed(processor, synthetic_root):
    data = load_cityscapes(synthetic_root)
    transform = SegmentationTransforms(processor, train=True, crop_size=(24, 48), label_lookup=data.label_lookup)
    batch = data.dataset["train"][:4]

    def run(seed):
        torch.manual_seed(seed)
        return transform(batch)

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a["pixel_values"] + a["labels"], b["pixel_values"] + b["labels"]):
        assert torch.equal(x, y)
    assert any(not torch.equal(x, y) for x, y in zip(a["pixel_values"], c["pixel_values"]))


def test_eval_transform_normalises_like_the_processor_and_keeps_label_size(processor, synthetic_root):
    data = load_cityscapes(synthetic_root)
    transform = SegmentationTransforms(processor, train=False, label_lookup=data.label_lookup)
    raw = data.dataset["validation"][:2]
    out = transform(raw)
    for image, label, pixel_values, labels in zip(raw["image"], raw["label"], out["pixel_values"], out["labels"]):
        expected = (np.array(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        np.testing.assert_allclose(pixel_values.numpy(), expected.transpose(2, 0, 1), atol=1e-5)
        reference = processor(image, do_resize=False, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(pixel_values, reference, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(labels.numpy(), _official_lookup(np.array(label)))

    # eval_size resizes images only; labels stay at their stored resolution
    small = SegmentationTransforms(processor, train=False, label_lookup=data.label_lookup, eval_size=(16, 32))(raw)
    assert small["pixel_values"][0].shape == (3, 16, 32) and small["labels"][0].shape == (H, W)


def test_collate_through_a_dataloader(processor, synthetic_root):
    data = load_cityscapes(synthetic_root)
    transform = SegmentationTransforms(processor, train=True, crop_size=(16, 32), label_lookup=data.label_lookup)
    loader = torch.utils.data.DataLoader(
        data.dataset["train"].with_transform(transform), batch_size=4, collate_fn=collate_segmentation
    )
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (4, 3, 16, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (4, 16, 32) and batch["labels"].dtype == torch.int64
    assert set(torch.unique(batch["labels"]).tolist()) <= set(range(8)) | {255}


def test_half_a_cityscapes_folder_says_which_half_is_missing(tmp_path):
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has leftImg8bit/ but no gtFine/"):
        load_segmentation_data(str(tmp_path))
