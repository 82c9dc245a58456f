"""Whether two models (or a model and a dataset) share one label set."""

from __future__ import annotations

from torch import nn

from .presets import describe_label_mismatch


def check_label_sets(teacher: nn.Module, student: nn.Module, teacher_name: str | None = None) -> None:
    """Raises ``ValueError`` when teacher and student map class ids to different classes (models without an
    ``id2label`` are not checked)."""
    teacher_labels = getattr(getattr(teacher, "config", None), "id2label", None)
    student_labels = getattr(getattr(student, "config", None), "id2label", None)
    if teacher_labels is None or student_labels is None:
        return
    problem = describe_label_mismatch(teacher_labels, student_labels)
    if problem:
        teacher_id = teacher_name or getattr(teacher.config, "_name_or_path", "") or type(teacher).__name__
        student_id = getattr(student.config, "_name_or_path", "") or type(student).__name__
        raise ValueError(
            f"teacher ({teacher_id}) and student ({student_id}) have different label sets: {problem.rstrip('.')}. "
            f"Distillation needs one label set: build the student with the teacher's id2label."
        )
