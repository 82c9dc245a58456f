"""What differs between tasks in an end-to-end run: data, models, image processor, transforms, collator, metric.

``scripts/distill.py`` is task-agnostic; it asks a task object for each of these. A task is a plain class with the
same methods; :data:`TASKS` is the ``--task`` name -> class dict the CLI needs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoImageProcessor

from .data import (
    SYNTHETIC_CITYSCAPES_VERSION,
    DetectionTransforms,
    SegmentationTransforms,
    collate_detection,
    collate_segmentation,
    is_cityscapes_layout,
    load_detection_data,
    load_segmentation_data,
    make_synthetic_cityscapes,
    make_synthetic_coco,
)
from .data.checks import decode_image, lazily_decoded
from .data.labels import count_unknown_values
from .metrics import CocoDetectionMetrics, StreamingSegmentationMetrics, detection_labels_for_metrics
from .models import (
    DETECTION_PRESETS,
    SEGMENTATION_PRESETS,
    default_detection_image_processor,
    default_image_processor,
    detection_family,
    load_detection_model,
    load_segmentation_model,
)

logger = logging.getLogger(__name__)

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "acamkd_hf")


def first_image_size(dataset) -> tuple[int, int]:
    """``(H, W)`` of the first example's image (an image column; a file that cannot be decoded is named)."""
    width, height = decode_image(lazily_decoded(dataset.select_columns(["image"]), ["image"])[0]["image"]).size
    return int(height), int(width)


def truncate(dataset_dict, max_train: int | None, max_eval: int | None) -> None:
    """Keeps the first ``max_train`` / ``max_eval`` examples of the splits (debugging, quick runs)."""
    for split, limit in (("train", max_train), ("validation", max_eval)):
        if limit is not None:
            if limit < 1:
                raise ValueError(f"--max_{'train' if split == 'train' else 'eval'}_samples must be at least 1, got {limit}.")
            dataset_dict[split] = dataset_dict[split].select(range(min(limit, len(dataset_dict[split]))))


def require_splits(
    dataset_dict, dataset: str, searched: dict[str, str] | None = None, fixes: dict[str, str] | None = None
) -> None:
    """A run needs a training and a validation split, each with examples. ``searched``: split -> where the loader
    looked for it, named in the error (the folder loaders leave out a split they do not find); ``fixes``: split ->
    what to do, instead of the default (name another split)."""
    for split in ("train", "validation"):
        where = f": searched {searched[split]}" if searched and split in searched else ""
        fix = (fixes or {}).get(split)
        if split not in dataset_dict:
            hold_out = " (or hold out part of the training split with --validation_fraction 0.1)" if split == "validation" else ""
            raise FileNotFoundError(
                f"{dataset} has no {split} split{where}. "
                + (fix or f"Name the split to use with --{'train' if split == 'train' else 'validation'}_split{hold_out}.")
            )
        if len(dataset_dict[split]) == 0:
            raise ValueError(f"the {split} split of {dataset} has no examples{where}. {fix or 'Add examples to it.'}")


def synthetic_dataset(task, data_args, seed: int, layout: str, marker: str, write, version: int = 1) -> str:
    """Folder of the task's synthetic set in its real on-disk layout, written by ``write`` unless already there
    (``marker`` is a sub-folder a finished set has). Sizes default to the task's. ``version``: the generator's (in
    the cached folder's name from 2 on, so a set an older generator wrote is not reused)."""
    height, width = data_args.synthetic_image_size or task.synthetic_image_size
    classes = data_args.synthetic_num_classes or task.synthetic_num_classes
    root = data_args.synthetic_dir or os.path.join(
        CACHE_DIR,
        f"synthetic_{layout}_{data_args.synthetic_num_train}_{data_args.synthetic_num_val}_{height}x{width}"
        f"_{classes}c_seed{seed}" + (f"_v{version}" if version > 1 else ""),
    )
    if not os.path.isdir(os.path.join(root, marker)):
        logger.info(f"writing a synthetic {layout}-layout dataset to {root}")
        write(
            root,
            num_train=data_args.synthetic_num_train,
            num_val=data_args.synthetic_num_val,
            image_size=(height, width),
            num_classes=classes,
            seed=seed,
        )
    return root


