"""Bad inputs stop a run with an error that names what is wrong and says what to do, before anything trains where
that is possible.

Every bad input is made in its real on-disk format (a PNG cut in half, a text file named .png, a COCO json with a
broken box, a parquet dataset with an out-of-range label map, ...) and goes through the real loaders, mostly
through `scripts/distill.py`'s `main([...])`. "Before anything trains" is observed on disk: the teacher trained by
the embedded default writes `<output_dir>_teacher`, which must not exist when the error comes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from acamkd_hf.data import (
    load_coco,
    load_detection_data,
    load_segmentation_data,
    make_synthetic_cityscapes,
    make_synthetic_coco,
)
from acamkd_hf.models import DETECTION_PRESETS, SEGMENTATION_PRESETS

SEG_SIZE = (32, 64)


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    """A clean synthetic set in the Cityscapes layout (8 train, 4 val, 8 classes); tests corrupt copies of it."""
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("cityscapes"), num_train=8, num_val=4, image_size=SEG_SIZE)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """A clean synthetic set in the COCO layout (6 train, 3 val, 64x64)."""
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=6, num_val=3, image_size=(64, 64))


def _copy(root: Path, tmp_path: Path, name: str = "data") -> Path:
    return Path(shutil.copytree(root, tmp_path / name))


def _flags(tmp_path: Path, dataset: Path | None = None, *extra: str, out: str = "student") -> list[str]:
    data = ["--dataset", str(dataset)] if dataset is not None else [
        "--synthetic_dir", str(tmp_path / "synthetic"), "--synthetic_num_train", "8", "--synthetic_num_val", "4",
        "--synthetic_image_size", *map(str, SEG_SIZE)]  # fmt: skip
    return ["--output_dir", str(tmp_path / out), *data, "--num_train_epochs", "1", "--per_device_train_batch_size",
            "4", "--per_device_eval_batch_size", "4", "--disable_tqdm", "true", "--compare_student_alone", "false",
            "--report_to", "none", "--save_strategy", "no", *extra]  # fmt: skip


def _nothing_trained(tmp_path: Path, out: str = "student") -> bool:
    return not (tmp_path / f"{out}_teacher").exists() and not (tmp_path / out).exists()


def _cityscapes_files(root: Path, split: str, kind: str) -> list[Path]:
    top, suffix = ("leftImg8bit", "_leftImg8bit.png") if kind == "image" else ("gtFine", "_gtFine_labelIds.png")
    return sorted((root / top / split).glob(f"*/*{suffix}"))


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------- 1. distillation points
@pytest.mark.parametrize("task, wrong, available", [("segmentation", "stage9", "logits, stage1"),
                                                    ("detection", "logits", "neck1")])  # fmt: skip
def test_unknown_distillation_point_lists_the_available_ones(distill_script, tmp_path, cityscapes, coco, task, wrong, available):
    dataset = cityscapes if task == "segmentation" else coco
    with pytest.raises(ValueError, match=rf"the teacher '[^']+' cannot be distilled at \['{wrong}'\]: Unknown distillation "
                                         rf"point '{wrong}' for \w+; available: {available}.*\. Pass --distillation_points "
                                         r"with names both models have"):  # fmt: skip
        distill_script.run(_flags(tmp_path, dataset, "--task", task, "--distillation_points", wrong))
    assert _nothing_trained(tmp_path)


# ------------------------------------------------------------------------------------------------- 2. label sets
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_a_teacher_with_another_label_set_is_refused_where_class_outputs_are_compared(distill_script, tmp_path, cityscapes, coco, task):
    """Segmentation distils the logits (class outputs): refused. Detection distils neck features, allowed there
    (tests/test_pretrained_students.py), but --inherit_from_teacher would copy its class heads: refused. A student
    with another label set is not refused: it gets the dataset's (tests/test_pretrained_students.py)."""
    other = {0: "cat", 1: "dog"}
    presets = SEGMENTATION_PRESETS if task == "segmentation" else DETECTION_PRESETS
    name = "tiny-segformer" if task == "segmentation" else "tiny-rtdetr-resnet"
    folder = tmp_path / "other-labels"
    presets[name](other).save_pretrained(folder)
    dataset = cityscapes if task == "segmentation" else coco
    flags = _flags(tmp_path, dataset, "--task", task, "--teacher", str(folder))
    if task == "segmentation":
        expected = (rf"the teacher '{re.escape(str(folder))}' and the dataset have different label sets, and the "
                    r"distillation point logits compares class outputs: Label sets differ \(teacher: 2 classes, "
                    r"dataset: \d+ classes\)\. Only in teacher: 'cat', 'dog'\. .*\. Use a teacher trained on this label set")
    else:
        flags += ["--inherit_from_teacher", "true"]
        expected = (rf"--inherit_from_teacher copies the teacher's heads, but the teacher '{re.escape(str(folder))}' "
                    r"classifies other classes: Label sets differ .*Only in teacher: 'cat', 'dog'\. .*Pass "
                    r"--inherit_from_teacher false")
    with pytest.raises(ValueError, match=expected):
        distill_script.run(flags)
    assert _nothing_trained(tmp_path)


