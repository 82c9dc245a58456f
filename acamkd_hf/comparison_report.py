"""The report of a comparison: a table per metric, the pairwise differences of the best rows, the advice, written
as markdown and JSON, and a forest plot of the paired differences.

The cells (:func:`format_number`, :func:`mean_std_cell`, :func:`paired_cell`, :func:`loss_ratios`...) are shared
with ``benchmarks/quality.py``, whose tables add the mask study's columns to the same ones.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .comparison_advice import advice
from .comparison_plan import ComparisonPlan, counted
from .comparison_runs import failures, imitation_ratio, log_snapshots
from .paired_statistics import PairedDifference, SeedValues, mean_std, paired_difference, present, ranked

#: rows of the pairwise table: the best ones by mean
PAIRWISE_ROWS = 4


# ----------------------------------------------------------------------------------------------------- cells
def format_number(value: float | None, digits: int = 4) -> str:
    """``-`` for no value; scientific notation below 1e-3 and from 1e4 on; else ``digits`` decimals."""
    if not present(value):
        return "-"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def mean_std_cell(values: list[float | None]) -> str:
    mean, std = mean_std(values)
    return f"{format_number(mean)} +- {format_number(std)}"


def per_seed_cell(values: list[float | None]) -> str:
    return ", ".join(format_number(value) for value in values)


def paired_cell(paired: PairedDifference) -> tuple[str, str]:
    """The two cells of a paired difference: ``mean [low, high]`` and ``better/n`` (``-`` without a pair)."""
    if not paired.deltas:
        return "-", "-"
    return f"{paired.mean:+.4f} [{paired.low:+.4f}, {paired.high:+.4f}]", f"{paired.seeds_better}/{len(paired.deltas)}"


def loss_ratios(records: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The imitation / task loss ratio at the first and at the last training log, mean over the runs (``None``
    without distillation or without logs)."""
    pairs = [(imitation_ratio(r, r["first_log"]), imitation_ratio(r, r["last_log"])) for r in records]
    first = [a for a, _ in pairs if a is not None]
    last = [b for _, b in pairs if b is not None]
    return (mean_std(first)[0] if first else None), (mean_std(last)[0] if last else None)


def ratio_cell(first: float | None, last: float | None) -> str:
    return "-" if first is None else f"{format_number(first, 3)} -> {format_number(last, 3)}"


def seed_values(records: list[dict[str, Any]], key: str) -> dict[int, float | None]:
    """``{seed: value}`` of one row's runs."""
    return {record["seed"]: record.get(key) for record in records}


# ----------------------------------------------------------------------------------------------------- tables
def metric_table(rows: Mapping[str, list[dict[str, Any]]], metric: tuple[str, str], control: str | None,
                 labels: Mapping[str, str], teacher: dict[str, Any] | None, seeds: list[int]) -> tuple[str, dict]:
    """The markdown table of one metric ``(key, title)`` and its numbers per row (``rows``: the records of the runs
    that finished): mean +- std, per seed (``-``: no run), the paired difference to ``control`` with its 95 %
    t-interval, seeds better (the control's own: null), the imitation / task loss ratio, wall time."""
    key, title = metric
    baseline = seed_values(rows[control], key) if control else {}
    versus = f"minus {labels.get(control, control)}, paired by seed" if control else "paired difference"
    lines = [f"| row | {title} mean +- std | per seed ({', '.join(map(str, seeds))}) | {versus}: mean [95% t-interval] "
             "| seeds better | imitation / task loss, first log -> last | wall s (mean) |", "|---|---|---|---|---|---|---|"]
    if teacher is not None:
        lines.append(f"| teacher ({teacher['name']}) | {format_number(teacher.get(key))} | - | - | - | - | "
                     f"{format_number(teacher.get('wall_s'), 0)} |")
    summary: dict[str, Any] = {}
    for name, records in rows.items():
        by_seed = seed_values(records, key)
        values = [by_seed.get(seed) for seed in seeds]
        mean, std = mean_std(values)
        paired = paired_difference(by_seed, baseline) if control and name != control else None
        first, last = loss_ratios(records)
        wall = mean_std([r.get("wall_s") for r in records])[0]
        cells = paired_cell(paired or PairedDifference())
        lines.append(f"| {labels.get(name, name)} | {mean_std_cell(values) if present(mean) else '-'} | "
                     f"{per_seed_cell(values)} | {cells[0]} | "
                     f"{cells[1]} | {ratio_cell(first, last)} | {format_number(wall, 0)} |")
        versus_control = (dict.fromkeys(("minus_control_mean", "minus_control_ci95", "minus_control_deltas",
                                         "seeds_better")) if paired is None else
                          {"minus_control_mean": paired.mean, "minus_control_ci95": paired.ci95,
                           "minus_control_deltas": paired.deltas, "seeds_better": paired.seeds_better})
        summary[name] = {"mean": mean, "std": std, "per_seed": values, "seeds": seeds, **versus_control,
                         "imitation_over_task_first": first, "imitation_over_task_last": last, "wall_s_mean": wall}
    return "\n".join(lines), summary


