"""``DistillationTrainer``: a ``transformers.Trainer`` that distils a teacher into the student (TRL's ``*_trainer.py``;
its arguments are :class:`~acamkd_hf.config.DistillationArguments`).

The trainer receives the student as ``model`` and the teacher as ``teacher_model`` (TRL's pattern). It wraps the
student and the per-point distillation modules into one :class:`~acamkd_hf.distiller.Distiller` (what the
optimizer, DDP and checkpoints see), keeps the teacher outside, frozen and in eval mode, and:

* logs every loss term (task, distillation total, each point's terms) next to the Trainer's ``loss``;
* saves **only the student** (config, safetensors, image processor) to every output folder, so
  ``from_pretrained(dir)`` and ``pipeline(..., model=dir)`` load it; checkpoints also hold the distillation modules
  in a side file (``distillation_modules.safetensors``) so ``resume_from_checkpoint`` restores them exactly.
"""

from __future__ import annotations

import os
import shutil
from functools import partial
from typing import Any

import safetensors.torch
import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerState, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints
from transformers.utils import logging

from .checkpointing import (
    DISTILLATION_MODULES_NAME,
    PARTIAL_CHECKPOINTS_DIR,
    NonFiniteLossError,
    check_finite_parameters,
    make_weights_readable,
    publish_directory,
)
from .config import DistillationArguments
from .console import BarsWithoutLogs, ConsoleLog
from .distiller import Distiller, build_distillation_loss
from .families.segmentation import mask_classification_problem
from .inheritance import inherit_from_teacher
from .interrupts import Interrupts, StopAtStepBoundary
from .models.labels import check_label_sets
from .placement import convert_to_sync_batchnorm, find_unused_parameters_if_needed, place_teacher
from .seeding import PerExampleSeededDataset, SetDatasetEpoch
from .settings import DistillationSettings, default_num_masks
from .taps import LOGITS, FeatureTaps, freeze_teacher, probe_feature_shapes, resolve_distillation_points

logger = logging.get_logger(__name__)