# --------------------------------------------------------------------------------------------- 3. corrupt images
def test_truncated_and_non_image_files_in_a_cityscapes_folder_fail_at_load(distill_script, tmp_path, cityscapes):
    root = _copy(cityscapes, tmp_path)
    truncated = _cityscapes_files(root, "train", "image")[3]
    _cut_in_half(truncated)
    text = _cityscapes_files(root, "val", "label")[1]
    text.write_text("this is not a PNG\n")
    with pytest.raises(ValueError) as info:
        distill_script.run(_flags(tmp_path, root))
    message = str(info.value)
    assert message.startswith(f"2 of the 24 image and label files of the Cityscapes folder {root} cannot be read")
    assert f"{truncated} is a truncated or corrupt PNG" in message
    assert f"{text} is not an image file" in message
    assert "Replace them with intact copies" in message and "or remove each broken file together with its partner" in message
    assert _nothing_trained(tmp_path)


def test_truncated_and_non_image_files_in_a_coco_folder_fail_at_load(distill_script, tmp_path, coco):
    root = _copy(coco, tmp_path)
    truncated = sorted((root / "train2017").glob("*.jpg"))[2]
    _cut_in_half(truncated)
    empty = min((root / "val2017").glob("*.jpg"))
    empty.write_bytes(b"")
    with pytest.raises(ValueError) as info:
        distill_script.run(_flags(tmp_path, root, "--task", "detection"))
    message = str(info.value)
    # The train split is read first: its broken file stops the run (the val one would be named on the next try).
    assert f"1 of the 6 images of {root / 'annotations' / 'instances_train2017.json'} cannot be read" in message
    assert f"{truncated} is a truncated or corrupt JPEG" in message
    assert "or remove those images (and their annotations) from the json" in message
    (root / "train2017" / truncated.name).write_bytes((coco / "train2017" / truncated.name).read_bytes())
    with pytest.raises(ValueError, match=rf"{re.escape(str(empty))} is an empty file \(0 bytes\)"):
        load_coco(root)
    assert _nothing_trained(tmp_path)


def test_valid_files_with_bytes_after_their_end_are_not_reported(tmp_path, cityscapes, coco):
    """Data after a PNG's IEND or a JPEG's EOI is valid (some writers append metadata): such files are read in full
    once and accepted, not reported as truncated."""
    city = _copy(cityscapes, tmp_path, "city")
    image = _cityscapes_files(city, "train", "image")[0]
    image.write_bytes(image.read_bytes() + b"trailing metadata" * 8)
    assert len(load_segmentation_data(city).dataset["train"]) == 8
    detection = _copy(coco, tmp_path, "coco")
    jpeg = min((detection / "train2017").glob("*.jpg"))
    jpeg.write_bytes(jpeg.read_bytes() + bytes(100))
    assert len(load_coco(detection).dataset["train"]) == 6


