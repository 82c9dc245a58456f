"""Worker of ``tests/test_multiprocess.py``: a few DistillationTrainer steps, then each rank's full state on disk.

    python tests/workers/ddp_equivalence.py --data DIR --out DIR --per_device_batch 4         # 1 process
    torchrun --standalone --nproc_per_node 2 tests/workers/ddp_equivalence.py --data DIR \\
        --out DIR --per_device_batch 2 --variants synced no_sync                               # 2 processes (gloo)

Everything that may legitimately differ between one process with batch 2b and two processes with batch b each is
taken out, so that the two runs must end with the same weights up to float32 summation order:

* no BatchNorm in the student (batch statistics of b images differ from those of 2b): the tiny SegFormer's one
  BatchNorm (decode head) is replaced by an identity; the teacher runs in eval mode (running statistics);
* no dropout / drop path;
* no random augmentation (evaluation transform: normalisation only, every image is the stored size);
* no ignore pixels (void label ids mapped to class 0), so each rank's per-pixel cross-entropy mean weighs every image
  the same and the mean of the two ranks' means is the mean over the global batch;
* SGD with a constant learning rate.

The order of the data is not assumed: the collator records a hash of every example of every batch it builds, so the
test can check that step k of the 2-process run saw the same examples (split over the ranks) as step k of the
1-process run.

Each variant trains from scratch (same seeds) and writes to ``--out/<variant>/``: ``rank<k>.safetensors`` (the
unwrapped Distiller's full state dict: ``student.*`` and ``distillation_loss.*``), ``rank<k>.json`` (world size, rank,
batch hashes, training log), and from rank 0 ``initial.safetensors`` (the state before training). Variant
``synced`` is the normal run; ``no_sync`` runs every backward under DDP's ``no_sync()``: the negative control with
which the test shows that its equality checks can fail; ``batch_statistics`` standardises the imitated features with
statistics over the per-device batch (PKD's, ``--standardize_over batch``) instead of the default's per image: the
control that shows the default's per-image statistics are what makes 2 x b equal 1 x 2b. The variants run in one
launch (the interpreter start-up and imports cost more CPU than these few steps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from acamkd_hf import DistillationArguments, DistillationTrainer
from acamkd_hf.data import SegmentationTransforms, collate_segmentation, load_cityscapes
from acamkd_hf.models import SEGMENTATION_PRESETS, default_image_processor

IGNORE = 255


class RecordingCollator:
    """``collate_segmentation`` that records, per batch, a hash of each example (what this rank trained on)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, examples):
        batch = collate_segmentation(examples)
        if (batch["labels"] == IGNORE).any():
            raise AssertionError("ignore pixels in a batch: per-rank loss means would weigh images unequally")
        self.batches.append(
            [hashlib.sha1(example["pixel_values"].numpy().tobytes()).hexdigest()[:16] for example in examples]
        )
        return batch


class UnsyncedDistillationTrainer(DistillationTrainer):
    """Negative control: every backward under DDP's ``no_sync()``, so each rank steps with its own gradients."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        with model.no_sync():
            return super().training_step(model, inputs, num_items_in_batch)


def student_without_batch_statistics(id2label):
    """Tiny SegFormer processing every image independently: no dropout, no BatchNorm (the decode head's one)."""
    model = SEGMENTATION_PRESETS["tiny-segformer"](
        id2label,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    model.decode_head.batch_norm = torch.nn.Identity()
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise AssertionError("the student still has a BatchNorm")
    return model


def train_variant(options, data, train, out: Path, no_sync: bool, batch_statistics: bool = False) -> None:
    """Builds teacher, student and trainer from the seeds, trains, and writes this rank's files into ``out``."""
    torch.manual_seed(0)
    teacher = SEGMENTATION_PRESETS["small-segformer"](data.id2label)  # other widths than the student: real adapters
    torch.manual_seed(1)
    student = student_without_batch_statistics(data.id2label)

    args = DistillationArguments(
        output_dir=str(out / "trainer"),
        method="acamkd",
        distillation_points=["logits", "stage2"],
        # the default settings (per-image standardisation, adversarial masks) are batch-independent; the control not
        **({"standardize_over": "batch"} if batch_statistics else {}),
        per_device_train_batch_size=options.per_device_batch,
        max_steps=options.max_steps,
        optim="sgd",
        learning_rate=options.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,  # without it, accelerate sees no device to distribute over and every process trains alone
        seed=0,
        dataloader_pin_memory=False,
    )
    collator = RecordingCollator()
    trainer_class = UnsyncedDistillationTrainer if no_sync else DistillationTrainer
    trainer = trainer_class(
        model=student, teacher_model=teacher, args=args, train_dataset=train, data_collator=collator
    )
    # Under DDP the trainer collates the first example once for its dry step (placement.find_unused_parameters_if_needed):
    # not a training batch.
    collator.batches.clear()
    rank, world_size = trainer.args.process_index, trainer.args.world_size
    if no_sync and world_size < 2:
        raise SystemExit("--variants no_sync needs 2 processes or more")
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        initial = trainer.accelerator.unwrap_model(trainer.model).state_dict()
        initial = {name: tensor.detach().clone().contiguous() for name, tensor in initial.items()}
        safetensors.torch.save_file(initial, out / "initial.safetensors")

    trainer.train()

    state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    state = {name: tensor.detach().contiguous() for name, tensor in state.items()}
    safetensors.torch.save_file(state, out / f"rank{rank}.safetensors")
    record = {
        "rank": rank,
        "world_size": world_size,
        "pid": os.getpid(),
        "global_step": trainer.state.global_step,
        "batches": collator.batches,  # may hold one prefetched batch more than the steps taken
        "log_history": trainer.state.log_history,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a synthetic Cityscapes-layout folder (made by the test)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--per_device_batch", type=int, required=True)
    parser.add_argument("--max_steps", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=0.05)
    parser.add_argument("--variants", nargs="+", default=["synced"], choices=["synced", "no_sync", "batch_statistics"])
    options = parser.parse_args()
    torch.set_num_threads(1)  # tiny models; a second thread per process only fights the other rank for the cores

    data = load_cityscapes(options.data)
    no_ignore = np.where(data.label_lookup == IGNORE, 0, data.label_lookup).astype(np.uint8)
    first = data.dataset["train"][0]["image"]
    processor = default_image_processor((first.height, first.width))
    train = data.dataset["train"].with_transform(SegmentationTransforms(processor, train=False, label_lookup=no_ignore))
    for variant in options.variants:
        train_variant(options, data, train, Path(options.out) / variant, no_sync=variant == "no_sync",
                      batch_statistics=variant == "batch_statistics")


if __name__ == "__main__":
    main()
