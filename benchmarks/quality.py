"""Quality of ACAM-KD against the student alone, the baselines and the paper's ablations, several seeds, one budget.

    python benchmarks/quality.py                         # the full table: 11 rows x 3 seeds (+ 1 teacher)
    python benchmarks/quality.py --rows student acamkd --seeds 0 --epochs 2 --work_dir /tmp/q-smoke   # quick check

Every run is ``scripts/distill.py``'s ``main(argv)`` (in this process; ``--subprocess`` for a fresh interpreter per
run), i.e. exactly what a user runs, on the embedded synthetic recipe of the task (segmentation: 240 synthetic
64x128 Cityscapes-layout images, small-segformer teacher -> tiny-segformer student, 20 epochs, batch 8, lr 3e-3,
polynomial schedule). The only flags added to the recipe are the row's, the seed, the budget flags of this script
(``--epochs``, ``--train_images``), and bookkeeping (output folder, no checkpoints, no progress bar, no student-alone
side run, one shared synthetic set).

* The teacher is trained once (seed 0, method ``none``) into ``<work_dir>/teacher`` and reused as ``--teacher`` by
  every distillation run. The synthetic data set is written once (by that teacher run, seed 0) into
  ``<work_dir>/data`` and shared by every run, so seeds change the initialisation, data order and augmentation,
  never the data.
* Each run has its own folder ``<work_dir>/<row>/seed<k>``; a run whose ``metrics.json`` exists is reused (the
  benchmark can be interrupted and continued); a folder without one is cleared and run again. A reused run must have
  been made with the same budget (else the script stops: use another ``--work_dir``).
* Per run it records mIoU, pixel accuracy, wall time, and the training log (``trainer_state.json``): the last logged
  ``task_loss``, ``distillation_loss`` and ``distill/<point>/*`` terms (incl. ``spatial_mask_mean``,
  ``channel_mask_mean``), plus the first logged ones (to see how the masks moved).

Prints a markdown table (mean +- std over seeds per row), writes it and the raw per-run records to
``<results_dir>/quality_<task>.{md,json}``, and ends with ``RESULT <row>_miou=<mean> ... best=<row>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DISTILL = REPO / "scripts" / "distill.py"

#: row name -> (extra distill.py flags, description). The order is the table's.
SEGMENTATION_ROWS: dict[str, tuple[list[str], str]] = {
    "student": (["--method", "none"], "student alone (no KD)"),
    "mse": (["--method", "mse"], "MSE on aligned logits (FitNet, the paper's 'no mask')"),
    "mgd": (["--method", "mgd"], "MGD (alpha_mgd 2e-5, ratio 0.65)"),
    "cwd": (["--method", "cwd"], "CWD (tau 1)"),
    "acamkd": (["--method", "acamkd"], "ACAM-KD (defaults: both masks, teacher query, student detached in fusion)"),
    "acamkd_spatial": (["--method", "acamkd", "--mask_kinds", "spatial"], "ACAM-KD, spatial masks only (Table 8)"),
    "acamkd_channel": (["--method", "acamkd", "--mask_kinds", "channel"], "ACAM-KD, channel masks only (Table 8)"),
    "acamkd_student_query": (["--method", "acamkd", "--fusion_mode", "student_query"],
                             "ACAM-KD, query from the student (Table 9)"),
    "acamkd_teacher_only": (["--method", "acamkd", "--fusion_mode", "teacher_only"],
                            "ACAM-KD, teacher-only masks (Table 10)"),
    "acamkd_literal_grad": (["--method", "acamkd", "--detach_student_in_fusion", "false"],
                            "ACAM-KD, student not detached in the fusion (literal gradient)"),
    "acamkd_detach_masks": (["--method", "acamkd", "--detach_masks_in_imitation", "true"],
                            "ACAM-KD, masks detached in the imitation terms (investigation)"),
}
#: detection: the recipe inherits the student's encoder/decoder/heads from the teacher (the paper's setting); a student
#: trained alone cannot inherit through distill.py (method none loads no teacher), so that row starts from scratch.
DETECTION_ROWS = {
    "student": (["--method", "none", "--inherit_from_teacher", "false"], "student alone (no KD, no inheritance)"),
    "student_inherited": (["--method", "mse", "--alpha", "0"],
                          "student alone with inheritance (MSE at weight 0: no imitation gradient), the fair control"),
    "mse": (["--method", "mse"], "MSE on the aligned neck maps, inheritance on"),
    "acamkd": (["--method", "acamkd"], "ACAM-KD at every neck level (M = 6), inheritance on"),
}

#: per task: teacher / student presets, headline metric keys (eval_*), titles
TASK_SETTINGS: dict[str, dict[str, Any]] = {
    "segmentation": {
        "rows": SEGMENTATION_ROWS,
        "teacher": "small-segformer",
        "metrics": (("eval_mean_iou", "mIoU"), ("eval_overall_accuracy", "pixel acc.")),
        "key": "miou",
    },
    "detection": {
        "rows": DETECTION_ROWS,
        "teacher": "tiny-rtdetr-resnet",
        "metrics": (("eval_map", "mAP"), ("eval_map_50", "AP50")),
        "key": "map",
    },
}


# ----------------------------------------------------------------------------------------------------- runs
def load_distill():
    """scripts/distill.py as a module (loaded once; registered first: its dataclasses look their module up)."""
    name = "acamkd_distill_script"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DISTILL)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


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


def run_once(options, argv: list[str], output_dir: Path) -> float:
    """Runs distill.py with ``argv``; returns the wall time in seconds. Retries once on an error (the library may be
    edited while the benchmark runs)."""
    for attempt in (1, 2):
        if output_dir.exists():
            shutil.rmtree(output_dir)  # an unfinished run: start it afresh
        start = time.perf_counter()
        try:
            if options.subprocess:
                subprocess.run([sys.executable, str(DISTILL), *argv], check=True, cwd=REPO)
            else:
                load_distill().main(argv)
            return time.perf_counter() - start
        except Exception as error:  # reported, retried once
            print(f"[quality] run {output_dir} failed (attempt {attempt}): {error!r}", flush=True)
            if attempt == 2:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def check_budget(record: dict[str, Any], options, output_dir: Path, epochs_key: str = "epochs") -> None:
    wanted = {"epochs": options.teacher_epochs if epochs_key == "teacher_epochs" else options.epochs,
              "train_images": options.train_images}
    for name, value in wanted.items():
        if value is not None and record["budget"].get(name) != value:
            raise SystemExit(
                f"{output_dir} holds a run with {name}={record['budget'].get(name)}, not {value}: use another "
                f"--work_dir (or delete that folder)"
            )


def read_run(output_dir: Path, task_settings: dict[str, Any]) -> dict[str, Any]:
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
    for key, _ in task_settings["metrics"]:
        record[key] = student.get(key)
    if "teacher" in metrics:
        record["teacher_" + task_settings["metrics"][0][0]] = metrics["teacher"].get(task_settings["metrics"][0][0])
    if "student_untrained" in metrics:
        record["untrained_" + task_settings["metrics"][0][0]] = metrics["student_untrained"].get(
            task_settings["metrics"][0][0])
    return record


def run_or_reuse(options, name: str, argv: list[str], output_dir: Path, task_settings, epochs_key="epochs"):
    timing_path = output_dir / "quality_wall_time.json"
    if (output_dir / "metrics.json").is_file():
        record = read_run(output_dir, task_settings)
        check_budget(record, options, output_dir, epochs_key)
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        if timing.get("argv") not in (None, argv):
            raise SystemExit(f"{output_dir} holds a run made with other flags ({' '.join(timing['argv'])}): use "
                             f"another --work_dir or --tag (or delete that folder)")
        wall = timing.get("wall_s")
        print(f"[quality] reusing {output_dir}", flush=True)
    else:
        print(f"[quality] running {name}: distill.py {' '.join(argv)}", flush=True)
        wall = run_once(options, argv, output_dir)
        timing_path.write_text(json.dumps({"wall_s": wall, "argv": argv}))
        record = read_run(output_dir, task_settings)
        headline = task_settings["metrics"][0][0]
        print(f"[quality] {name}: {headline} {record[headline]:.4f}, wall {wall:.0f} s", flush=True)
    record.update(row=name, output_dir=str(output_dir), wall_s=wall, argv=argv)
    return record


# ----------------------------------------------------------------------------------------------------- table
def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def last_term(record: dict[str, Any], suffix: str) -> float | None:
    """Sum over points of the last logged ``distill/<point>/<suffix>`` (or the top-level key itself)."""
    log = record["last_log"]
    kinds = (record.get("distillation") or {}).get("mask_kinds")
    if suffix.endswith("_mask_mean") and kinds in ("spatial", "channel") and not suffix.startswith(kinds):
        return None  # a disabled mask kind (logged as 0)
    if suffix in log:
        return log[suffix]
    values = [value for key, value in log.items() if key.startswith("distill/") and key.endswith("/" + suffix)]
    return sum(values) / len(values) if values and suffix.endswith("_mask_mean") else (sum(values) if values else None)


def fmt(value: float | None, digits: int = 4, mask: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if mask and value == 0:
        return "<5e-07"  # the trainer logs terms rounded to 6 decimals: a collapsed mask reads 0
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def summarise(rows: dict[str, list[dict[str, Any]]], teacher: dict[str, Any], task_settings, options) -> tuple[str, dict]:
    (headline, title), (second, second_title) = task_settings["metrics"][:2]
    summary: dict[str, Any] = {}
    baseline = {r["seed"]: r.get(headline) for r in rows.get("student", [])}
    header = (
        f"| row | {title} mean +- std | per seed | minus student alone, paired by seed | "
        f"{second_title} mean +- std | wall s (mean) | "
        f"final task_loss | final distillation_loss | final spatial mask mean | final channel mask mean |"
    )
    teacher_line = (
        f"| teacher ({task_settings['teacher']}, 1 run) | {fmt(teacher.get(headline))} | - | - | "
        f"{fmt(teacher.get(second))} | {fmt(teacher.get('wall_s'), 0)} | {fmt(teacher['last_log'].get('task_loss'))} "
        f"| - | - | - |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|", teacher_line]
    for name, records in rows.items():
        m, s = mean_std([r.get(headline) for r in records])
        m2, s2 = mean_std([r.get(second) for r in records])
        wall, _ = mean_std([r.get("wall_s") for r in records])
        finals = {
            key: mean_std([last_term(r, key) for r in records])[0] if any(last_term(r, key) is not None for r in records)
            else None
            for key in ("task_loss", "distillation_loss", "spatial_mask_mean", "channel_mask_mean")
        }
        summary[name] = {"mean": m, "std": s, "per_seed": [r.get(headline) for r in records],
                         "seeds": [r["seed"] for r in records], f"{second}_mean": m2, f"{second}_std": s2,
                         "wall_s_mean": wall, **{f"final_{key}": value for key, value in finals.items()}}
        per_seed = ", ".join(fmt(r.get(headline)) for r in records)
        deltas = [r.get(headline) - baseline[r["seed"]] for r in records
                  if baseline.get(r["seed"]) is not None and r.get(headline) is not None]
        dm, ds = mean_std(deltas)
        summary[name].update(paired_delta_mean=dm, paired_delta_std=ds, paired_deltas=deltas,
                             seeds_better_than_student=sum(d > 0 for d in deltas))
        paired = "-" if name == "student" or not deltas else (
            f"{dm:+.4f} +- {fmt(ds)} ({sum(d > 0 for d in deltas)}/{len(deltas)} seeds better)")
        lines.append(
            f"| {name} | {fmt(m)} +- {fmt(s)} | {per_seed} | {paired} | {fmt(m2)} +- {fmt(s2)} | {fmt(wall, 0)} | "
            f"{fmt(finals['task_loss'])} | {fmt(finals['distillation_loss'])} | "
            f"{fmt(finals['spatial_mask_mean'], mask=True)} | {fmt(finals['channel_mask_mean'], mask=True)} |"
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
            task, distill = entry.get("task_loss"), entry.get("distillation_loss")
            imitation = [v for k, v in entry.items() if k.endswith(("/channel", "/spatial"))]
            if imitation:
                alpha = (record.get("distillation") or {}).get("alpha") or 1.0
                distill = alpha * sum(imitation)
            return distill / task if task and distill is not None else None
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
        if name == "student":
            continue
        cells = [" / ".join(cell(records, f, key) for f in fractions)
                 for key in ("ratio", "spatial_mask_mean", "channel_mask_mean")]
        cells = ["-" if set(c.replace(" / ", "")) <= {"-"} else c for c in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- main
def parse(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="segmentation", choices=list(TASK_SETTINGS))
    parser.add_argument("--rows", nargs="+", default=None,
                        help="Subset of rows (default: all of the task's). Segmentation: " + ", ".join(SEGMENTATION_ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--work_dir", default=None, help="Run folders (default /tmp/acamkd-quality[-detection]).")
    parser.add_argument("--epochs", type=float, default=None,
                        help="Student epochs for every row (default: the recipe's; segmentation 20).")
    parser.add_argument("--teacher_epochs", type=float, default=None,
                        help="Teacher epochs (default: the recipe's; segmentation 20, detection 16).")
    parser.add_argument("--train_images", type=int, default=None,
                        help="Use only the first N training images in every run (default: all, 240).")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="Further distill.py flags for every student run (put last), e.g. --extra --alpha 0.1")
    parser.add_argument("--tag", default="",
                        help="Suffix of the run folders (<row><tag>/seed<k>) for a variant (e.g. with --extra) that "
                             "shares the work dir's teacher and data with the main table.")
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--results_name", default=None, help="Default quality_<task>.")
    parser.add_argument("--subprocess", action="store_true", help="Each run in a fresh Python process.")
    options = parser.parse_args(argv)
    rows = TASK_SETTINGS[options.task]["rows"]
    options.rows = options.rows or list(rows)
    unknown = [name for name in options.rows if name not in rows]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(rows)}")
    options.work_dir = options.work_dir or ("/tmp/acamkd-quality" if options.task == "segmentation"
                                            else f"/tmp/acamkd-quality-{options.task}")
    options.results_name = options.results_name or f"quality_{options.task}"
    return options


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cli = list(sys.argv[1:] if argv is None else argv)
    options = parse(cli)
    task_settings = TASK_SETTINGS[options.task]
    work = Path(options.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # 1. the teacher, once (seed 0); its run also writes the shared synthetic set (seed 0)
    teacher_dir = work / "teacher"
    teacher_argv = [*common_flags(options, teacher_dir, 0), "--method", "none", "--student", task_settings["teacher"]]
    if options.teacher_epochs is not None:
        teacher_argv += ["--num_train_epochs", str(options.teacher_epochs)]
    elif options.task == "detection":
        teacher_argv += ["--num_train_epochs", "16"]  # the detection recipe's teacher_num_train_epochs
    if options.task == "detection":
        teacher_argv += ["--inherit_from_teacher", "false"]  # plain training: nothing to inherit from
    if options.train_images is not None:
        teacher_argv += ["--max_train_samples", str(options.train_images)]
    teacher = run_or_reuse(options, "teacher", teacher_argv, teacher_dir, task_settings, epochs_key="teacher_epochs")
    synthetic = json.loads((work / "data" / "synthetic.json").read_text())
    if synthetic.get("seed") != 0:
        raise SystemExit(f"{work / 'data'} was not written with seed 0: delete {work} and start again")

    # 2. every row x seed, same recipe and budget
    # seed-major order: an interrupted benchmark has every row for the first seeds
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in options.rows}
    for seed in options.seeds:
        for name in options.rows:
            flags, _ = task_settings["rows"][name]
            output_dir = work / f"{name}{options.tag}" / f"seed{seed}"
            run_argv = [*common_flags(options, output_dir, seed), *flags, *budget_flags(options)]
            if flags[1] != "none":
                run_argv += ["--teacher", str(teacher_dir)]
            run_argv += options.extra
            record = run_or_reuse(options, name, run_argv, output_dir, task_settings)
            record["seed"] = seed
            rows[name].append(record)

    table, summary = summarise(rows, teacher, task_settings, options)
    dynamics = dynamics_table(rows)
    total_run_wall = sum(r.get("wall_s") or 0 for records in rows.values() for r in records) + (teacher.get("wall_s") or 0)
    any_record = next(iter(rows.values()))[0]
    budget = dict(any_record["budget"])
    settings_line = (
        f"task {options.task}; teacher {task_settings['teacher']} (seed 0, {teacher['budget']['epochs']} epochs, "
        f"reused by every row); student budget per run: {budget['epochs']} epochs, "
        f"{budget['train_images'] or 'all'} training images, batch {budget['batch_size']}, lr {budget['learning_rate']}, "
        f"{budget['global_step']} steps; seeds {options.seeds}; extra flags {options.extra or 'none'}"
    )
    key = task_settings["key"]
    best = max(summary, key=lambda name: summary[name]["mean"]) if summary else None
    result = "RESULT " + " ".join(
        [f"teacher_{key}={teacher.get(task_settings['metrics'][0][0]):.4f}"]
        + [f"{name}_{key}={summary[name]['mean']:.4f}" for name in summary]
        + [f"best={best}"]
    )
    command = "python benchmarks/quality.py " + " ".join(cli)

    descriptions = "\n".join(
        f"- `{name}`: {task_settings['rows'][name][1]} (`{' '.join(task_settings['rows'][name][0])}`)"
        for name in rows
    )
    markdown = (
        f"# Quality benchmark ({options.task})\n\n`{command.strip()}`\n\n{settings_line}\n\n{table}\n\n"
        f"Loss scale and mask size over training (mean over seeds; imitation = alpha (L_c + L_s) for ACAM-KD, "
        f"the distillation loss for the baselines):\n\n{dynamics}\n\n"
        f"Rows:\n{descriptions}\n\nWall time: the runs of this table took {total_run_wall:.0f} s together "
        f"(teacher {fmt(teacher.get('wall_s'), 0)} s included; each run measured when it ran; this invocation "
        f"{time.perf_counter() - started:.0f} s, reused runs count 0).\n\n{result}\n"
    )
    results_dir = Path(options.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{options.results_name}.md").write_text(markdown)
    for record in [teacher, *(r for records in rows.values() for r in records)]:  # keep the JSON small:
        history = record.pop("log_history")  # the logs at 0, 10, 25, 50, 100 % of training (the dynamics table's)
        record["log_snapshots"] = [history[round(f * (len(history) - 1))] for f in (0.0, 0.1, 0.25, 0.5, 1.0)] if history else []
    raw = {"command": command.strip(), "settings": settings_line, "teacher": teacher, "summary": summary,
           "runs": rows, "result": result}
    (results_dir / f"{options.results_name}.json").write_text(json.dumps(raw, indent=1, default=str))

    print()
    print(settings_line)
    print()
    print(table)
    print()
    print(dynamics)
    print()
    print(result)
    return raw


if __name__ == "__main__":
    main()