def _damage_inside(path: Path) -> None:
    """Flip bytes in the middle of the compressed data: header and end of the file stay intact."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 32] = bytes(b ^ 0xFF for b in data[middle : middle + 32])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_damaged_inside_fails_when_read_naming_the_file(distill_script, tmp_path, cityscapes, workers):
    """A file whose header and end are intact passes the load-time check; decoding it during training (in the main
    process or a DataLoader worker) raises an error naming the file, not a bare PIL error."""
    root = _copy(cityscapes, tmp_path)
    damaged = _cityscapes_files(root, "train", "image")[-1]  # not the first one, which sizes the crops
    _damage_inside(damaged)
    with pytest.raises(ValueError) as info:
        distill_script.run(_flags(tmp_path, root, "--dataloader_num_workers", str(workers)))
    message = str(info.value)
    assert f"the image {damaged} cannot be decoded" in message
    assert "Replace it with an intact copy, or remove the example (image and its labels) from the dataset." in message
    assert (tmp_path / "student_teacher").exists()  # found while the teacher trained: no cheap check sees it


def test_a_coco_image_damaged_inside_fails_when_read_naming_the_file(tmp_path, coco):
    """Detection: a JPEG whose two ends are intact passes the load-time check; reading it for training names it."""
    from acamkd_hf.models import default_detection_image_processor
    from acamkd_hf.tasks import TASKS

    root = _copy(coco, tmp_path)
    damaged = sorted((root / "train2017").glob("*.jpg"))[1]
    data = damaged.read_bytes()
    damaged.write_bytes(data[:3] + bytes(len(data) - 5) + data[-2:])  # SOI ... EOI, nothing readable between
    loaded = load_detection_data(root)
    train, _ = TASKS["detection"]().datasets(loaded, default_detection_image_processor("rt_detr", 64), None)
    assert train[0]["labels"]["boxes"].shape[-1] == 4  # the others are read as before
    with pytest.raises(ValueError, match=re.escape(f"the image {damaged} cannot be decoded (UnidentifiedImageError")):
        train[1]


def test_a_cityscapes_label_map_of_another_size_than_its_image_fails_at_load(tmp_path, cityscapes):
    root = _copy(cityscapes, tmp_path)
    label = _cityscapes_files(root, "train", "label")[2]
    image = _cityscapes_files(root, "train", "image")[2]
    Image.open(label).resize((SEG_SIZE[1] // 2, SEG_SIZE[0] // 2), Image.NEAREST).save(label)
    with pytest.raises(ValueError, match=re.escape(
        f"1 label map(s) of the Cityscapes folder {root} differ in size (WxH) from their image: {image} is 64x32 but "
        f"{label} is 32x16. Replace the wrong files, or remove those pairs."
    )):  # fmt: skip
        load_segmentation_data(root)


# ----------------------------------------------------------------------------------------------- 4. label values
NINETEEN = {i: f"class{i}" for i in range(19)}


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_parquet_segmentation(folder: Path, num_train: int, bad: dict[int, int] | None = None, num_val: int = 4) -> None:
    """A local dataset in the Hub's parquet layout (data/{split}-00000-of-00001.parquet + id2label.json, 19 classes),
    maps stored with their file names. `bad`: train example index -> a value written into its map."""
    rng = np.random.default_rng(0)

    def split(name: str, n: int) -> datasets.Dataset:
        images, labels = [], []
        for i in range(n):
            label = rng.integers(0, 19, SEG_SIZE, dtype=np.uint8)
            label[0, :] = 255  # ignore pixels are fine
            if name == "train" and bad and i in bad:
                label[5:9, 10:20] = bad[i]
            images.append({"path": f"{name}_{i:04d}.png", "bytes": _png_bytes(rng.integers(0, 255, (*SEG_SIZE, 3), dtype=np.uint8))})
            labels.append({"path": f"{name}_{i:04d}_label.png", "bytes": _png_bytes(label)})
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    (folder / "data").mkdir(parents=True)
    split("train", num_train).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    split("validation", num_val).to_parquet(str(folder / "data" / "validation-00000-of-00001.parquet"))
    (folder / "id2label.json").write_text(json.dumps({str(k): v for k, v in NINETEEN.items()}))


def test_label_values_outside_the_classes_fail_at_load_naming_the_example(distill_script, tmp_path):
    folder = tmp_path / "parquet"
    _write_parquet_segmentation(folder, num_train=6, bad={2: 40})
    with pytest.raises(ValueError) as info:
        distill_script.run(_flags(tmp_path, folder))
    assert str(info.value).startswith(
        "the label map train_0002_label.png (example 2 of the 'train' split) has values 40 outside the 19 classes "
        "(0..18) and the ignore index 255. Map them to class ids or to 255"
    )
    assert _nothing_trained(tmp_path)
    # The same set without the bad value (255 and 18 in every map) loads.
    _write_parquet_segmentation(tmp_path / "good", num_train=6)
    assert len(load_segmentation_data(tmp_path / "good").dataset["train"]) == 6


def test_label_values_beyond_the_first_examples_fail_when_read_naming_the_file(distill_script, tmp_path):
    """Only the first 8 maps of a split are checked at load time; the others when the transforms read them."""
    folder = tmp_path / "parquet"
    _write_parquet_segmentation(folder, num_train=10, bad={9: 19})
    with pytest.raises(ValueError, match=re.escape(
        "the label map train_0009_label.png has values 19 outside the 19 classes (0..18) and the ignore index 255."
    )):  # fmt: skip
        distill_script.run(_flags(tmp_path, folder, "--method", "none"))


def test_cityscapes_values_outside_its_table_are_an_error_naming_the_file_or_counted_and_ignored(tmp_path, cityscapes, caplog):
    """A labelIds map with a value Cityscapes does not define (here 250) was once mapped to ignore without a word: now
    an error naming the file and the value; with --ignore_unknown_label_values, ignored pixels counted in the log.
    Void labelIds (0..6, no trainId) stay ignore pixels, as in Cityscapes' own table."""
    from acamkd_hf.data import SegmentationTransforms
    from acamkd_hf.data.checks import lazily_decoded
    from acamkd_hf.models import default_image_processor
    from acamkd_hf.tasks import SegmentationTask

    root = _copy(cityscapes, tmp_path)
    label_path = _cityscapes_files(root, "val", "label")[0]
    raw = np.array(Image.open(label_path))
    raw[:4, :8] = 250
    raw[4:6, :8] = 3  # a void labelId: no trainId, a legitimate ignore pixel
    Image.fromarray(raw).save(label_path)
    data = load_segmentation_data(root)

    def first_labels(stored_values):
        transform = SegmentationTransforms(default_image_processor(SEG_SIZE), train=False, label_lookup=data.label_lookup,
                                           num_labels=data.num_labels, stored_values=stored_values)  # fmt: skip
        return lazily_decoded(data.dataset["validation"]).with_transform(transform)[0]["labels"]

    with pytest.raises(ValueError, match=re.escape(f"the label map {label_path} holds values 250 (32 pixels) that "
                                                   "the dataset's label table does not define")):  # fmt: skip
        first_labels(data.stored_values)
    labels = first_labels(None)  # --ignore_unknown_label_values
    assert (labels[:6, :8] == 255).all() and int(labels[labels != 255].max()) < data.num_labels
    data_args = type("Args", (), {"ignore_unknown_label_values": True, "crop_size": None})()
    [line] = SegmentationTask().recipe_warnings(data, data_args)
    assert line.startswith("validation: the first 4 label maps hold values outside the dataset's label table: 250 (32 pixels)")