def dataset_origin(dataset: str | None) -> dict[str, Any]:
    """Where a run's data comes from, for the record and the model card: ``{"origin": "synthetic" | "local" | "hub",
    "layout": "Cityscapes" | "COCO" | None}``. A folder with this package's synthetic marker (``synthetic.json``,
    written by ``make_synthetic_cityscapes`` / ``make_synthetic_coco``) is synthetic however it was passed."""
    from .data.coco import is_coco_layout

    if dataset is None:
        return {"origin": "synthetic", "layout": None}
    folder = os.path.expanduser(str(dataset))
    if not os.path.isdir(folder):
        return {"origin": "hub", "layout": None}
    layout = "Cityscapes" if is_cityscapes_layout(folder) else "COCO" if is_coco_layout(folder) else None
    marker = Path(folder, "synthetic.json")
    try:
        synthetic = str(json.loads(marker.read_text()).get("generator", "")).startswith("acamkd_hf.data.synthetic")
    except (OSError, ValueError, AttributeError):  # no marker (or not ours)
        synthetic = False
    return {"origin": "synthetic" if synthetic else "local", "layout": layout}


class Task:
    """What both tasks share: models come from the task's presets (built with the dataset's labels) or, for any
    other name, from the Hub / a folder through the task's loader."""

    presets: dict = {}
    model_loader = None  # the task's load_*_model(name_or_path, id2label, *, trust_remote_code, revision, role)

    def load_model(
        self,
        name_or_path: str,
        id2label: dict[int, str],
        *,
        trust_remote_code: bool,
        revision: str | None,
        role: str = "student",
        preset_options: dict | None = None,
    ):
        """A preset built with the dataset's labels (``preset_options``: its extra keyword arguments), or a loaded
        checkpoint: the student with the dataset's labels (its class heads start anew when they differ, as in
        transformers' examples), the teacher as it is (its label set is checked against the distillation points)."""
        if name_or_path in self.presets:
            return type(self).model_loader(
                name_or_path, id2label, trust_remote_code=trust_remote_code, revision=revision, **(preset_options or {})
            )
        return type(self).model_loader(
            name_or_path,
            id2label if role == "student" else None,
            trust_remote_code=trust_remote_code,
            revision=revision,
            role=role,
        )

    def recipe_warnings(self, data, data_args) -> list[str]:
        """Settings of the recipe that do not fit the data (each said once, by the CLI)."""
        return []


