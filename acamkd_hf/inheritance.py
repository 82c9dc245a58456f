"""Inheritance (FGD's trick, used by ACAM-KD for detection): the student starts from the teacher's neck and head.

Wherever a student tensor outside the backbone has a teacher tensor of the same name and shape (encoder, decoder,
heads, query embeddings, input projections, their normalisation buffers), it is overwritten with the teacher's value;
the backbone keeps its own initialisation (pretrained or random). A teacher/student pair that differs only in the
backbone (the paper's R101 -> R50) inherits everything except the layers that read the backbone's channels, e.g.
DETR's `input_projection` weight or RT-DETR's `encoder_input_proj.*.0.weight`; those are reported as shape
mismatches and left alone.

    report = inherit_from_teacher(student, teacher)
    print(report.summary())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .families import BACKBONE_PREFIXES  # model class name -> dotted path of its backbone
from .families.spec import family_of


@dataclass
class InheritanceReport:
    """What `inherit_from_teacher` did. Names are the student's parameter/buffer names.

    inherited: copied from the teacher (same name and shape).
    shape_mismatch: (name, teacher shape, student shape) for names present in both with different shapes; untouched.
    missing_in_teacher: non-backbone student tensors the teacher does not have; untouched.
    excluded: tensors under one of `exclude_prefixes`; untouched.
    skipped_backbone: number of backbone tensors (left as they were).
    backbone_prefix: the prefix that was treated as the backbone.
    families: (teacher class, student class) when they differ (a cross-family pair: a name they share need not be
        the same layer, e.g. RT-DETR -> D-FINE), else None.
    """

    inherited: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing_in_teacher: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    skipped_backbone: int = 0
    backbone_prefix: str = ""
    families: tuple[str, str] | None = None

    def summary(self, max_names: int = 3) -> str:
        """A few lines for the run log: counts and the first `max_names` names of each list."""

        def first(names: list[str]) -> str:
            if not names:
                return ""
            more = f", ... (+{len(names) - max_names})" if len(names) > max_names else ""
            return ": " + ", ".join(names[:max_names]) + more

        total = len(self.inherited) + len(self.shape_mismatch) + len(self.missing_in_teacher) + len(self.excluded)
        mismatches = [f"{name} (teacher {tuple(t)} vs student {tuple(s)})" for name, t, s in self.shape_mismatch]
        lines = [
            f"Inheritance: copied {len(self.inherited)} of {total} non-backbone tensors from the teacher"
            f"{first(self.inherited)}",
            f"  shape mismatch, kept the student's: {len(self.shape_mismatch)}{first(mismatches)}",
            f"  missing in the teacher, kept the student's: {len(self.missing_in_teacher)}"
            f"{first(self.missing_in_teacher)}",
        ]
        if self.excluded:
            lines.append(f"  excluded by prefix: {len(self.excluded)}{first(self.excluded)}")
        lines.append(f"  backbone ({self.backbone_prefix!r}) left as initialised: {self.skipped_backbone} tensors")
        if self.families is not None and self.inherited:
            lines.append(f"  teacher and student are different families ({self.families[0]} -> {self.families[1]}): "
                         "tensors were copied by name and shape, which need not mean the same layer; check the copied "
                         "names, or leave --inherit_from_teacher off")
        return "\n".join(lines)


def find_backbone_prefix(model: nn.Module) -> str:
    """The dotted path of the model's backbone module (the part inheritance leaves alone)."""
    family = family_of(model, BACKBONE_PREFIXES)
    if family is not None:
        return BACKBONE_PREFIXES[family]
    for candidate in ("model.backbone", "backbone"):
        try:
            model.get_submodule(candidate)
            return candidate
        except AttributeError:
            continue
    raise TypeError(
        f"No backbone prefix is known for {type(model).__name__}; pass backbone_prefix= explicitly. Known classes: "
        f"{', '.join(BACKBONE_PREFIXES)}."
    )


def _under(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def _tensors(model: nn.Module, remove_duplicate: bool) -> dict[str, torch.Tensor]:
    tensors = dict(model.named_parameters(remove_duplicate=remove_duplicate))
    tensors.update(model.named_buffers(remove_duplicate=remove_duplicate))
    return tensors


def _label_maps_differ(student: nn.Module, teacher: nn.Module) -> str | None:
    from .models.labels import describe_label_mismatch

    s = getattr(getattr(student, "config", None), "id2label", None)
    t = getattr(getattr(teacher, "config", None), "id2label", None)
    if not s or not t:
        return None
    return describe_label_mismatch(t, s, name_a="teacher", name_b="student")


def inherit_from_teacher(
    student: nn.Module,
    teacher: nn.Module,
    *,
    exclude_prefixes: Sequence[str] | None = None,
    backbone_prefix: str | None = None,
) -> InheritanceReport:
    """Copy every non-backbone parameter and buffer of `teacher` into `student` where name and shape match.

    Args:
        student, teacher: the models themselves (not DDP/Distiller wrappers), usually of the same family.
        exclude_prefixes: dotted name prefixes never copied (e.g. ["class_labels_classifier"]), reported in
            `excluded`.
        backbone_prefix: the student's backbone module path; default from the model class (`model.backbone` for
            DETR, RT-DETR and Deformable DETR; see `acamkd_hf.families.BACKBONE_PREFIXES`).

    Returns:
        InheritanceReport (print `report.summary()`).

    Raises:
        ValueError: teacher and student classify different label sets (the class heads would be copied onto the
            wrong classes).
    """
    mismatch = _label_maps_differ(student, teacher)
    if mismatch is not None:
        raise ValueError(f"Cannot inherit the teacher's heads: {mismatch}")
    prefix = backbone_prefix if backbone_prefix is not None else find_backbone_prefix(student)
    excluded_prefixes = [p for p in (exclude_prefixes or []) if p]
    classes = (type(teacher).__name__, type(student).__name__)
    report = InheritanceReport(backbone_prefix=prefix, families=classes if classes[0] != classes[1] else None)
    teacher_tensors = _tensors(teacher, remove_duplicate=False)  # tied weights: any of the teacher's names
    with torch.no_grad():
        for name, tensor in _tensors(student, remove_duplicate=True).items():
            if _under(name, prefix):
                report.skipped_backbone += 1
            elif any(_under(name, p) for p in excluded_prefixes):
                report.excluded.append(name)
            elif name not in teacher_tensors:
                report.missing_in_teacher.append(name)
            elif teacher_tensors[name].shape != tensor.shape:
                report.shape_mismatch.append((name, tuple(teacher_tensors[name].shape), tuple(tensor.shape)))
            else:
                tensor.copy_(teacher_tensors[name])
                report.inherited.append(name)
    return report