# ------------------------------------------------------------------------------------------------ 5. COCO json
def _edit_json(root: Path, split: str, edit) -> None:
    path = root / "annotations" / f"instances_{split}.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))  # NaN is written as NaN, which json (and pycocotools) read back


def test_a_coco_image_missing_on_disk_is_named(distill_script, tmp_path, coco):
    root = _copy(coco, tmp_path)
    missing = sorted((root / "train2017").glob("*.jpg"))[4]
    missing.unlink()
    with pytest.raises(ValueError) as info:
        distill_script.run(_flags(tmp_path, root, "--task", "detection"))
    assert str(info.value) == (
        f"{root / 'annotations' / 'instances_train2017.json'}: 1 of its 6 images are not on disk: image 5 "
        f"({missing.name}): file not found: {missing}. Put the files in {root / 'train2017'}, or remove those images "
        "(and their annotations) from the json."
    )
    assert _nothing_trained(tmp_path)


@pytest.mark.parametrize(
    "bbox, problem",
    [([10, 10, -4, 8], "its width or height is negative"),
     ([10, float("nan"), 4, 8], "not all values are finite"),
     ([10, 10, 4], "it is not 4 numbers"),
     (None, "it is not 4 numbers")],
)  # fmt: skip
def test_a_broken_coco_box_is_named(distill_script, tmp_path, coco, bbox, problem):
    root = _copy(coco, tmp_path)
    chosen = {}

    def edit(document):
        annotation = document["annotations"][3]
        annotation["bbox"] = bbox
        chosen.update(id=annotation["id"], image=annotation["image_id"])

    _edit_json(root, "val2017", edit)
    with pytest.raises(ValueError) as info:
        distill_script.run(_flags(tmp_path, root, "--task", "detection"))
    message = str(info.value)
    assert message.startswith(f"{root / 'annotations' / 'instances_val2017.json'}: annotation {chosen['id']} "
                              f"(image {chosen['image']}) has the broken box")  # fmt: skip
    assert f"{problem}. Boxes are [x, y, width, height] in pixels" in message
    assert message.endswith("fix or remove that annotation.")
    assert _nothing_trained(tmp_path)