def pairwise_table(rows: Mapping[str, SeedValues], labels: Mapping[str, str], title: str) -> tuple[str, list[dict]]:
    """Every pair of the best :data:`PAIRWISE_ROWS` rows by mean: the higher minus the lower, paired by seed."""
    best = ranked(rows)[:PAIRWISE_ROWS]
    lines = [f"| row | minus | {title}, paired by seed: mean [95% t-interval] | seeds better |", "|---|---|---|---|"]
    pairs = []
    for index, name in enumerate(best):
        for other in best[index + 1:]:
            paired = paired_difference(rows[name], rows[other])
            cells = paired_cell(paired)
            lines.append(f"| {labels.get(name, name)} | {labels.get(other, other)} | {cells[0]} | {cells[1]} |")
            pairs.append({"row": name, "minus": other, "mean": paired.mean, "ci95": paired.ci95,
                          "deltas": paired.deltas, "seeds_better": paired.seeds_better})
    return "\n".join(lines), pairs


# ----------------------------------------------------------------------------------------------------- files
def json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinite number (a number not there, or not defined) as ``None``: JSON's null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def write_markdown_and_json(stem: Path, markdown: str, data: dict[str, Any]) -> None:
    """``<stem>.md`` and ``<stem>.json`` (indent 1; a number not there or not defined as null, any other value JSON
    cannot hold as its ``str``: strict JSON, which every parser reads)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.md").write_text(markdown)
    Path(f"{stem}.json").write_text(json.dumps(json_ready(data), indent=1, default=str, allow_nan=False))


def forest_plot(path: Path, panels: list[tuple[str, dict[str, PairedDifference]]], reference: str) -> str | None:
    """A forest plot per metric (``panels``: ``(title, {row: its paired difference to the reference})``): each row's
    mean difference with its 95 % t-interval, a line at 0. Writes ``path``; returns why not when matplotlib is
    missing (``pip install matplotlib``), else None."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "no figure: matplotlib is not installed (pip install matplotlib, or acamkd-hf[viz])"
    height = 1.4 + 0.45 * max(len(differences) for _, differences in panels)
    figure = Figure(figsize=(6.0 * len(panels), height), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (title, differences) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        names = list(differences)[::-1]  # the first row at the top
        for y, name in enumerate(names):
            paired = differences[name]
            if not present(paired.mean):
                continue
            low, high = (paired.low, paired.high) if present(paired.low) else (paired.mean, paired.mean)
            colour = "tab:green" if paired.above_zero else "tab:red" if paired.below_zero else "tab:grey"
            axes.plot([low, high], [y, y], color=colour, linewidth=2)
            axes.plot([paired.mean], [y], "o", color=colour)
        axes.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
        axes.set_yticks(range(len(names)), names)
        axes.set_ylim(-0.6, len(names) - 0.4)
        axes.set_title(f"{title}: row minus {reference}", fontsize=10)
        axes.set_xlabel("paired by seed: mean and 95% t-interval")
    figure.savefig(path, dpi=120)
    return None


def total_wall(records: list[dict[str, Any]]) -> float:
    return statistics.fsum(r.get("wall_s") or 0 for r in records)


# ----------------------------------------------------------------------------------------------------- acamkd-compare
#: the report's files in the comparison's folder: comparison.md, comparison.json, comparison.png
REPORT_STEM = "comparison"
#: metrics with a table of their own: the task's first two (segmentation: mIoU, pixel accuracy; detection: mAP, AP50)
REPORTED_METRICS = 2
#: the footnote of a "-" in the imitation / task loss column
NO_RATIO_NOTE = ('"-" under imitation / task loss: the row has no imitation loss (the student alone), or its runs '
                 "logged no training step (fewer steps than --logging_steps).")


def teacher_row(plan: ComparisonPlan, records: list[dict[str, Any]], teacher: dict[str, Any] | None) -> dict[str, Any]:
    """The teacher's line: its run's numbers when trained here, else its evaluation in a distilled run."""
    if teacher is not None:
        budget = teacher["budget"]
        length = counted(budget["global_step"], "step") if plan.args.max_steps > 0 else counted(budget["epochs"], "epoch")
        return {**teacher, "name": f"{plan.model_args.teacher_architecture}, trained here once, {length}"}
    distilled = next((r for r in records if r.get("method") != "none"), records[0])
    evaluated = json.loads(Path(distilled["output_dir"], "metrics.json").read_text()).get("teacher", {})
    return {**evaluated, "name": f"{plan.teacher_name}, given", "wall_s": None}


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """A run's record for the JSON: its training logs at 0, 10, 25, 50 and 100 % instead of all of them."""
    kept = {key: value for key, value in record.items() if key != "log_history"}
    return {**kept, "log_snapshots": log_snapshots(record["log_history"])} if "log_history" in record else kept


def data_words(plan: ComparisonPlan) -> str:
    """The data as the runs used it: the dataset, or the synthetic set made here, and what --max_train_samples and
    --max_eval_samples kept of it."""
    data = plan.data_args
    limits = ((data.max_train_samples, "training"), (data.max_eval_samples, "validation"))
    if data.dataset:
        kept = [f"its first {limit} {split} images" for limit, split in limits if limit is not None]
        return f"--dataset {data.dataset}" + (f" ({' and '.join(kept)})" if kept else "")
    made = ((data.synthetic_num_train, limits[0]), (data.synthetic_num_val, limits[1]))
    return "a synthetic set made here (" + ", ".join(
        f"{min(size, limit)} {split} images of {size}" if limit is not None and limit < size else f"{size} {split} images"
        for size, (limit, split) in made) + ")"


def settings_line(plan: ComparisonPlan, records: list[dict[str, Any]], teacher: dict[str, Any]) -> str:
    budget = records[0]["budget"]
    return (f"task {plan.model_args.task}: student {plan.model_args.student}, teacher {teacher['name']}; data: "
            f"{data_words(plan)}; recipe: {plan.recipe}; {plan.budget_words} ({counted(budget['global_step'], 'step')}, "
            f"batch {budget['batch_size']}, lr {budget['learning_rate']}); seeds {plan.comparison.seeds}, paired: the "
            "same seed starts every row from the same student with the same data order and augmentations; every row "
            "evaluated on the same split")


def failed_seeds(failed: list[dict[str, Any]]) -> dict[str, str]:
    """``{row: "failed: seeds 0, 2"}`` of the rows with failed runs."""
    seeds: dict[str, list[int]] = {}
    for record in failed:
        seeds.setdefault(record["row"], []).append(record["seed"])
    return {row: f"failed: seed{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"
            for row, numbers in seeds.items()}


def forest_panels(rows, metrics, reference: str, labels: Mapping[str, str]) -> list[tuple[str, dict]]:
    """Per metric, each row's paired difference to ``reference`` (the figure's panels)."""
    return [(title, {labels.get(name, name): paired_difference(seed_values(rows[name], key),
                                                               seed_values(rows[reference], key))
                     for name in rows if name != reference}) for key, title in metrics]


def write_report(plan: ComparisonPlan, records: list[dict[str, Any]], teacher: dict[str, Any] | None, reused: int,
                 jobs: int) -> dict[str, Any]:
    """``comparison.md``, ``.json`` and ``.png`` in the comparison's folder, the table, pairwise differences and
    advice printed; returns the JSON's data. A failed run (:func:`~acamkd_hf.comparison_runs.failure`) marks its
    row; the advice and the pairwise differences are those of the rows with finished runs (at least one)."""
    failed = failures(records)
    done = [record for record in records if "failed" not in record]
    rows = {row.name: [r for r in done if r["row"] == row.name] for row in plan.rows}
    marks = failed_seeds(failed)
    labels, control = plan.labels, plan.control
    shown = {name: f"{label} ({marks[name]})" if name in marks else label for name, label in labels.items()}
    metrics = plan.metrics[:REPORTED_METRICS]
    teacher_line = teacher_row(plan, done, teacher)
    (headline, headline_title) = metrics[0]
    headline_rows = {name: seed_values(runs, headline) for name, runs in rows.items() if runs}
    reference = control if control in headline_rows else ranked(headline_rows)[0]
    in_words = {**labels, **({control: "the student alone"} if control else {})}
    sentence = advice(headline_rows, in_words, control if control in headline_rows else None, headline_title)
    tables, numbers = [], {}
    for key, title in metrics:
        table, summary = metric_table(rows, (key, title), control, shown, teacher_line, plan.comparison.seeds)
        tables.append(f"## {title}\n\n{table}")
        numbers[key] = {"title": title, "rows": summary}
    pairwise, pairs = pairwise_table(headline_rows, labels, headline_title)
    numbers[headline]["pairwise"] = pairs
    settings = settings_line(plan, done, teacher_line)
    note = f"\n\n{NO_RATIO_NOTE}" if any(row["imitation_over_task_first"] is None
                                         for row in numbers[headline]["rows"].values()) else ""
    failed_list = "".join(f"\n- {record['failed']}" for record in failed)
    command = "acamkd-compare " + " ".join(plan.command)
    folder = Path(plan.comparison.output_dir)
    descriptions = "\n".join(f"- {row.label} (`{row.name}/`): `{' '.join(row.flags)}`" for row in plan.rows)
    run_time = total_wall(done) + ((teacher or {}).get("wall_s") or 0)
    markdown = (
        f"# Which method for this data?\n\n`{command.strip()}`\n\n{settings}\n\n**Advice** ({headline_title}"
        f"{', over the rows whose runs finished' if failed else ''}): {sentence}\n\n" + "\n\n".join(tables) + note
        + (f"\n\n## Failed runs\n{failed_list}" if failed else "")
        + f"\n\n## Pairwise differences of the best rows ({headline_title})\n\n{pairwise}\n\nRows:\n{descriptions}\n\n"
        f"Runs: {len(done)} in {folder}/<row>/seed<k> ({reused} reused, {len(done) - reused} trained"
        f"{f', {len(failed)} failed' if failed else ''}, {jobs} at a time); their run time together {run_time:.0f} s"
        f"{' (the teacher included)' if teacher else ''}. Figure: {REPORT_STEM}.png, each row's paired difference to "
        f"{labels.get(reference, reference)} with its 95% t-interval.\n"
    )
    runs = {name: [compact(record) for record in records_of_row] for name, records_of_row in rows.items()}
    data = {"command": command.strip(), "settings": settings, "budget": plan.comparison.budget,
            "seeds": plan.comparison.seeds, "advice": sentence, "metrics": numbers,
            "rows": {row.name: {"label": row.label, "flags": row.flags} for row in plan.rows},
            "teacher": compact(teacher_line), "runs": runs, "failed": failed, "reused": reused}
    write_markdown_and_json(folder / REPORT_STEM, markdown, data)
    missing = forest_plot(folder / f"{REPORT_STEM}.png", forest_panels(rows, metrics, reference, shown),
                          labels.get(reference, reference))
    failed_text = f"\n\nFailed runs:{failed_list}" if failed else ""
    print(f"\n{settings}\n\n{tables[0]}{note}{failed_text}\n\n{pairwise}\n\nAdvice: {sentence}\n")
    print(f"report: {folder / REPORT_STEM}.md, .json" + (f"; {missing}" if missing else ", .png"))
    return data


__all__ = ["NO_RATIO_NOTE", "REPORT_STEM", "format_number", "forest_plot", "json_ready", "loss_ratios",
           "mean_std_cell", "metric_table", "paired_cell", "pairwise_table", "per_seed_cell", "ratio_cell",
           "seed_values", "total_wall", "write_markdown_and_json", "write_report"]
