"""Label sets: the one home of label-set messages, loading a pretrained model for the dataset's labels, and the
teacher's check (point-aware).

- :func:`describe_label_mismatch`: the short message (counts, at most 5 names per list, "... and N more").
- :func:`load_pretrained_for_labels`: a student checkpoint with another label set (``nvidia/mit-b0``'s 1000 ImageNet
  classes, ``PekingU/rtdetr_r18vd``'s 80 COCO classes) is loaded with the dataset's ``id2label`` /
  ``label2id`` and ``ignore_mismatched_sizes=True``, as transformers' ``run_semantic_segmentation.py`` and
  ``run_object_detection.py`` do; one line names the head weights that start anew. An architecture without a head
  for the task is refused.
- :func:`check_teacher_labels` / :func:`check_label_sets`: a teacher whose classes are not the dataset's (the
  student's) cannot teach class outputs (``logits``); at feature points it can, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from ..data.labels import normalize_id2label

logger = logging.getLogger(__name__)

#: At most this many class names per list in a label-set message; the rest are counted ("... and N more").
MAX_NAMES_SHOWN = 5
#: Distillation points that compare class outputs (a teacher with other classes cannot teach them).
CLASS_OUTPUT_POINTS = ("logits",)


def _some(items: Sequence[str], limit: int = MAX_NAMES_SHOWN) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def describe_label_mismatch(
    id2label_a: Mapping[int, str], id2label_b: Mapping[int, str], *, name_a: str = "A", name_b: str = "B"
) -> str | None:
    """None when both maps give the same class to every id; otherwise a short message: the class counts, then the
    classes only in A, only in B, and those at other ids, each list cut to :data:`MAX_NAMES_SHOWN` names and
    "... and N more"."""
    a = normalize_id2label(id2label_a)
    b = normalize_id2label(id2label_b)
    if a == b:
        return None
    a_names, b_names = set(a.values()), set(b.values())
    only_a = [repr(name) for _, name in sorted(a.items()) if name not in b_names]
    only_b = [repr(name) for _, name in sorted(b.items()) if name not in a_names]
    parts = [f"Label sets differ ({name_a}: {len(a)} classes, {name_b}: {len(b)} classes)."]
    if only_a:
        parts.append(f"Only in {name_a}: {_some(only_a)}.")
    if only_b:
        parts.append(f"Only in {name_b}: {_some(only_b)}.")
    a_ids = {name: i for i, name in a.items()}
    b_ids = {name: i for i, name in b.items()}
    moved = sorted((name for name in a_names & b_names if a_ids[name] != b_ids[name]), key=lambda n: a_ids[n])
    if moved:
        parts.append(f"Different order: {_some([f'{n!r} ({name_a} id {a_ids[n]}, {name_b} id {b_ids[n]})' for n in moved])}.")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------------- loading
def has_head_for(auto_class, config) -> bool:
    """Whether ``auto_class`` (e.g. ``AutoModelForSemanticSegmentation``) has a model for ``config``: a registered
    or built-in architecture, or remote code that declares one."""
    if type(config) in auto_class._model_mapping:  # noqa: SLF001 (the Auto classes' own lookup table)
        return True
    return auto_class.__name__ in (getattr(config, "auto_map", None) or {})


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _no_load_report():
    """transformers logs a table of every missing / mismatched key at warning level; one line replaces it here. (A
    filter, not a level: transformers checks that logger's level for other purposes.)"""
    from transformers.utils import logging as hf_logging

    report_logger = hf_logging.get_logger("transformers.modeling_utils")
    dropper = _DropLoadReport()
    report_logger.addFilter(dropper)
    try:
        yield
    finally:
        report_logger.removeFilter(dropper)


def _modules_of(model: nn.Module, keys: Iterable[str]) -> list[str]:
    """The fewest module names that cover exactly ``keys`` (state-dict names): a module is named when every one of
    its tensors is in ``keys`` (``decode_head`` rather than its 16 tensors); leftovers are named as they are."""
    keys = set(keys)
    if not keys:
        return []
    every = list(model.state_dict())
    candidates = sorted({".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 1)}, key=lambda n: (n.count("."), n))
    chosen: list[str] = []
    covered: set[str] = set()
    for name in candidates:
        if any(name.startswith(c + ".") for c in chosen):
            continue
        own = {k for k in every if k.startswith(name + ".")}
        if own and own <= keys:
            chosen.append(name)
            covered |= own
    return sorted(chosen) + sorted(keys - covered)


def load_pretrained_for_labels(
    auto_class,
    path: str,
    id2label: Mapping[int, str] | None,
    *,
    role: str,
    task: str,
    families: str,
    trust_remote_code: bool = False,
    revision: str | None = None,
):
    """``auto_class.from_pretrained(path)``; when ``id2label`` (the dataset's classes) is given and differs from the
    checkpoint's, loaded with the dataset's ``id2label`` / ``label2id`` and ``ignore_mismatched_sizes=True``, and
    one warning line says which head weights start anew and why (re-initialised: their shape depends on the classes;
    newly initialised: the checkpoint has none, e.g. an image-classification checkpoint has no decode head).

    Raises ValueError in one sentence when the checkpoint's architecture has no ``task`` head in transformers (e.g. a
    ResNet image classifier as a segmentation student); ``families`` names what this package distils."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    if not has_head_for(auto_class, config):
        architectures = ", ".join(getattr(config, "architectures", None) or []) or "no architecture recorded"
        raise ValueError(
            f"the {role} {path!r} is a {config.model_type} checkpoint ({architectures}), and transformers has no "
            f"{task} model for that architecture: use a {task} checkpoint or one whose backbone has a {task} model "
            f"in transformers ({families})."
        )
    own = normalize_id2label(config.id2label or {})
    adapt = id2label is not None and describe_label_mismatch(own, id2label) is not None
    kwargs = {"trust_remote_code": trust_remote_code, "revision": revision, "output_loading_info": True}
    if adapt:
        labels = normalize_id2label(id2label)
        kwargs.update(id2label=labels, label2id={v: k for k, v in labels.items()}, ignore_mismatched_sizes=True)
    with _no_load_report():
        model, info = auto_class.from_pretrained(path, **kwargs)
    mismatched = _modules_of(model, (entry[0] if isinstance(entry, tuple) else entry for entry in info.get("mismatched_keys") or ()))
    missing = _modules_of(model, info.get("missing_keys") or ())
    unused = sorted({key.split(".")[0] for key in info.get("unexpected_keys") or ()})
    if adapt or mismatched or missing:
        changes = []
        if adapt:
            changes.append(f"its {len(own)} classes replaced by the dataset's {len(id2label)}")
        if mismatched:
            changes.append(f"re-initialised (shape depends on the classes): {_some(mismatched)}")
        if missing:
            changes.append(f"newly initialised (not in the checkpoint): {_some(missing)}")
        if adapt and not mismatched and not missing:
            changes.append("class heads kept (same number of classes): they start from the checkpoint's classes")
        if unused:
            changes.append(f"not used: the checkpoint's {_some(unused)}")
        logger.warning(f"{role} {path}: {'; '.join(changes)}.")
    return model


# ----------------------------------------------------------------------------------------------------- the teacher
def check_teacher_labels(
    teacher_labels: Mapping[int, str] | None,
    labels: Mapping[int, str] | None,
    points: Sequence[str] | None,
    *,
    teacher_name: str = "teacher",
    other: str = "dataset",
    warn: bool = True,
) -> None:
    """A teacher with other classes than ``labels`` (the dataset's, or the student's) is refused (ValueError) when a
    distillation point compares class outputs (``logits``; ``points`` None: assumed), and allowed with one warning
    line at feature points (backbone stages, neck levels): its features can still be imitated, its class outputs are
    not used."""
    if not teacher_labels or not labels:
        return
    problem = describe_label_mismatch(teacher_labels, labels, name_a="teacher", name_b=other)
    if problem is None:
        return
    class_points = list(CLASS_OUTPUT_POINTS) if points is None else [p for p in points if p in CLASS_OUTPUT_POINTS]
    if class_points:
        raise ValueError(
            f"the teacher {teacher_name!r} and the {other} have different label sets, and the distillation point "
            f"{', '.join(class_points)} compares class outputs: {problem.rstrip('.')}. Use a teacher trained on this "
            f"label set, or distil at feature points only (--distillation_points with stage or neck names)."
        )
    if warn:
        logger.warning(
            f"the teacher {teacher_name!r} has other classes than the {other} ({len(teacher_labels)} vs {len(labels)}): "
            f"distilling its features at {', '.join(points)} only; its class outputs are not used."
        )


def check_label_sets(
    teacher: nn.Module, student: nn.Module, teacher_name: str | None = None, points: Sequence[str] | None = None
) -> None:
    """:func:`check_teacher_labels` for two models (``points``: the resolved distillation points; None refuses any
    difference). Models without an ``id2label`` are not checked."""
    teacher_labels = getattr(getattr(teacher, "config", None), "id2label", None)
    student_labels = getattr(getattr(student, "config", None), "id2label", None)
    name = teacher_name or getattr(getattr(teacher, "config", None), "_name_or_path", "") or type(teacher).__name__
    check_teacher_labels(teacher_labels, student_labels, points, teacher_name=name, other="student")


__all__ = [
    "CLASS_OUTPUT_POINTS",
    "MAX_NAMES_SHOWN",
    "check_label_sets",
    "check_teacher_labels",
    "describe_label_mismatch",
    "has_head_for",
    "load_pretrained_for_labels",
]