def test_a_coco_category_not_in_the_categories_is_named(tmp_path, coco):
    root = _copy(coco, tmp_path)
    _edit_json(root, "train2017", lambda d: d["annotations"][0].update(category_id=77))
    first = json.loads((coco / "annotations" / "instances_train2017.json").read_text())["annotations"][0]
    with pytest.raises(ValueError, match=(
        rf"annotation {first['id']} \(image {first['image_id']}\) has category 77, not among the categories "
        r"\[1, 3, 5, 7, 9, 11\]\. Add that category to the json's categories, or fix or remove the annotation\."
    )):  # fmt: skip
        load_detection_data(root)


def test_coco_boxes_outside_the_image_are_clipped_or_dropped_with_a_warning_naming_them(tmp_path, coco, caplog):
    """What COCO tooling does (DETR's ConvertCocoPolysToMask, detectron2): clip to the image, drop what is left empty."""
    root = _copy(coco, tmp_path)
    ids = {}

    def edit(document):
        first, second = document["annotations"][0], document["annotations"][1]
        first["bbox"] = [50, 50, 30, 30]  # partly outside the 64 x 64 image -> [50, 50, 14, 14]
        second["bbox"] = [70, 10, 5, 5]  # entirely outside -> dropped
        ids.update(clipped=(first["id"], first["image_id"]), dropped=(second["id"], second["image_id"]))

    _edit_json(root, "train2017", edit)
    with caplog.at_level(logging.WARNING, logger="acamkd_hf.data.coco"):
        data = load_coco(root)
    line = next(r.getMessage() for r in caplog.records if "instances_train2017.json" in r.getMessage())
    assert f"1 box(es) clipped to the image (e.g. annotation {ids['clipped'][0]} (image {ids['clipped'][1]}))" in line
    assert f"1 dropped (non-positive width or height after clipping) (e.g. annotation {ids['dropped'][0]}" in line
    objects = next(r["objects"] for r in data.dataset["train"] if r["image_id"] == ids["clipped"][1])
    assert [50, 50, 14, 14] in objects["bbox"] and ids["dropped"][0] not in objects["id"]


# ------------------------------------------------------------------------------------------- 6. empty data / splits
def test_a_cityscapes_split_folder_without_images_names_the_pattern(distill_script, tmp_path, cityscapes):
    root = _copy(cityscapes, tmp_path)
    for path in _cityscapes_files(root, "train", "image"):
        path.unlink()
    pattern = root / "leftImg8bit" / "train" / "*/*_leftImg8bit.png"
    expected = f"no Cityscapes images found for the train split: searched {pattern}. Put the train images there"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        distill_script.run(_flags(tmp_path, root))
    assert _nothing_trained(tmp_path)


def test_a_cityscapes_folder_without_a_validation_split_names_the_pattern(distill_script, tmp_path, cityscapes):
    root = _copy(cityscapes, tmp_path)
    shutil.rmtree(root / "leftImg8bit" / "val")
    shutil.rmtree(root / "gtFine" / "val")
    with pytest.raises(FileNotFoundError) as info:
        distill_script.run(_flags(tmp_path, root))
    assert str(info.value) == (
        f"{root} has no validation split: searched {root / 'leftImg8bit' / 'val' / '*' / '*_leftImg8bit.png'}. Put "
        "the val images there and their label maps in gtFine/val/ (the Cityscapes layout)."
    )
    assert _nothing_trained(tmp_path)