class SegmentationTask(Task):
    """Semantic segmentation: Cityscapes-layout folders or image + map datasets, mIoU."""

    name = "segmentation"
    pipeline_tag = "image-segmentation"
    title = "semantic-segmentation"
    auto_class = "AutoModelForSemanticSegmentation"
    #: (metric key without the eval_ prefix, title) for the final table and the model card; the first is the headline
    metrics = (("mean_iou", "mIoU"), ("overall_accuracy", "pixel accuracy"), ("mean_accuracy", "mean accuracy"))
    presets = SEGMENTATION_PRESETS
    model_loader = staticmethod(load_segmentation_model)
    default_teacher = "small-segformer"
    default_student = "tiny-segformer"
    synthetic_image_size = (64, 128)
    synthetic_num_classes = 8
    #: Trainer settings the task needs whatever the recipe says
    required_training_args = {"batch_eval_metrics": True}  # mIoU streams through a confusion matrix

    def prepare_data(self, data_args, seed: int):
        """``(SegmentationData, data_args)``: a synthetic Cityscapes-layout set is written first when no dataset is
        given, and the returned copy of ``data_args`` names its folder (``data_args`` itself is left as given)."""
        if data_args.dataset is None:
            data_args = replace(data_args, dataset=synthetic_dataset(
                self, data_args, seed, "cityscapes", "gtFine", make_synthetic_cityscapes, SYNTHETIC_CITYSCAPES_VERSION
            ))
        splits = {"train_split": data_args.train_split} if data_args.train_split else {}
        data = load_segmentation_data(
            data_args.dataset,
            id2label=data_args.id2label,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            validation_split=data_args.validation_split,
            validation_fraction=data_args.validation_fraction,
            reduce_labels=getattr(data_args, "reduce_labels", False),
            **splits,
        )
        # A Cityscapes folder leaves out a split whose folder is absent; a run needs both.
        root = os.path.join(data_args.dataset, "leftImg8bit")
        searched = {
            "train": os.path.join(root, "train", "*", "*_leftImg8bit.png"),
            "validation": os.path.join(root, "val", "*", "*_leftImg8bit.png"),
        } if is_cityscapes_layout(data_args.dataset) else None
        fixes = {
            split: f"Put the {folder} images there and their label maps in gtFine/{folder}/ (the Cityscapes layout)."
            for split, folder in (("train", "train"), ("validation", "val"))
        }
        require_splits(data.dataset, data_args.dataset, searched, fixes if searched else None)
        truncate(data.dataset, data_args.max_train_samples, data_args.max_eval_samples)
        return data, data_args

    @staticmethod
    def _unknown_label_values(data, first: int = 8) -> list[str]:
        """One line per split: the values outside the dataset's label table in its first maps (ignored pixels)."""
        if data.stored_values is None:
            return []
        lines = []
        for split, dataset in data.dataset.items():
            head = lazily_decoded(dataset.select_columns(["label"]).select(range(min(first, len(dataset)))), ["label"])
            counts: dict[int, int] = {}
            for item in head["label"]:
                for value, pixels in count_unknown_values(decode_image(item, "label map"), data.stored_values).items():
                    counts[value] = counts.get(value, 0) + pixels
            if counts:
                listed = ", ".join(f"{value} ({pixels} pixels)" for value, pixels in sorted(counts.items()))
                lines.append(f"{split}: the first {len(head)} label maps hold values outside the dataset's label table: "
                             f"{listed}; ignored in training and evaluation (--ignore_unknown_label_values)")
        return lines

    def image_processor(self, student: str, data, *, trust_remote_code: bool, revision: str | None,
                        input_size: int | None = None):
        """The student's own image processor (Hub/folder) when it has one, else the default for the data's size.
        (``input_size`` is detection's ``--image_size``; the CLI refuses it for segmentation.)"""
        processor = _pretrained_image_processor(student, self.presets, trust_remote_code=trust_remote_code, revision=revision)
        return processor or default_image_processor(first_image_size(data.dataset["validation"]))

    def recipe_warnings(self, data, data_args) -> list[str]:
        """A training crop larger than the images (the crops are then mostly padding, which the loss ignores); with
        --ignore_unknown_label_values, the unknown label values of the first maps of each split, counted."""
        warnings = self._unknown_label_values(data) if data_args.ignore_unknown_label_values else []
        if not data_args.crop_size:
            return warnings
        crop_h, crop_w = (int(v) for v in data_args.crop_size)
        height, width = first_image_size(data.dataset["train"])
        if crop_h <= height and crop_w <= width:
            return warnings
        return [
            *warnings,
            f"--crop_size {crop_h} {crop_w} is larger than the training images ({height}x{width}): each crop is the "
            f"(randomly scaled) image padded with ignored pixels. Pass --crop_size {min(crop_h, height)} "
            f"{min(crop_w, width)} or smaller for crops cut from the images."
        ]

    def datasets(self, data, image_processor, data_args):
        """(train, validation) with on-the-fly transforms: random scale/crop/flip for training; eval untouched."""
        crop_size = tuple(data_args.crop_size) if data_args.crop_size else first_image_size(data.dataset["train"])
        stored_values = None if data_args.ignore_unknown_label_values else data.stored_values
        # Undecoded files go to the transforms, which decode them (a broken file is named) and check label values.
        train = lazily_decoded(data.dataset["train"]).with_transform(
            SegmentationTransforms(
                image_processor,
                train=True,
                crop_size=crop_size,
                scale_range=tuple(data_args.scale_range),
                label_lookup=data.label_lookup,
                ignore_index=data.ignore_index,
                num_labels=data.num_labels,
                stored_values=stored_values,
            )
        )
        evaluation = lazily_decoded(data.dataset["validation"]).with_transform(
            SegmentationTransforms(
                image_processor,
                train=False,
                label_lookup=data.label_lookup,
                ignore_index=data.ignore_index,
                num_labels=data.num_labels,
                stored_values=stored_values,
            )
        )
        return train, evaluation

    collate = staticmethod(collate_segmentation)
    labels_for_metrics = None  # label maps gather across processes as they are

    def compute_metrics(self, data, image_processor):
        return StreamingSegmentationMetrics(data.id2label, ignore_index=data.ignore_index)


