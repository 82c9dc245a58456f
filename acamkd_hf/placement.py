"""Where the teacher and the student's BatchNorm statistics live when training runs in several processes, and
whether DDP must look for parameters the student's loss does not reach.

Why the teacher is placed by hand and not with ``accelerator.prepare_model(teacher, evaluation_mode=True)`` (what
TRL does), checked against accelerate 1.x's ``prepare_model``:

* under FSDP, ``prepare_model`` turns device placement off and, in evaluation mode, does not wrap either: the
  teacher would stay on the CPU while the student's inputs are on the GPU;
* under DeepSpeed the teacher would need ``deepspeed.initialize`` (TRL's ``prepare_deepspeed``), and ZeRO-3 would
  partition its weights, which the distillation reads whole;
* with native mixed precision ``prepare_model`` wraps the forward in autocast *and converts the outputs to fp32*:
  the teacher's features would then reach the losses in another dtype than the student's (the trainer runs the
  teacher under the student's autocast instead, and the losses cast both to fp32 themselves);
* it registers the teacher in ``accelerator._models``, which the Trainer's saving code iterates.

So :func:`place_teacher` does the one thing needed on every backend: the whole frozen teacher on this process's
device, in eval mode, never wrapped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .seeding import fork_rng_on
from .taps import freeze_teacher

logger = logging.get_logger(__name__)


def place_teacher(teacher: nn.Module, accelerator: Any) -> nn.Module:
    """Puts the frozen teacher whole on this process's device (``accelerator.device``), in eval mode.

    The teacher is never wrapped: DDP, FSDP and DeepSpeed ZeRO-1/2 shard or replicate the student and the
    distillation modules only, and every process holds its own full copy of the teacher, on the same device as the
    student's inputs. ZeRO-3 is refused: it partitions every model built under its config (the teacher's weights
    would be empty placeholders outside a DeepSpeed engine).
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and getattr(plugin, "zero_stage", None) == 3:
        raise ValueError(
            "DeepSpeed ZeRO-3 would partition the teacher's weights, which the distillation reads whole on every "
            "process. Use ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml) or FSDP (configs/accelerate/fsdp.yaml)."
        )
    teacher.to(accelerator.device)
    freeze_teacher(teacher)
    misplaced = {str(p.device) for p in teacher.parameters()} - {str(torch.empty(0, device=accelerator.device).device)}
    if misplaced:
        raise RuntimeError(f"the teacher has weights on {', '.join(sorted(misplaced))}, not on {accelerator.device}")
    return teacher


def convert_to_sync_batchnorm(student: nn.Module, world_size: int, device: torch.device) -> nn.Module:
    """``--sync_batchnorm``: the student's BatchNorm layers become ``SyncBatchNorm`` when ``world_size > 1``.

    BatchNorm statistics then come from the global batch, not each GPU's few images. State-dict names and shapes
    are unchanged, so the saved student loads as the plain architecture. torch implements the synchronisation for
    accelerators only (CUDA, XPU, HPU): on CPU processes this raises instead of failing at the first step.
    """
    if world_size <= 1:
        logger.info("--sync_batchnorm has no effect in a single process")
        return student
    if torch.device(device).type == "cpu":
        raise ValueError(
            "--sync_batchnorm needs GPUs: torch synchronises BatchNorm statistics on CUDA/XPU/HPU devices only, and "
            f"this run has {world_size} CPU processes. Drop --sync_batchnorm for CPU runs."
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(student)


def parameters_without_gradient(model: nn.Module, batch: dict[str, Any]) -> list[str]:
    """Names of the trainable parameters the task loss of ``batch`` (``model(**batch).loss``) does not reach, found by
    one forward in training mode and one ``torch.autograd.grad``; every buffer (BatchNorm statistics), every
    submodule's train/eval flag and the RNG are restored, and no ``.grad`` is written.

    transformers' segmenters have such parameters: BEiT's last encoder layer (its heads read earlier layers), DPT's
    final layer norm and its first fusion layer's residual unit, a Swin backbone's unused layer norm, DINOv3's mask
    token."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    modes = {module: module.training for module in model.modules()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    try:
        with fork_rng_on(named[0][1].device if named else torch.device("cpu")):
            model.train()
            loss = model(**batch).loss
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    finally:
        for module, training in modes.items():
            module.training = training
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    return [name for (name, _), grad in zip(named, grads) if grad is None]


def _plain_ddp(args: Any) -> bool:
    """Several processes under DDP (not FSDP or DeepSpeed, which take no ``find_unused_parameters``)."""
    fsdp = bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    deepspeed = bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")
    return args.world_size > 1 and not fsdp and not deepspeed


def find_unused_parameters_if_needed(
    student: nn.Module, args: Any, first_batch: Callable[[], dict[str, Any] | None]
) -> Any:
    """``args``, with ``ddp_find_unused_parameters`` turned on (one warning line) when DDP runs with it off and the
    student has parameters its loss does not reach (:func:`parameters_without_gradient` on ``first_batch()``, a
    collated batch of training examples, built only then): DDP would otherwise stop at the second step ("Expected to
    have finished reduction in the prior iteration"). Single-process, FSDP and DeepSpeed runs, and a batch of None,
    are left as given."""
    if args.ddp_find_unused_parameters or not _plain_ddp(args):
        return args
    batch = first_batch()
    if batch is None:
        return args
    unused = parameters_without_gradient(student, batch)
    if not unused:
        return args
    shown = ", ".join(unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
    if args.should_log:
        logger.warning(
            f"the student's loss does not reach {len(unused)} of its parameters ({shown}): DDP looks for unused "
            "parameters at every step (--ddp_find_unused_parameters true)."
        )
    return replace(args, ddp_find_unused_parameters=True)


__all__ = ["place_teacher", "convert_to_sync_batchnorm", "find_unused_parameters_if_needed", "parameters_without_gradient"]
