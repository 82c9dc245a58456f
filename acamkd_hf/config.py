"""``DistillationArguments``: every ``TrainingArguments`` flag plus the distillation settings (TRL's ``*_config.py``).

The distillation fields are inherited from :class:`~acamkd_hf.settings.DistillationSettings` (their one home);
:meth:`DistillationArguments.distillation_settings` hands them to the trainer as that object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .settings import DistillationSettings


@dataclass
class DistillationArguments(TrainingArguments, DistillationSettings):
    """Distillation settings on top of every ``TrainingArguments`` flag (their defaults: ``--method``'s, see
    :func:`~acamkd_hf.settings.method_defaults`).

    Args:
        teacher: the teacher: a preset name, Hub id or local folder (recorded with the run).
        mask_visualization_steps: every N optimizer steps (and at the start and the end), render ACAM-KD's masks on
            a fixed evaluation batch (0 = off).
        mask_visualization_images: images in that batch.
        sync_batchnorm: the student's BatchNorm layers become ``SyncBatchNorm`` on several GPUs.
        method, distillation_points, alpha, lambda_div, num_masks, ...: the distillation settings, see
            :class:`~acamkd_hf.settings.DistillationSettings`.

    Three ``TrainingArguments`` defaults differ, because distillation needs them: ``remove_unused_columns=False``
    (transforms read the raw image columns), ``label_names=["labels"]`` (the Distiller is not a
    ``PreTrainedModel``), ``ddp_find_unused_parameters=False`` (every trainable parameter is used every step).
    """

    teacher: str | None = field(
        default=None,
        metadata={"help": "Teacher: a preset name, Hub id or local folder (recorded with the run). Its classes must be "
                          "the dataset's where a distillation point compares class outputs (logits); at feature "
                          "points (stages, neck levels) a teacher with other classes is allowed, with a warning."},
    )
    mask_visualization_steps: int = field(
        default=0,
        metadata={"help": "Every N optimizer steps (and at the start and the end), render ACAM-KD's masks on a fixed "
                          "eval batch to <output_dir>/mask_visualizations/step-<N>/ (PNGs + masks.safetensors), to "
                          "TensorBoard when reporting there, and log distill/<point>/mask_change. 0 = off; acamkd only."},
    )
    mask_visualization_images: int = field(default=4, metadata={"help": "Images in that fixed batch."})
    sync_batchnorm: bool = field(
        default=False,
        metadata={"help": "Convert the student's BatchNorm layers to SyncBatchNorm when training on several GPUs "
                          "(segmentation students with few images per GPU). No effect in one process."},
    )

    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: transforms read the raw columns."})
    label_names: list[str] | None = field(default_factory=lambda: ["labels"], metadata={"help": "Label keys."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "DDP find_unused_parameters."})

    def __post_init__(self) -> None:
        self.validate_settings()  # TrainingArguments.__post_init__ does not chain to the settings' own
        if self.mask_visualization_steps < 0 or self.mask_visualization_images < 1:
            raise ValueError("--mask_visualization_steps must be >= 0 and --mask_visualization_images >= 1")
        super().__post_init__()

    def distillation_settings(self) -> DistillationSettings:
        """The distillation settings of these arguments (as given: model-dependent defaults still ``None``)."""
        return DistillationSettings.from_object(self)


__all__ = ["DistillationArguments"]