def _pretrained_image_processor(student: str, presets, *, trust_remote_code: bool, revision: str | None):
    """The student's own image processor when it is a Hub id or folder that has one, else None."""
    if student in presets:
        return None
    try:
        return AutoImageProcessor.from_pretrained(student, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        logger.info(f"{student} has no image processor; using the default one")
        return None


class DetectionTask(Task):
    """Object detection (DETR family): COCO-layout folders or Hub detection datasets, COCO mAP (pycocotools)."""

    name = "detection"
    pipeline_tag = "object-detection"
    title = "object-detection"
    auto_class = "AutoModelForObjectDetection"
    metrics = (("map", "mAP"), ("map_50", "AP50"), ("map_75", "AP75"), ("map_small", "AP_S"), ("map_medium", "AP_M"),
               ("map_large", "AP_L"))
    presets = DETECTION_PRESETS
    model_loader = staticmethod(load_detection_model)
    # RT-DETR learns the synthetic set within the CPU budget; a tiny DETR (one stride-32 level, slow Hungarian
    # convergence) does not.
    default_teacher = "tiny-rtdetr-resnet"
    default_student = "tiny-rtdetr-resnet-student"
    synthetic_image_size = (128, 128)
    synthetic_num_classes = 6
    required_training_args = {"batch_eval_metrics": True, "eval_do_concat_batches": False}

    def prepare_data(self, data_args, seed: int):
        """``(DetectionData, data_args)``: a synthetic COCO-layout set is written first when no dataset is given, and
        the returned copy of ``data_args`` names its folder (``data_args`` itself is left as given)."""
        synthetic = data_args.dataset is None
        if synthetic:
            data_args = replace(data_args, dataset=synthetic_dataset(self, data_args, seed, "coco", "annotations",
                                                                     make_synthetic_coco))
        data = load_detection_data(
            data_args.dataset,
            id2label=data_args.id2label,
            train_split=data_args.train_split,
            validation_split=data_args.validation_split,
        )
        require_splits(data.dataset, data_args.dataset)
        truncate(data.dataset, data_args.max_train_samples, data_args.max_eval_samples)
        data.synthetic = synthetic
        return data, data_args

    def image_processor(self, student: str, data, *, trust_remote_code: bool, revision: str | None,
                        input_size: int | None = None):
        """The student's own processor (Hub/folder) when it has one, else the family's conventions
        (:func:`~acamkd_hf.models.default_detection_image_processor`); ``input_size`` (``--image_size``) overrides
        either's size. A preset on the synthetic set (square images) uses the set's side by default."""
        processor = _pretrained_image_processor(student, self.presets, trust_remote_code=trust_remote_code, revision=revision)
        if student in self.presets:
            family = detection_family(student)
            if input_size is None and data.synthetic:
                input_size = max(first_image_size(data.dataset["validation"]))
        else:  # a folder or Hub id: its config gives the family and the size rules that depend on the model
            family = AutoConfig.from_pretrained(student, trust_remote_code=trust_remote_code, revision=revision)
        if processor is None:
            return default_detection_image_processor(family, input_size)
        if input_size is not None:
            processor.size = default_detection_image_processor(family, input_size).size  # the family's convention
        return processor

    def datasets(self, data, image_processor, data_args):
        # Undecoded files go to the transforms, which decode them (a broken file is named).
        train = lazily_decoded(data.dataset["train"], ["image"]).with_transform(DetectionTransforms(image_processor, train=True))
        evaluation = lazily_decoded(data.dataset["validation"], ["image"]).with_transform(
            DetectionTransforms(image_processor, train=False)
        )
        return train, evaluation

    collate = staticmethod(collate_detection)
    labels_for_metrics = staticmethod(detection_labels_for_metrics)

    def compute_metrics(self, data, image_processor):
        return CocoDetectionMetrics(image_processor, data.ground_truth["validation"], data.label_to_category_id)


#: ``--task`` names.
TASKS: dict[str, type] = {"segmentation": SegmentationTask, "detection": DetectionTask}

__all__ = ["SegmentationTask", "DetectionTask", "TASKS", "dataset_origin", "first_image_size"]
