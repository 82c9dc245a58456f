"""Quality of ACAM-KD against the student alone and the baselines: 5 seeds paired by seed, one budget per table.

    python benchmarks/quality.py --table logits            # segmentation, distillation at the logits (the paper's point)
    python benchmarks/quality.py --table feature           # segmentation, distillation at one backbone feature (stage2)
    python benchmarks/quality.py --table detection         # RT-DETR necks, against the inherited control
    python benchmarks/quality.py --table logits --rows student acamkd --seeds 0 --epochs 2 --work_dir /tmp/q  # smoke

Every run is the package's CLI (``python -m acamkd_hf.cli``, i.e. ``acamkd-distill``: exactly what a user runs) in a
subprocess with one OpenMP thread; ``--jobs`` runs go side by side (default 2: this machine's cores). The
segmentation recipe is the embedded synthetic one (240 synthetic 64x128 Cityscapes-layout images, 60 validation
images, 8 classes, tiny-segformer student, batch 8, lr 3e-3, polynomial schedule) at a budget where the student
alone is steady across seeds (40 epochs: std 0.006 over 5 seeds; it learns every class but the fence / pole pair,
which only the teacher learns). The teacher (small-segformer) is trained once, longer (--teacher_epochs, default
120: 0.88 mIoU, 0.12 above the student alone; at 60 epochs 0.82, fence / pole not yet learned), and reused by every
run; the synthetic set is written once and shared, so seeds change the initialisation, data order and augmentation,
never the data. The same seed gives the same initial student in every row (the CLI builds the student after
``set_seed``): rows are paired by seed.

* Each run has its own folder ``<work_dir>/<table>/<row>/seed<k>``; a run whose ``metrics.json`` exists is reused
  (the benchmark can be interrupted and continued; a reused run must have the same flags); a folder without one is
  cleared and run again.
* Per row: mean +- std over seeds; the difference to the student alone paired by seed, with its 95 % t-interval
  over seeds (t quantile for n - 1 degrees of freedom) and the number of seeds on which the row beats the student
  alone; the imitation/task loss ratio at the first logged step and at the end; wall time.

Writes the table and every run's record to ``<results_dir>/quality_<task>_<table>.{md,json}`` and ends with
``RESULT <row>=<mean> ...`` (one name=value per row).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "acamkd_hf.cli"]

#: the mask study (issue: masks that matter), rows of every table. The default (`acamkd`: adversarial masks,
#: per-image statistics) is paired against `acamkd_uniform`, the same imitation with every mask a constant. The
#: objectives were compared under per-batch statistics (the default before the study) against their own control,
#: `acamkd_uniform_batch`: the rows ending in `_batch`.
MASK_STUDY_ROWS: dict[str, tuple[list[str], str]] = {
    "acamkd_uniform": (["--method", "acamkd", "--mask_objective", "uniform"],
                       "the default's imitation with every mask a constant 1: no fusion, no selection units (the control)"),
    "acamkd_imitation": (["--method", "acamkd", "--mask_objective", "imitation"],
                         "the default's statistics, masks trained by the total loss (the paper's reading)"),
    "acamkd_predictive": (["--method", "acamkd", "--mask_objective", "predictive"],
                          "the default's statistics, budgeted masks that regress the student's standardised error"),
    "acamkd_uniform_batch": (["--method", "acamkd", "--mask_objective", "uniform", "--standardize_over", "batch"],
                             "the control with per-batch standardisation statistics (the objectives' control)"),
    "acamkd_imitation_batch": (["--method", "acamkd", "--mask_objective", "imitation", "--standardize_over", "batch"],
                               "masks trained by the total loss, the imitation they weight included (the paper's "
                               "reading; the default before the study)"),
    "acamkd_adversarial_batch": (["--method", "acamkd", "--mask_objective", "adversarial", "--standardize_over", "batch"],
                                 "budgeted masks that maximise the imitation error (ramped reversal, KL to uniform), detached"),
    "acamkd_predictive_batch": (["--method", "acamkd", "--mask_objective", "predictive", "--standardize_over", "batch"],
                                "budgeted masks that regress the student's standardised error, detached"),
}
#: the paper's ablations (Tables 8-10) under the default, rows of every table
PAPER_ABLATION_ROWS: dict[str, tuple[list[str], str]] = {
    "acamkd_spatial_only": (["--method", "acamkd", "--mask_kinds", "spatial"],
                            "recommended, spatial masks only (paper Table 8)"),
    "acamkd_channel_only": (["--method", "acamkd", "--mask_kinds", "channel"],
                            "recommended, channel masks only (paper Table 8)"),
    "acamkd_student_query": (["--method", "acamkd", "--fusion_mode", "student_query"],
                             "recommended, queries from the student, keys/values from the teacher (paper Table 9)"),
    "acamkd_teacher_only": (["--method", "acamkd", "--fusion_mode", "teacher_only"],
                            "recommended, masks from the teacher alone: no cooperation (paper Table 10)"),
}
#: row name -> (extra CLI flags, description), for the two segmentation tables (the point is the table's). Rows
#: beyond the default ones (--rows) are the method study's variants (docs/results.md).
SEGMENTATION_ROWS: dict[str, tuple[list[str], str]] = {
    "student": (["--method", "none"], "student alone (no KD)"),
    "mse": (["--method", "mse"], "MSE on the aligned feature (FitNet, the paper's 'no mask')"),
    "cwd": (["--method", "cwd"], "CWD at its default temperature and weight"),
    "mgd": (["--method", "mgd"], "MGD at its published weight and mask ratio"),
    "pkd": (["--method", "pkd"], "PKD (per-channel standardisation) at mmrazor's published weight"),
    "acamkd_paper": (["--method", "acamkd", "--acamkd_variant", "paper"],
                     "ACAM-KD, the paper's literal losses (sum-M normaliser, sigmoid masks, raw features, alpha 1)"),
    "acamkd": (["--method", "acamkd"], "ACAM-KD, the recommended variant (the default of --method acamkd)"),
    "acamkd_kv8": (["--method", "acamkd", "--fusion_max_kv_tokens", "8"],
                   "the recommended variant with 8 key/value tokens instead of 32 (a larger saving, tried as the default)"),
    # the method study (issue: ACAM-KD that measurably helps)
    "acamkd_std": (["--method", "acamkd", "--acamkd_variant", "paper", "--imitation_standardize", "true"],
                   "paper + standardised imitation"),
    "acamkd_softmax": (["--method", "acamkd", "--acamkd_variant", "paper", "--mask_activation", "softmax"],
                       "paper + softmax (partition) masks"),
    "acamkd_std_softmax": (["--method", "acamkd", "--acamkd_variant", "paper", "--imitation_standardize", "true",
                            "--mask_activation", "softmax"], "paper + standardised imitation + softmax masks"),
    "acamkd_std_softmax_detach": (["--method", "acamkd", "--acamkd_variant", "paper", "--imitation_standardize", "true",
                                   "--mask_activation", "softmax", "--detach_masks_in_imitation", "true"],
                                  "paper + standardised imitation + softmax masks learned from Dice only"),
    "acamkd_std_softmax_sumsq": (["--method", "acamkd", "--acamkd_variant", "paper", "--imitation_standardize", "true",
                                  "--mask_activation", "softmax", "--mask_normalizer", "sum_sq"],
                                 "paper + standardised imitation + softmax masks + sum-M^2 normaliser (mask-weighted means)"),
    "acamkd_std_sumsq": (["--method", "acamkd", "--acamkd_variant", "paper", "--imitation_standardize", "true",
                          "--mask_normalizer", "sum_sq"], "paper + standardised imitation + sum-M^2 normaliser"),
    # sequence-reduced fusion (issue: fusion at about the cost of a plain feature loss), on the standardised variant
    **{f"acamkd_std_r{r}": (["--method", "acamkd", "--acamkd_variant", "paper", "--imitation_standardize", "true",
                             "--fusion_kv_reduction", str(r)], f"paper + standardised imitation, key/value reduction R = {r}")
       for r in (2, 4, 8)},
    **PAPER_ABLATION_ROWS,
    **MASK_STUDY_ROWS,
    # the masked distribution imitation (CWD's spatial KL under the masks), raw logits as CWD (no statistics: the
    # per-batch setting is the one these runs recorded)
    "acamkd_uniform_distribution": (["--method", "acamkd", "--mask_objective", "uniform", "--imitation_form",
                                     "distribution", "--imitation_standardize", "false", "--standardize_over", "batch"],
                                    "CWD's per-channel spatial KL in ACAM-KD's two terms, constant masks (the control)"),
    "acamkd_predictive_distribution": (["--method", "acamkd", "--mask_objective", "predictive", "--imitation_form",
                                        "distribution", "--imitation_standardize", "false", "--standardize_over", "batch"],
                                       "CWD's per-channel spatial KL weighted by predictive masks"),
    "acamkd_task_batch": (["--method", "acamkd", "--mask_objective", "task", "--standardize_over", "batch"],
                          "masks trained to keep the teacher's prediction from its masked logits (MasKD's stage 1, online)"),
}
#: what the verdict rests on (docs/results.md); the other rows are one --rows away
DEFAULT_SEGMENTATION_ROWS = ["student", "cwd", "pkd", "acamkd_uniform", "acamkd"]
#: detection: the recipe inherits the student's encoder/decoder/heads from the teacher (the paper's setting). The
#: control is the same inheritance with no imitation gradient (MSE at weight 0).
DEFAULT_DETECTION_ROWS = ["student_inherited", "cwd", "pkd", "acamkd_uniform", "acamkd"]
DETECTION_ROWS = {
    "student_inherited": (["--method", "mse", "--alpha", "0"],
                          "student alone with inheritance (MSE at weight 0: no imitation gradient), the control"),
    "mse": (["--method", "mse"], "MSE on the aligned neck maps, inheritance on"),
    "pkd": (["--method", "pkd"], "PKD on the neck maps, inheritance on"),
    "acamkd_paper": (["--method", "acamkd", "--acamkd_variant", "paper"], "ACAM-KD paper variant, every neck level"),
    "acamkd": (["--method", "acamkd"], "ACAM-KD recommended variant, every neck level (M = 6), inheritance on"),
    "acamkd_kv8": (["--method", "acamkd", "--fusion_max_kv_tokens", "8"],
                   "the recommended variant with 8 key/value tokens instead of 32 (a larger saving, tried as the default)"),
    "acamkd_alpha10": (["--method", "acamkd", "--alpha", "10"],
                       "recommended variant at alpha 10 (the neck imitation at ~0.7x the DETR task loss, not ~0.07x)"),
    "cwd": (["--method", "cwd"], "CWD on the neck maps, inheritance on"),
    **MASK_STUDY_ROWS,
    **PAPER_ABLATION_ROWS,
}

#: per table: task, point flags, rows, the row every other is paired against, teacher preset, budget, metrics
TABLES: dict[str, dict[str, Any]] = {
    "logits": {
        "task": "segmentation", "point": ["--distillation_points", "logits"], "rows": SEGMENTATION_ROWS,
        "default_rows": DEFAULT_SEGMENTATION_ROWS, "control": "student", "teacher": "small-segformer",
        "epochs": 40, "teacher_epochs": 120,
        "metrics": (("eval_mean_iou", "mIoU"), ("eval_overall_accuracy", "pixel acc.")),
    },
    "feature": {
        "task": "segmentation", "point": ["--distillation_points", "stage2"], "rows": SEGMENTATION_ROWS,
        "default_rows": DEFAULT_SEGMENTATION_ROWS, "control": "student", "teacher": "small-segformer",
        "epochs": 40, "teacher_epochs": 120,
        "metrics": (("eval_mean_iou", "mIoU"), ("eval_overall_accuracy", "pixel acc.")),
    },
    "detection": {
        # inheritance on, said explicitly: the paper's setting (the embedded demo recipe leaves it off)
        "task": "detection", "point": ["--inherit_from_teacher", "true"], "rows": DETECTION_ROWS, "default_rows": DEFAULT_DETECTION_ROWS,
        # teacher 48 epochs: at 16 it (0.083 mAP) was no better than the student inheriting it (0.084), nothing to
        # distil; at 48 it reaches 0.24 against the inherited student's ~0.17
        "control": "student_inherited", "teacher": "tiny-rtdetr-resnet", "epochs": None, "teacher_epochs": 48,
        "metrics": (("eval_map", "mAP"), ("eval_map_50", "AP50")),
    },
}


# ----------------------------------------------------------------------------------------------------- runs
def budget_flags(options) -> list[str]:
    flags = []
    if options.epochs is not None:
        flags += ["--num_train_epochs", str(options.epochs)]
    if options.train_images is not None:
        flags += ["--max_train_samples", str(options.train_images)]
    return flags


def common_flags(options, output_dir: Path, seed: int) -> list[str]:
    return [
        "--task", options.task,
        "--output_dir", str(output_dir),
        "--seed", str(seed),
        "--synthetic_dir", str(Path(options.work_dir) / "data"),
        "--compare_student_alone", "false",
        "--save_strategy", "no",  # a run is short: an interrupted one is re-run, not resumed
        "--disable_tqdm", "true",
        "--report_to", "none",
    ]


def run_once(argv: list[str], output_dir: Path) -> float:
    """Runs the CLI with ``argv`` in a subprocess with one OpenMP thread; returns the wall time in seconds. Its log
    goes to ``<output_dir>.log``."""
    if output_dir.exists():
        shutil.rmtree(output_dir)  # an unfinished run: start it afresh
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(f"{output_dir}.log", "w") as log:
        done = subprocess.run([*CLI, *argv], cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"run {output_dir} failed (exit {done.returncode}); its log: {output_dir}.log")
    return time.perf_counter() - start


def read_run(output_dir: Path, table: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a finished run from its folder."""
    metrics = json.loads((output_dir / "metrics.json").read_text())
    run_config = json.loads((output_dir / "run_config.json").read_text())
    student = metrics["student"]
    state_path = output_dir / "trainer_state.json"
    history = json.loads(state_path.read_text())["log_history"] if state_path.is_file() else []
    train_logs = [entry for entry in history if "loss" in entry and "eval_loss" not in entry]

    def terms(entry: dict[str, Any] | None) -> dict[str, float]:
        if not entry:
            return {}
        kept = {key: value for key, value in entry.items()
                if key in ("step", "loss", "task_loss", "distillation_loss") or key.startswith("distill/")}
        if student.get("method") == "none" and "task_loss" not in kept and "loss" in kept:
            kept["task_loss"] = kept["loss"]  # no distillation: the logged loss is the task loss
        return kept

    training = run_config["training"]
    record = {
        "method": student.get("method"),
        "distillation": run_config.get("distillation"),
        "budget": {
            "epochs": training.get("num_train_epochs"),
            "train_images": run_config["data"].get("max_train_samples"),
            "batch_size": training.get("per_device_train_batch_size"),
            "learning_rate": training.get("learning_rate"),
            "global_step": student.get("global_step"),
        },
        "train_runtime_s": student.get("train_runtime"),
        "first_log": terms(train_logs[0] if train_logs else None),
        "last_log": terms(train_logs[-1] if train_logs else None),
        "log_history": [terms(entry) for entry in train_logs],
    }
    for key, _ in table["metrics"]:
        record[key] = student.get(key)
    if "teacher" in metrics:
        record["teacher_" + table["metrics"][0][0]] = metrics["teacher"].get(table["metrics"][0][0])
    if "student_untrained" in metrics:
        record["untrained_" + table["metrics"][0][0]] = metrics["student_untrained"].get(
            table["metrics"][0][0])
    return record