class DistillationTrainer(Trainer):
    """A ``Trainer`` that distils ``teacher_model`` into ``model`` (the student) with ``args.method``.

    Args:
        model: the student, a ``PreTrainedModel`` whose forward takes ``pixel_values`` and ``labels``.
        teacher_model: the teacher (frozen here); ``None`` only with ``args.method == "none"``.
        args: :class:`DistillationArguments`.
        probe_image_size: ``(H, W)`` of the dry forward that sizes the adapters; default: the size of the first
            training example's ``pixel_values``.
        labels_for_metrics: maps a batch's labels to what ``compute_metrics`` receives, in evaluation (detection:
            per-image dicts -> a fixed-shape tensor, which is what the Trainer can gather across processes).
        **kwargs: everything ``Trainer`` takes (datasets, collator, ``compute_metrics``, ``processing_class`` ...).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        teacher_model: nn.Module | None = None,
        args: DistillationArguments | None = None,
        *,
        probe_image_size: tuple[int, int] | None = None,
        labels_for_metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None or not isinstance(args, DistillationArguments):
            raise TypeError("DistillationTrainer needs args=DistillationArguments(...)")
        if isinstance(model, Distiller):
            raise TypeError("pass the student itself as model=; the trainer builds the Distiller")
        if mask_classification_problem(model):  # its loss needs mask_labels / class_labels, its metric a post-process
            raise TypeError(f"the student: {mask_classification_problem(model)}")
        distilling = args.distilling
        if distilling and teacher_model is None:
            raise ValueError(f"method {args.method!r} needs a teacher_model (use method 'none' to train the student alone)")
        if args.inherit_from_teacher:
            if teacher_model is None:
                raise ValueError("--inherit_from_teacher needs a teacher_model")
            logger.warning(f"inheritance from the teacher: {inherit_from_teacher(model, teacher_model).summary()}")
        # Before SyncBatchNorm (GPU-only): one dry step of the student on the first training batch, under DDP only.
        args = find_unused_parameters_if_needed(model, args, partial(_first_batch, kwargs))
        if args.sync_batchnorm:
            model = convert_to_sync_batchnorm(model, world_size=args.world_size, device=args.device)
        set_seed(args.seed)  # the distillation modules' initialisation is part of the run's seed
        image_size = probe_image_size or first_input_size(kwargs.get("train_dataset")) if distilling else None
        #: the :class:`~acamkd_hf.settings.DistillationSettings` as used: the models' defaults resolved
        self.distillation_settings, distillation_loss = _build_distillation(args, model, teacher_model, image_size)
        kwargs["train_dataset"] = _seeded_per_example(kwargs.get("train_dataset"), args)
        super().__init__(model=Distiller(model, distillation_loss), args=args, **kwargs)
        # The console: compact loss lines at a readable cadence (acamkd_hf.console), not every logged dict.
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(BarsWithoutLogs)
        self.pop_callback(PrinterCallback)
        self.add_callback(ConsoleLog)
        if Interrupts.installed is not None:  # the command line's handlers: Ctrl-C / SIGTERM stop at a step boundary
            self.add_callback(StopAtStepBoundary(Interrupts.installed))
        if isinstance(self.train_dataset, PerExampleSeededDataset):
            self.add_callback(SetDatasetEpoch(self.train_dataset))

        self.labels_for_metrics = labels_for_metrics
        self.teacher = teacher_model if distilling else None
        self.teacher_taps = FeatureTaps(teacher_model, distillation_loss.point_names) if distilling else None
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.args.world_size == 1:
            raise RuntimeError(
                f"launched as {launched} processes but training runs as one: each would train alone on all the data "
                f"and write the same output_dir. On a machine without GPUs pass --use_cpu true."
            )
        if self.teacher is not None:
            if self.is_fsdp_enabled and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() in ("1", "true"):
                raise ValueError(
                    "FSDP's cpu_ram_efficient_loading leaves the teacher without weights on every process but the "
                    "first (only the wrapped student is filled in by FSDP). Set fsdp_cpu_ram_efficient_loading: false "
                    "(configs/accelerate/fsdp.yaml does) or pass --fsdp_cpu_ram_efficient_loading false."
                )
            place_teacher(self.teacher, self.accelerator)
        self._add_mask_visualization(args)
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_steps = 0

    def _add_mask_visualization(self, args: DistillationArguments) -> None:
        """``--mask_visualization_steps``: the masks rendered on a fixed batch (ACAM-KD only; other methods: a warning)."""
        if not args.mask_visualization_steps:
            return
        if args.method == "acamkd":
            from .visualization import MaskVisualizationCallback

            self.add_callback(MaskVisualizationCallback(
                self, every_n_steps=args.mask_visualization_steps, num_images=args.mask_visualization_images))
        elif args.distilling:
            logger.warning(f"--mask_visualization_steps: method {args.method!r} has no masks to show; ignored")

    # ------------------------------------------------------------------------------------------------- access
    @property
    def student(self) -> PreTrainedModel:
        """The student being trained (unwrapped from DDP and the Distiller)."""
        return self.accelerator.unwrap_model(self.model).student

    @property
    def distillation_modules(self) -> nn.Module | None:
        """The per-point distillation modules (adapters, fusion, selection units), or None for method 'none'."""
        return self.accelerator.unwrap_model(self.model).distillation_loss

    # ------------------------------------------------------------------------------------------------- step
    def teacher_features(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The teacher's features at the distillation points: eval mode (re-set every step), no grad, and under the
        same autocast as the student (``--bf16`` / ``--fp16``), so both sides of every loss share the compute dtype."""
        self.teacher.eval()
        # DeepSpeed casts the batch to its half dtype (and autocast is off under it): the teacher keeps its own.
        pixel_values = pixel_values.to(next(self.teacher.parameters()).dtype)
        inputs = {"pixel_values": pixel_values} if pixel_mask is None else {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        with torch.no_grad(), self.accelerator.autocast():
            return self.teacher_taps.collect(self.teacher(**inputs))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """Task loss + distillation loss in training; task loss only in evaluation.

        Both are per-batch means, so the Trainer divides by the accumulation steps (gradient accumulation 1 x 8
        and 8 x 1 give the same update); ``num_items_in_batch`` is accepted and not needed. A training loss that is
        not finite stops the run (:class:`NonFiniteLossError`) before it reaches the weights.
        """
        teacher_features = None
        if model.training and self.teacher is not None:
            teacher_features = self.teacher_features(inputs["pixel_values"], inputs.get("pixel_mask"))
            self.distillation_modules.set_optimizer_step(self.state.global_step)
        outputs = model(**inputs, teacher_features=teacher_features)
        if model.training:
            self._stop_if_not_finite(outputs.loss, outputs.distillation_terms)
        if outputs.distillation_terms is not None:
            self._accumulate_terms(outputs.distillation_terms)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _stop_if_not_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor] | None) -> None:
        """Raises :class:`NonFiniteLossError` naming every non-finite term when the loss is NaN/inf on any process.

        One scalar check per step (the Trainer's own ``logging_nan_inf_filter`` syncs on the loss every step too);
        with several processes the flag is gathered, so every rank stops at the same step instead of the others
        waiting forever in the next all-reduce.
        """
        finite = torch.isfinite(loss.detach()).reshape(1)
        if self.accelerator.num_processes > 1:
            finite = self.accelerator.gather(finite)
        if bool(finite.all()):
            return
        terms = terms if terms is not None else {"task": loss.detach()}
        bad = [
            f"{_log_name(name)}={value.item():g}" for name, value in terms.items()
            if not name.endswith("_mask_mean") and not torch.isfinite(value).all()
        ]
        points = sorted({name.split("/")[0] for name in terms if "/" in name and not torch.isfinite(terms[name]).all()})
        where = f"non-finite terms on this process: {', '.join(bad)}" if bad else "the loss is finite here but not on another process"
        if points:
            where += f" (distillation point{'s' if len(points) > 1 else ''} {', '.join(points)})"
        last = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        raise NonFiniteLossError(
            f"the training loss became {loss.item():g} at step {self.state.global_step + 1} (epoch "
            f"{self.state.epoch or 0:.2f}); {where}. Training stopped before this step changed any weight; "
            + (f"the last good checkpoint is {last}. " if last else "no checkpoint was written yet. ")
            + "Lower --learning_rate or the term's weight (--alpha / --lambda_div), use --bf16 or fp32 instead of "
            "--fp16, or check the inputs of that step; then resume from the checkpoint."
        )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, predictions, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if self.labels_for_metrics is not None and labels is not None:
            labels = self.labels_for_metrics(labels)
        return loss, predictions, labels

    # ------------------------------------------------------------------------------------------------- logging
    def _accumulate_terms(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self._term_sums[name] = self._term_sums[name] + value if name in self._term_sums else value
        self._term_steps += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean of every loss term since the last training log: ``task_loss``, ``distillation_loss`` and
        ``distill/<point>/<term>`` (unweighted), averaged over processes."""
        if self._term_steps and "loss" in logs:
            names = list(self._term_sums)
            means = torch.stack([self._term_sums[name] for name in names]) / self._term_steps
            means = self.accelerator.reduce(means, reduction="mean")
            for name, value in zip(names, means.tolist()):
                logs[_log_name(name)] = float(f"{value:.6g}")  # significant digits: collapsed masks stay visible
            self._term_sums, self._term_steps = {}, 0
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------- saving
    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is being written, the Trainer's checkpoint code writes under the staging folder.
        staging = getattr(self, "_staging_run_dir", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        """Writes ``checkpoint-N`` atomically: everything (student, distillation modules, optimizer, scheduler, every
        rank's RNG state, trainer state) goes to ``output_dir/.partial-checkpoints/checkpoint-N`` first, is fsynced,
        and is renamed to ``output_dir/checkpoint-N`` only when complete. A process killed mid-write leaves the
        staging folder, which no resume ever picks; the previous checkpoints are untouched until the new one is in
        place (rotation runs after the rename). Refuses to write non-finite weights."""
        check_finite_parameters(self.accelerator.unwrap_model(self.model), self.state.global_step)
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, PARTIAL_CHECKPOINTS_DIR)
        staging, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.isdir(staging_root):
            shutil.rmtree(staging_root)  # only leftovers of a process that died mid-write can be there
        self.accelerator.wait_for_everyone()
        self._staging_run_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_run_dir = None
        self.accelerator.wait_for_everyone()  # every rank's files are in the staging folder
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best is not None and os.path.normpath(best).startswith(os.path.normpath(staging_root)):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
                self.state.save_to_json(os.path.join(staging, "trainer_state.json"))  # record the final path
            publish_directory(staging, final)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
            if not os.listdir(staging_root):
                os.rmdir(staging_root)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Writes the student as a plain HF model folder; inside checkpoints also the distillation modules."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        distiller = self.accelerator.unwrap_model(self.model)
        if state_dict is None:
            state_dict = distiller.state_dict()
        student_state = _strip_prefix(state_dict, "student.")
        os.makedirs(output_dir, exist_ok=True)
        distiller.student.save_pretrained(output_dir, state_dict=student_state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        modules_state = _strip_prefix(state_dict, "distillation_loss.")
        if modules_state and os.path.basename(os.path.normpath(output_dir)).startswith(PREFIX_CHECKPOINT_DIR):
            safetensors.torch.save_file(
                {name: tensor.detach().contiguous().cpu() for name, tensor in modules_state.items()},
                os.path.join(output_dir, DISTILLATION_MODULES_NAME),
                metadata={"format": "pt"},
            )
        with open(os.path.join(output_dir, "training_args.json"), "w") as handle:
            handle.write(self.args.to_json_string())
        make_weights_readable(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restores the student (through its own ``from_pretrained``) and the distillation modules."""
        distiller = self.accelerator.unwrap_model(model if model is not None else self.model)
        student = distiller.student
        restored = type(student).from_pretrained(resume_from_checkpoint)
        student.load_state_dict(restored.state_dict())
        if distiller.distillation_loss is not None:
            path = os.path.join(resume_from_checkpoint, DISTILLATION_MODULES_NAME)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} is missing: this checkpoint has no distillation modules (was it written by method "
                    f"'none' or by another tool?). Resume it with the method it was trained with, or start afresh."
                )
            distiller.distillation_loss.load_state_dict(safetensors.torch.load_file(path))

    def adopt_finished_checkpoint(self, checkpoint: str, state: TrainerState, load_best_model: bool = False) -> None:
        """Takes ``checkpoint``, the last step of this training (``state``, its ``trainer_state.json``), as the
        trained result instead of training again: its weights (the best checkpoint's with ``load_best_model``) and
        its state. A resumed Trainer would train one step more when the last step ends mid-epoch."""
        best = state.best_model_checkpoint if load_best_model else None
        self._load_from_checkpoint(best or checkpoint)
        self.state = state

    def _load_best_model(self) -> None:
        logger.info(f"Loading best model from {self.state.best_model_checkpoint} (score: {self.state.best_metric}).")
        self._load_from_checkpoint(self.state.best_model_checkpoint)


# ----------------------------------------------------------------------------------------------------- helpers
def _build_distillation(args: DistillationArguments, student, teacher, image_size) -> tuple[DistillationSettings, Any]:
    """The settings resolved for these models and the per-point losses sized by a dry run at ``image_size``
    (``None`` for method ``none``); the teacher is frozen."""
    settings = args.distillation_settings()
    if not args.distilling:
        return settings, None
    freeze_teacher(teacher)
    points = resolve_distillation_points(student, teacher, settings.distillation_points, teacher_name=args.teacher or "teacher")
    # Another label set: refused at class outputs (logits), a warning at feature points.
    check_label_sets(teacher, student, teacher_name=args.teacher, points=points)
    student_shapes = probe_feature_shapes(student, points, image_size)
    teacher_shapes = probe_feature_shapes(teacher, points, image_size)
    logger.info(f"distillation points (C, H, W) student {student_shapes} <- teacher {teacher_shapes}")
    for point in points:
        student_size, teacher_size = tuple(student_shapes[point][1:]), tuple(teacher_shapes[point][1:])
        if point != LOGITS and student_size != teacher_size:  # logits at another stride: the usual resize
            logger.warning(
                f"distillation point {point}: the student's map is {student_size[0]}x{student_size[1]} and the "
                f"teacher's {teacher_size[0]}x{teacher_size[1]} for the same input: maps of different strides "
                "(pyramid levels) are paired, the student's resized to the teacher's. Name points at the same stride "
                "(the README's table of families lists them) if that is not intended."
            )
    settings = settings.resolved(points, default_num_masks(student))
    return settings, build_distillation_loss(settings, student_shapes, teacher_shapes)


def _seeded_per_example(train_dataset, args: DistillationArguments):
    """The training set with augmentations seeded per (seed, epoch, example): exact resume mid-epoch, the same images
    on any number of processes (:mod:`acamkd_hf.seeding`). Iterable and already-wrapped datasets pass as they are."""
    if train_dataset is None or isinstance(train_dataset, (torch.utils.data.IterableDataset, PerExampleSeededDataset)):
        return train_dataset
    if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
        logger.warning(
            "--dataloader_persistent_workers: the workers keep their first epoch number, so each image gets "
            "the same augmentation every epoch. Turn persistent workers off for per-epoch augmentations."
        )
    return PerExampleSeededDataset(train_dataset, seed=args.data_seed if args.data_seed is not None else args.seed)


def _log_name(term: str) -> str:
    """``task`` -> ``task_loss``, ``distillation`` -> ``distillation_loss``, ``<point>/<term>`` -> ``distill/...``."""
    return {"task": "task_loss", "distillation": "distillation_loss"}.get(term, f"distill/{term}")


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix) :]: tensor for name, tensor in state_dict.items() if name.startswith(prefix)}


def _first_batch(trainer_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The first training example, twice (BatchNorm needs two), through the collator: what a training step feeds the
    student; None without a training set or collator. Read without moving the run's RNG."""
    dataset, collate = trainer_kwargs.get("train_dataset"), trainer_kwargs.get("data_collator")
    if dataset is None or collate is None or isinstance(dataset, torch.utils.data.IterableDataset) or len(dataset) == 0:
        return None
    with torch.random.fork_rng():
        example = dataset[0]
    return collate([example, example])


def first_input_size(dataset: Any) -> tuple[int, int]:
    """(H, W) of the first example's ``pixel_values`` (as the model receives it: after the dataset's transform), read
    without moving the run's RNG."""
    if dataset is None or len(dataset) == 0:
        raise ValueError("cannot size the distillation adapters: no train_dataset example; pass probe_image_size=(H, W)")
    with torch.random.fork_rng():  # reading an augmented example must not move the run's RNG
        example = dataset[0]
    pixel_values = example["pixel_values"]
    return tuple(int(s) for s in pixel_values.shape[-2:])


__all__ = ["DistillationArguments", "DistillationTrainer", "NonFiniteLossError", "first_input_size"]
