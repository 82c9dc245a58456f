"""Random augmentations seeded per example, so a resumed run sees exactly the images an uninterrupted run sees.

The Trainer restores torch's global RNG when it resumes a checkpoint, but in the middle of an epoch it does so
*after* the first resumed batches were already read (accelerate's data loader reads one batch ahead, and the
Trainer fetches a whole accumulation window before restoring), so augmentations drawn from the global RNG differ
after a mid-epoch resume. Seeding each example's draws from ``(seed, epoch, index)`` removes the dependence on the
order in which batches are read: resume, prefetching, DataLoader workers and the number of processes (every rank
draws the same augmentation for the same example) no longer change what is trained on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import TrainerCallback


def fork_rng_on(device: torch.device):
    """``torch.random.fork_rng`` over the CPU generator and the one of ``device`` (if it is an accelerator): random
    draws inside (a dry run's dropout) leave the run's RNG where it was."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index
    if index is None:
        index = torch.cuda.current_device() if device.type == "cuda" else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one example in one epoch (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


class PerExampleSeededDataset(Dataset):
    """Wraps a map-style dataset whose items are drawn with torch's global RNG (e.g. a ``datasets.Dataset`` with
    a random ``with_transform``): item ``i`` of epoch ``e`` is read with the global RNG seeded by
    :func:`example_seed` ``(seed, e, i)``, inside ``torch.random.fork_rng`` so the run's own RNG does not move.

    Args:
        dataset: the training dataset (indexable by ``int``, with ``len``).
        seed: the run's data seed.

    ``set_epoch(e)`` is called by :class:`~acamkd_hf.trainer.DistillationTrainer` (through :class:`SetDatasetEpoch`)
    at the start of every epoch. With persistent DataLoader workers the workers keep the epoch of their first copy,
    so augmentations would repeat across epochs: the trainer warns about that combination.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(example_seed(self.seed, self.epoch, int(index)))
            return self.dataset[int(index)]

    def __getattr__(self, name: str) -> Any:
        # ``features``, ``column_names`` ... of the wrapped dataset stay reachable. Never dunders: the DataLoader
        # would otherwise find ``datasets.Dataset.__getitems__`` and read whole batches around the seeding.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


__all__ = ["PerExampleSeededDataset", "example_seed", "fork_rng_on"]


class SetDatasetEpoch(TrainerCallback):
    """Tells the per-example-seeded training set which epoch starts (accelerate only forwards ``set_epoch`` to the
    sampler). ``state.epoch`` is the float epoch count so far, restored on resume."""

    def __init__(self, dataset: PerExampleSeededDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))