PARSER_LOCK = threading.Lock()
#: distillation settings that the CLI resolves from the models when no flag sets them (not defaults of the code)
MODEL_RESOLVED_SETTINGS = ("distillation_points", "num_masks")


def changed_defaults(argv: list[str], output_dir: Path) -> dict[str, tuple[Any, Any]]:
    """The distillation settings on which the finished run in ``output_dir`` trained differently from what today's
    code makes of the same flags (a default changed since it ran), by the rule automatic resume uses."""
    from acamkd_hf.arguments import parse_arguments
    from acamkd_hf.settings import DistillationSettings

    recorded = json.loads((output_dir / "run_config.json").read_text())["distillation"]
    with PARSER_LOCK:  # HfArgumentParser resolves the dataclasses' field types in place: not thread-safe
        today = parse_arguments(argv)[2].distillation_settings()
    differences = DistillationSettings.from_record(recorded).differences(today)
    # points and M are resolved from the models when the flags leave them unset: not a change of default
    from_models = {key for key in MODEL_RESOLVED_SETTINGS if getattr(today, key) is None}
    return {key: values for key, values in differences.items() if key not in from_models}


def run_or_reuse(name: str, argv: list[str], output_dir: Path, table: dict[str, Any]) -> dict[str, Any]:
    """The record of the run ``argv`` in ``output_dir``: read back when that folder holds a finished run made with
    the same flags, else run now."""
    timing_path = output_dir / "quality_wall_time.json"
    if (output_dir / "metrics.json").is_file() and timing_path.is_file():
        timing = json.loads(timing_path.read_text())
        if timing.get("argv") != argv:
            raise SystemExit(f"{output_dir} holds a run made with other flags ({' '.join(timing['argv'])}): use "
                             f"another --work_dir (or delete that folder)")
        changed = changed_defaults(argv, output_dir)
        if changed:
            listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise SystemExit(f"{output_dir} holds a run made with the same flags but other defaults ({listed}): the "
                             f"code's defaults changed since; delete that folder to rerun it (or use another --work_dir)")
        wall = timing.get("wall_s")
    else:
        print(f"[quality] running {name}: acamkd-distill {' '.join(argv)}", flush=True)
        wall = run_once(argv, output_dir)
        timing_path.write_text(json.dumps({"wall_s": wall, "argv": argv}))
    record = read_run(output_dir, table)
    headline = table["metrics"][0][0]
    print(f"[quality] {name} ({output_dir.name}): {headline} {record[headline]:.4f}, wall {wall:.0f} s", flush=True)
    record.update(row=name, output_dir=str(output_dir), wall_s=wall, argv=argv)
    return record


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its ``confidence`` t-interval over the values (Student's t, n - 1 degrees
    of freedom); the interval is ``nan`` for fewer than two values."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


