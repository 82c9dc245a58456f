"""Per-sample transforms for semantic segmentation, used with `dataset.with_transform(...)`.

Train: random scale -> pad to the crop size -> random crop -> random horizontal flip (mmseg's Cityscapes recipe
without photometric distortion). Eval: images are only normalised (optionally resized); labels keep their original
resolution, because mIoU is measured at label resolution (the metric upsamples the logits).

All randomness comes from torch's global RNG: `Trainer` checkpoints and restores it, and DataLoader workers derive
their torch seed from it (numpy is not re-seeded per worker, so numpy draws would repeat across workers and epochs).
Resumed and multi-worker runs therefore draw reproducible augmentations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .checks import decode_image, describe_source
from .labels import IGNORE_INDEX, check_label_values, label_array, lookup_is_safe

__all__ = ["SegmentationTransforms", "collate_segmentation"]


def _to_image_tensor(image: Any) -> torch.Tensor:
    """PIL image / HWC uint8 array -> float (3, H, W) in [0, 255]."""
    if hasattr(image, "convert"):  # PIL
        image = image.convert("RGB")
    array = np.array(image)  # a writable copy: torch.from_numpy warns on read-only PIL buffers
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return torch.from_numpy(array).permute(2, 0, 1).float()


class SegmentationTransforms:
    """Batch transform for `datasets.Dataset.with_transform`.

    Input: a batch dict with `image` (list of PIL RGB) and `label` (list of PIL single-channel maps).
    Output: `{"pixel_values": [float (3, h, w)], "labels": [long (h, w)]}`; train samples are `crop_size`, eval
    samples keep the label's resolution (the image is resized only when `eval_size` is given).

    image_processor: provides the normalisation (`do_rescale`/`rescale_factor`, `do_normalize`/`image_mean`/
        `image_std`; `do_flip_channel_order`: MobileViT's RGB -> BGR), e.g. the `SegformerImageProcessor` saved with
        the student. Its resizing is not used: sizes are the transform's business so that labels stay aligned. Its
        `do_reduce_labels` is not applied either: label maps change only through `label_lookup` (see
        `reduce_labels_lookup`), the one place labels are remapped.
    train: random scale / crop / flip when True.
    crop_size: (h, w) of training crops; None = no crop (then the scaled samples of a batch may differ in size and
        need a batch size of 1).
    scale_range: uniform range of the random scale factor, relative to the stored size.
    hflip: random horizontal flip with probability 0.5.
    label_lookup: uint8 (256,) table applied to the raw label map (e.g. labelId -> trainId).
    ignore_index: label of padded pixels.
    eval_size: optional (h, w) to resize eval *images* to (bilinear); labels are left untouched.
    num_labels: when given, every label map (after `label_lookup`) must hold only class ids 0..num_labels-1 and
        `ignore_index`; another value raises a ValueError naming the file (skipped when the lookup table can only
        produce such values, as Cityscapes' does).

    Images and maps may come decoded (PIL) or undecoded ({"path", "bytes"}, see `checks.lazily_decoded`); undecoded
    ones are decoded here, and a file that cannot be decoded raises a ValueError naming it.
    """

    def __init__(
        self,
        image_processor: Any,
        *,
        train: bool,
        crop_size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        label_lookup: np.ndarray | None = None,
        ignore_index: int = IGNORE_INDEX,
        eval_size: tuple[int, int] | None = None,
        num_labels: int | None = None,
        stored_values: np.ndarray | None = None,
    ):
        if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        if label_lookup is not None:
            label_lookup = np.asarray(label_lookup)
            if label_lookup.shape != (256,) or label_lookup.dtype != np.uint8:
                raise ValueError(
                    f"label_lookup must be uint8 of shape (256,), got {label_lookup.dtype} {label_lookup.shape}"
                )
        self.train = train
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip
        self.label_lookup = label_lookup
        self.stored_values = stored_values
        self.ignore_index = ignore_index
        self.eval_size = tuple(eval_size) if eval_size is not None else None
        self.num_labels = num_labels
        self.check_labels = num_labels is not None and not lookup_is_safe(label_lookup, num_labels, ignore_index)

        # Normalisation as the processor would do it: x * rescale_factor, then (x - mean) / std. Read once from the
        # processor's attributes, which both the torchvision and the PIL Segformer processors expose.
        do_rescale = getattr(image_processor, "do_rescale", True)
        self.rescale_factor = float(getattr(image_processor, "rescale_factor", 1 / 255)) if do_rescale else 1.0
        if getattr(image_processor, "do_normalize", True):
            # ImageNet statistics: the fallback when the processor has no image_mean / image_std
            mean = getattr(image_processor, "image_mean", None) or IMAGENET_DEFAULT_MEAN
            std = getattr(image_processor, "image_std", None) or IMAGENET_DEFAULT_STD
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).expand(3, 1, 1).clone()
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1).expand(3, 1, 1).clone()
        # MobileViT's processors feed BGR: `do_flip_channel_order` reverses the channels after rescaling.
        self.flip_channel_order = bool(getattr(image_processor, "do_flip_channel_order", False))

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """float (3, H, W) RGB in [0, 255] -> normalised float (3, H, W), BGR when the processor flips the channels."""
        image = (image * self.rescale_factor - self.mean) / self.std
        return image.flip(0) if self.flip_channel_order else image

    def _train_sample(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image float (3, H, W) in [0, 255], label long (H, W) -> both cropped to `crop_size`."""
        height, width = label.shape
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(()).item()
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        if (new_h, new_w) != (height, width):
            image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
            # nearest keeps labels valid class ids (no blending across a boundary)
            label = F.interpolate(label[None, None].float(), size=(new_h, new_w), mode="nearest")[0, 0].long()

        if self.crop_size is not None:
            # Crop window on the image padded (bottom/right) up to the crop size; cut it from the unpadded image
            # and pad afterwards, which is the same thing without materialising the padded full-size image.
            crop_h, crop_w = self.crop_size
            top = int(torch.randint(0, max(new_h, crop_h) - crop_h + 1, ()).item())
            left = int(torch.randint(0, max(new_w, crop_w) - crop_w + 1, ()).item())
            image = image[:, top : top + crop_h, left : left + crop_w]
            label = label[top : top + crop_h, left : left + crop_w]
        # Normalise before padding so that padded pixels are 0 after normalisation (the mean colour), as in
        # mmseg's data preprocessor; padded labels are ignore_index so they never reach the loss or the metric.
        image = self.normalize(image)
        if self.crop_size is not None:
            pad_h, pad_w = crop_h - label.shape[0], crop_w - label.shape[1]
            if pad_h or pad_w:
                image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
                label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)

        if self.hflip and torch.rand(()).item() < 0.5:
            image = image.flip(-1)
            label = label.flip(-1)
        return image.contiguous(), label.contiguous()

    def _eval_sample(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.eval_size is not None and tuple(image.shape[-2:]) != self.eval_size:
            image = F.interpolate(image[None], size=self.eval_size, mode="bilinear", align_corners=False)[0]
        return self.normalize(image), label

    def __call__(self, batch: dict[str, Sequence[Any]]) -> dict[str, list[torch.Tensor]]:
        pixel_values, labels = [], []
        for image, label in zip(batch["image"], batch["label"], strict=True):
            image_name, label_name = describe_source(image), describe_source(label)
            image_t = _to_image_tensor(decode_image(image, "image"))
            label_ids = label_array(decode_image(label, "label map"), self.label_lookup, label_name, self.stored_values)
            if self.check_labels:
                check_label_values(label_ids, self.num_labels, self.ignore_index, label_name)
            label_t = torch.from_numpy(np.ascontiguousarray(label_ids)).long()
            if image_t.shape[-2:] != label_t.shape:
                (ih, iw), (lh, lw) = image_t.shape[-2:], label_t.shape
                raise ValueError(
                    f"the image {image_name} is {ih}x{iw} (HxW) but its label map {label_name} is {lh}x{lw}. Each "
                    "label map must have its image's size: replace the wrong file or remove the pair."
                )
            if self.train:
                image_t, label_t = self._train_sample(image_t, label_t)
            else:
                image_t, label_t = self._eval_sample(image_t, label_t)
            pixel_values.append(image_t)
            labels.append(label_t)
        return {"pixel_values": pixel_values, "labels": labels}


def collate_segmentation(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """[{"pixel_values": (3, H, W), "labels": (H, W)}] -> {"pixel_values": (B, 3, H, W), "labels": (B, H, W)}.

    All samples must share a size (fixed crops in training; equal-size images, or batch size 1, in evaluation).
    """
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in batch]),
        "labels": torch.stack([example["labels"] for example in batch]),
    }