def test_a_coco_json_without_images_names_the_json_and_split(distill_script, tmp_path, coco):
    root = _copy(coco, tmp_path)
    _edit_json(root, "train2017", lambda d: d.update(images=[], annotations=[]))
    json_path = root / "annotations" / "instances_train2017.json"
    with pytest.raises(ValueError, match=re.escape(f"{json_path} lists no images, so the 'train2017' split is empty.")):
        distill_script.run(_flags(tmp_path, root, "--task", "detection"))
    assert _nothing_trained(tmp_path)


def test_a_coco_folder_without_a_validation_json_names_the_jsons_searched(distill_script, tmp_path, coco):
    root = _copy(coco, tmp_path)
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(
        f"no validation split in the COCO folder {root}: searched {root / 'annotations'}/instances_"
        "{val2017,val2014,val,validation}.json (present: instances_train2017.json). Add that json with its image "
        "folder, or name an existing split with --validation_split"
    )):  # fmt: skip
        distill_script.run(_flags(tmp_path, root, "--task", "detection"))
    assert _nothing_trained(tmp_path)


def test_an_empty_split_of_a_dataset_folder_is_named(tmp_path):
    folder = tmp_path / "parquet"
    _write_parquet_segmentation(folder, num_train=3, num_val=0)
    with pytest.raises(ValueError, match=re.escape(f"the 'validation' split of {folder} has no examples.")):
        load_segmentation_data(folder)


# -------------------------------------------------------------------------------------------------- 7. model paths
@pytest.mark.parametrize("task", ["segmentation", "detection"])
@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_model_path_that_does_not_exist_is_named(distill_script, tmp_path, cityscapes, coco, task, role):
    dataset = cityscapes if task == "segmentation" else coco
    missing = f"./no-such-{role}"
    with pytest.raises(FileNotFoundError, match=rf"'{re.escape(missing)}' is not a .*preset name and no such folder "
                                                r"exists\..* Presets: .*tiny-"):  # fmt: skip
        distill_script.run(_flags(tmp_path, dataset, "--task", task, f"--{role}", missing))
    assert _nothing_trained(tmp_path)


# ------------------------------------------------------------------------------------------------ 8. output folder
def test_an_output_dir_under_a_file_fails_before_the_data_is_read(distill_script, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match=re.escape(
        f"the output directory {blocker / 'run'} cannot be created: {blocker} is a file, not a folder. Choose another "
        "--output_dir"
    )):  # fmt: skip
        distill_script.run(_flags(tmp_path, None, out="a_file/run"))
    assert not (tmp_path / "synthetic").exists()  # checked first: not even the synthetic set was written


def test_a_teacher_output_dir_that_cannot_be_written_fails_before_anything_trains(distill_script, tmp_path):
    """The embedded default trains its teacher into <output_dir>_teacher: that folder is checked at the start too."""
    (tmp_path / "student_teacher").write_text("in the way")
    with pytest.raises(PermissionError, match=re.escape(f"{tmp_path / 'student_teacher'} is a file, not a folder")):
        distill_script.run(_flags(tmp_path, None))
    assert not (tmp_path / "synthetic").exists() and not (tmp_path / "student").exists()


def test_a_read_only_output_dir_fails_before_the_data_is_read(distill_script, tmp_path):
    """A folder that refuses new files: a 0o500 folder, or for root (whom permission bits do not stop) sysfs, where
    nobody can create a file."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
    elif Path("/sys/kernel").is_dir():
        locked = Path("/sys/kernel")
    else:
        pytest.skip("running as root without sysfs: no folder that refuses root's files")
    try:
        with pytest.raises(PermissionError, match=re.escape(
            f"the output directory {locked / 'run'} is not writable: {locked}, where it would be created, refuses new "
            "files (Permission denied). Choose a writable --output_dir, or give yourself write permission there."
        )):  # fmt: skip
            distill_script.run(_flags(tmp_path, None, out=str(locked / "run")))  # an absolute out replaces tmp_path
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(0o700)
    assert not (tmp_path / "synthetic").exists()