# ----------------------------------------------------------------------------------------------------- table
def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


#: per-point diagnostics that are averaged over the points (the loss terms are summed)
AVERAGED_TERMS = ("_mask_mean", "_mask_support", "_error_rank_corr", "_diversity")
#: the mask study's control: every row is also paired against it (a row of the distribution form against that
#: form's own control, :func:`mask_control_of`)
MASK_CONTROL = "acamkd_uniform"


def mask_control_of(name: str) -> str:
    """The uniform-mask row ``name`` is paired against: the same imitation (form, statistics) with constant masks."""
    for suffix in ("_distribution", "_batch"):
        if name.endswith(suffix):
            return MASK_CONTROL + suffix
    return MASK_CONTROL


def last_term(record: dict[str, Any], suffix: str) -> float | None:
    """Sum over points of the last logged ``distill/<point>/<suffix>`` (or the top-level key itself); the mean over
    points for the mask diagnostics (:data:`AVERAGED_TERMS`)."""
    log = record["last_log"]
    kinds = (record.get("distillation") or {}).get("mask_kinds")
    if suffix.startswith(("spatial_", "channel_")) and kinds in ("spatial", "channel") and not suffix.startswith(kinds):
        return None  # a disabled mask kind (logged as 0)
    if suffix in log:
        return log[suffix]
    values = [value for key, value in log.items() if key.startswith("distill/") and key.endswith("/" + suffix)]
    if not values:
        return None
    return sum(values) / len(values) if suffix.endswith(AVERAGED_TERMS) else sum(values)


def paired_difference(records: list[dict[str, Any]], baseline: dict[int, float | None], headline: str) -> dict[str, Any]:
    """The row minus the baseline row, paired by seed: ``{"deltas", "mean", "ci95", "seeds_better"}``."""
    deltas = [r.get(headline) - baseline[r["seed"]] for r in records
              if baseline.get(r["seed"]) is not None and r.get(headline) is not None]
    mean, low, high = t_interval(deltas) if deltas else (float("nan"),) * 3
    return {"deltas": deltas, "mean": mean, "ci95": [low, high], "seeds_better": sum(d > 0 for d in deltas)}


def paired_cell(paired: dict[str, Any]) -> tuple[str, str]:
    """The table's two cells of a paired difference: ``mean [low, high]`` and ``better/n``."""
    if not paired["deltas"]:
        return "-", "-"
    low, high = paired["ci95"]
    return f"{paired['mean']:+.4f} [{low:+.4f}, {high:+.4f}]", f"{paired['seeds_better']}/{len(paired['deltas'])}"


def fmt(value: float | None, digits: int = 4, mask: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if mask and value == 0:
        return "<5e-07"  # the trainer logs terms rounded to 6 decimals: a collapsed mask reads 0
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def imitation_ratio(record: dict[str, Any], entry: dict[str, Any]) -> float | None:
    """Weighted imitation loss / task loss in one logged entry (ACAM-KD: alpha (L_c + L_s), the Dice term left
    out; the baselines: their distillation loss)."""
    task, distill = entry.get("task_loss"), entry.get("distillation_loss")
    imitation = [v for k, v in entry.items() if k.endswith(("/channel", "/spatial"))]
    if imitation:
        alpha = (record.get("distillation") or {}).get("alpha")
        distill = (1.0 if alpha is None else alpha) * sum(imitation)
    return distill / task if task and distill is not None else None


def summarise(rows: dict[str, list[dict[str, Any]]], teacher: dict[str, Any], table: dict[str, Any]) -> tuple[str, dict]:
    (headline, title), (second, second_title) = table["metrics"][:2]
    control = table["control"]
    summary: dict[str, Any] = {}
    baseline = {r["seed"]: r.get(headline) for r in rows.get(control, [])}
    mask_baselines = {name: {r["seed"]: r.get(headline) for r in rows.get(mask_control_of(name), [])} for name in rows}
    header = (
        f"| row | {title} mean +- std | per seed | minus {control}, paired by seed: mean [95% t-interval] | "
        f"seeds better | minus its uniform-mask control ({MASK_CONTROL}[_distribution]), paired | seeds better | "
        f"{second_title} mean +- std | imitation / task "
        f"loss, first log -> last | final spatial / channel mask mean | final spatial / channel support, spatial "
        f"rank corr. with the error, spatial / channel Dice between masks | wall s (mean) |"
    )
    teacher_line = (
        f"| teacher ({table['teacher']}, 1 run) | {fmt(teacher.get(headline))} | - | - | - | - | - | "
        f"{fmt(teacher.get(second))} | - | - | - | {fmt(teacher.get('wall_s'), 0)} |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|", teacher_line]

    def final(records, key):
        values = [last_term(r, key) for r in records]
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    for name, records in rows.items():
        m, s = mean_std([r.get(headline) for r in records])
        m2, s2 = mean_std([r.get(second) for r in records])
        wall, _ = mean_std([r.get("wall_s") for r in records])
        ratios = [(imitation_ratio(r, r["first_log"]), imitation_ratio(r, r["last_log"])) for r in records]
        first = mean_std([a for a, _ in ratios if a is not None])[0] if any(a is not None for a, _ in ratios) else None
        last = mean_std([b for _, b in ratios if b is not None])[0] if any(b is not None for _, b in ratios) else None
        masks = [final(records, key) for key in ("spatial_mask_mean", "channel_mask_mean")]
        diagnostics = [final(records, key) for key in ("spatial_mask_support", "channel_mask_support", "spatial_error_rank_corr",
                                                       "spatial_diversity", "channel_diversity")]
        versus_control = paired_difference(records, baseline, headline)
        versus_uniform = paired_difference(records, mask_baselines[name], headline)
        summary[name] = {
            "mean": m, "std": s, "per_seed": [r.get(headline) for r in records], "seeds": [r["seed"] for r in records],
            f"{second}_mean": m2, f"{second}_std": s2, "wall_s_mean": wall,
            "paired_delta_mean": versus_control["mean"], "paired_delta_ci95": versus_control["ci95"],
            "paired_deltas": versus_control["deltas"], "seeds_better": versus_control["seeds_better"],
            "imitation_over_task_first": first,
            "imitation_over_task_last": last, "final_spatial_mask_mean": masks[0], "final_channel_mask_mean": masks[1],
            "final_spatial_mask_support": diagnostics[0], "final_channel_mask_support": diagnostics[1],
            "final_spatial_error_rank_corr": diagnostics[2], "final_spatial_dice": diagnostics[3],
            "final_channel_dice": diagnostics[4],
        }
        if versus_uniform["deltas"] and name != mask_control_of(name):
            summary[name].update({
                "mask_control": mask_control_of(name), "minus_mask_control_mean": versus_uniform["mean"],
                "minus_mask_control_ci95": versus_uniform["ci95"], "minus_mask_control_deltas": versus_uniform["deltas"],
                "minus_mask_control_seeds_better": versus_uniform["seeds_better"],
            })
        per_seed = ", ".join(fmt(r.get(headline)) for r in records)
        paired, better = ("-", "-") if name == control else paired_cell(versus_control)
        paired_uniform, better_uniform = ("-", "-") if name == mask_control_of(name) else paired_cell(versus_uniform)
        ratio = "-" if first is None else f"{fmt(first, 3)} -> {fmt(last, 3)}"
        mask_cell = "-" if masks == [None, None] else f"{fmt(masks[0], 3, mask=True)} / {fmt(masks[1], 3, mask=True)}"
        diagnostics_cell = "-" if diagnostics[:3] == [None] * 3 else " / ".join(fmt(v, 3) for v in diagnostics)
        lines.append(
            f"| {name} | {fmt(m)} +- {fmt(s)} | {per_seed} | {paired} | {better} | {paired_uniform} | {better_uniform} | "
            f"{fmt(m2)} +- {fmt(s2)} | {ratio} | {mask_cell} | {diagnostics_cell} | {fmt(wall, 0)} |"
        )
    return "\n".join(lines), summary


def dynamics_table(rows: dict[str, list[dict[str, Any]]]) -> str:
    """Loss scale and mask size over training, mean over seeds: the weighted imitation loss / task_loss (ACAM-KD:
    alpha (L_c + L_s), without the Dice term; baselines: distillation_loss) and the mask means at the first log, at
    10 %, 25 %, 50 % of the logs and at the last log."""
    fractions = (0.0, 0.1, 0.25, 0.5, 1.0)

    def at(record, fraction, key):
        history = record["log_history"]
        if not history:
            return None
        entry = history[min(len(history) - 1, round(fraction * (len(history) - 1)))]
        if key == "ratio":  # the imitation part only: ACAM-KD's Dice term is left out
            return imitation_ratio(record, entry)
        if key == "step":
            return entry.get("step")
        return last_term({**record, "last_log": entry}, key)

    def cell(records, fraction, key):
        values = [at(r, fraction, key) for r in records]
        values = [v for v in values if v is not None]
        return fmt(statistics.fmean(values), 3, mask=key.endswith("_mask_mean")) if values else "-"

    any_records = next(iter(rows.values()))
    steps = " / ".join(str(at(any_records[0], f, "step")) for f in fractions)
    header = (f"| row | imitation loss / task_loss at steps {steps} | spatial mask mean at the same steps | "
              f"channel mask mean at the same steps |\n|---|---|---|---|")
    lines = [header]
    for name, records in rows.items():
        if records and records[0].get("method") == "none":
            continue
        cells = [" / ".join(cell(records, f, key) for f in fractions)
                 for key in ("ratio", "spatial_mask_mean", "channel_mask_mean")]
        cells = ["-" if set(c.replace(" / ", "")) <= {"-"} else c for c in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- main
def parse(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="logits", choices=list(TABLES))
    parser.add_argument("--rows", nargs="+", default=None,
                        help="Rows (default: the table's main rows). Segmentation: " + ", ".join(SEGMENTATION_ROWS)
                        + ". Detection: " + ", ".join(DETECTION_ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2, help="Runs side by side, one thread each (default 2).")
    parser.add_argument("--work_dir", default="/tmp/acamkd-quality",
                        help="Run folders; the teacher and the data are shared by the tables of a task.")
    parser.add_argument("--epochs", type=float, default=None, help="Student epochs of every row (default: the table's).")
    parser.add_argument("--teacher_epochs", type=float, default=None, help="Teacher epochs (default: the table's).")
    parser.add_argument("--train_images", type=int, default=None,
                        help="Use only the first N training images in every run (default: all, 240).")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="Further CLI flags for every student run (put last); use with --tag.")
    parser.add_argument("--tag", default="", help="Suffix of the run folders and the results file, for --extra.")
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    options = parser.parse_args(argv)
    table = TABLES[options.table]
    options.task = table["task"]
    options.rows = options.rows or list(table["default_rows"])
    unknown = [name for name in options.rows if name not in table["rows"]]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(table['rows'])}")
    options.epochs = options.epochs if options.epochs is not None else table["epochs"]
    options.teacher_epochs = options.teacher_epochs if options.teacher_epochs is not None else table["teacher_epochs"]
    return options


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cli = list(sys.argv[1:] if argv is None else argv)
    options = parse(cli)
    table = TABLES[options.table]
    work = Path(options.work_dir) / options.task
    options.work_dir = str(work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # 1. the teacher, once per task (seed 0); its run also writes the shared synthetic set (seed 0)
    teacher_dir = work / "teacher"
    teacher_argv = [*common_flags(options, teacher_dir, 0), "--method", "none", "--student", table["teacher"],
                    "--num_train_epochs", f"{options.teacher_epochs:g}"]
    if options.task == "detection":
        teacher_argv += ["--inherit_from_teacher", "false"]  # plain training: nothing to inherit from
    if options.train_images is not None:
        teacher_argv += ["--max_train_samples", str(options.train_images)]
    teacher = run_or_reuse("teacher", teacher_argv, teacher_dir, table)

    # 2. every row x seed, same recipe and budget, --jobs at a time (seed-major: an interrupted benchmark has every
    # row for the first seeds)
    jobs = []
    for seed in options.seeds:
        for name in options.rows:
            flags, _ = table["rows"][name]
            if flags == ["--method", "none"]:  # the student alone has no point: one run serves every table of the task
                output_dir = work / f"{name}{options.tag}" / f"seed{seed}"
                point = []
            else:
                output_dir = work / options.table / f"{name}{options.tag}" / f"seed{seed}"
                point = table["point"]
            run_argv = [*common_flags(options, output_dir, seed), *point, *flags, *budget_flags(options)]
            if "none" not in flags:
                run_argv += ["--teacher", str(teacher_dir)]
            jobs.append((name, seed, [*run_argv, *options.extra], output_dir))
    with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        futures = [(name, seed, pool.submit(run_or_reuse, name, run_argv, output_dir, table))
                   for name, seed, run_argv, output_dir in jobs]
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in options.rows}
        for name, seed, future in futures:
            record = future.result()
            record["seed"] = seed
            rows[name].append(record)

    summary_table, summary = summarise(rows, teacher, table)
    dynamics = dynamics_table(rows)
    total_run_wall = sum(r.get("wall_s") or 0 for records in rows.values() for r in records) + (teacher.get("wall_s") or 0)
    budget = dict(next(iter(rows.values()))[0]["budget"])
    point = ("the task's default points (every neck level)" if table["task"] == "detection"
             else " ".join(table["point"][1:]))
    settings_line = (
        f"table {options.table}: task {options.task}, distillation point {point}; teacher {table['teacher']} (seed 0, "
        f"{teacher['budget']['epochs']} epochs, reused by every row); student budget per run: {budget['epochs']} "
        f"epochs, {budget['train_images'] or 'all'} training images, batch {budget['batch_size']}, lr "
        f"{budget['learning_rate']}, {budget['global_step']} steps; seeds {options.seeds} (paired: the same seed "
        f"starts every row from the same student); extra flags {options.extra or 'none'}"
    )
    result = "RESULT " + " ".join(
        [f"teacher={teacher.get(table['metrics'][0][0]):.4f}"] + [f"{name}={summary[name]['mean']:.4f}" for name in summary]
        + [f"{name}_minus_{summary[name]['mask_control']}={summary[name]['minus_mask_control_mean']:+.4f}"
           for name in summary if "mask_control" in summary[name]]
    )
    command = "python benchmarks/quality.py " + " ".join(cli)
    descriptions = "\n".join(
        f"- `{name}`: {table['rows'][name][1]} (`{' '.join(table['rows'][name][0])}`)" for name in rows
    )
    markdown = (
        f"# Quality benchmark: {options.table}{options.tag}\n\n`{command.strip()}`\n\n{settings_line}\n\n"
        f"{summary_table}\n\nLoss scale and mask size over training (mean over seeds; imitation = alpha (L_c + L_s) for "
        f"ACAM-KD, the distillation loss for the baselines):\n\n{dynamics}\n\nRows:\n{descriptions}\n\n"
        f"Wall time: the runs of this table took {total_run_wall:.0f} s of run time together (teacher included; "
        f"{options.jobs} side by side; this invocation {time.perf_counter() - started:.0f} s, reused runs count 0)."
        f"\n\n{result}\n"
    )
    results_dir = Path(options.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"quality_{options.task}_" if options.task == "segmentation" else "quality_"
    name = f"{prefix}{options.table}{options.tag}"
    (results_dir / f"{name}.md").write_text(markdown)
    for record in [teacher, *(r for records in rows.values() for r in records)]:  # keep the JSON small:
        history = record.pop("log_history")  # the logs at 0, 10, 25, 50, 100 % of training (the dynamics table's)
        record["log_snapshots"] = [history[round(f * (len(history) - 1))] for f in (0.0, 0.1, 0.25, 0.5, 1.0)] if history else []
    raw = {"command": command.strip(), "settings": settings_line, "teacher": teacher, "summary": summary,
           "runs": rows, "result": result}
    (results_dir / f"{name}.json").write_text(json.dumps(raw, indent=1, default=str))
    print(f"\n{settings_line}\n\n{summary_table}\n\n{dynamics}\n\n{result}")
    return raw


if __name__ == "__main__":
    main()
