"""acamkd-compare: the paired statistics (against scipy's paired t-test), the advice (on hand-made numbers), the
reuse rule (a changed flag or default is refused, never reused; a flag a run's method does not read is not its), and
a tiny comparison end to end (2 rows x 2 seeds, a teacher trained once, 2 runs at a time), continued after an
interruption without rerunning the finished runs; SIGTERM to the command stops its runs at a checkpoint and the
rerun resumes them; a run that fails marks its row in the report."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from acamkd_hf import compare_command
from acamkd_hf.arguments import parse_arguments
from acamkd_hf.comparison_advice import advice
from acamkd_hf.comparison_plan import make_plan
from acamkd_hf.comparison_report import NO_RATIO_NOTE, settings_line
from acamkd_hf.comparison_runs import Launcher, Run, StaleRunError, changed_flags, check_reuse, stale_settings
from acamkd_hf.paired_statistics import mean_std, paired_difference, ranked, seeds_ahead_of_all, t_interval


# ----------------------------------------------------------------------------------------------------- statistics
def test_t_interval_is_scipys_one_sample_interval():
    values = [0.012, -0.004, 0.021, 0.009, 0.015]
    mean, low, high = t_interval(values)
    golden = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert mean == pytest.approx(np.mean(values), abs=1e-15)
    assert (low, high) == pytest.approx((golden.low, golden.high), abs=1e-12)
    # the textbook quantile for 4 degrees of freedom: 2.776
    assert (high - low) / 2 == pytest.approx(2.776 * np.std(values, ddof=1) / math.sqrt(5), rel=2e-4)
    assert all(math.isnan(v) for v in t_interval([0.3])[1:]) and t_interval([0.3])[0] == 0.3
    assert mean_std([1.0, None, 3.0, float("nan")]) == (2.0, pytest.approx(np.std([1.0, 3.0], ddof=1)))


def test_rows_are_paired_by_seed_whatever_their_order_and_missing_seeds():
    row = {2: 0.81, 0: 0.74, 1: 0.77, 4: 0.80}   # seed 3 missing here, seed 4 missing in the control
    control = {0: 0.70, 1: 0.76, 2: 0.75, 3: 0.71}
    paired = paired_difference(row, control)
    seeds = [2, 0, 1]  # the row's order, the seeds both have
    a, b = [row[s] for s in seeds], [control[s] for s in seeds]
    golden = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert paired.seeds == seeds
    assert paired.deltas == pytest.approx([0.06, 0.04, 0.01])
    assert paired.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert (paired.low, paired.high) == pytest.approx((golden.low, golden.high), abs=1e-12)
    assert paired.seeds_better == 3 and not paired.above_zero  # 3 seeds all ahead, but the interval includes 0
    assert paired_difference({0: 0.5}, {1: 0.5}).deltas == []


def test_ranking_and_seeds_ahead_of_every_row():
    rows = {"a": {0: 0.5, 1: 0.6}, "b": {0: 0.7, 1: 0.5}, "c": {0: 0.4, 1: None}}
    assert ranked(rows) == ["b", "a", "c"]  # means 0.6, 0.55, 0.4
    assert seeds_ahead_of_all(rows, "b") == (1, 1)  # only seed 0 is reported by every row


# ----------------------------------------------------------------------------------------------------- advice
LABELS = {"student_alone": "the student alone", "pkd_stage2": "pkd at stage2", "cwd_stage2": "cwd at stage2",
          "acamkd_stage2": "acamkd at stage2"}


def _rows(**means_and_noise):
    """Rows over seeds 0 1 2: base value + the row's offset + a per-seed wobble (the same wobble per seed in every
    row, as paired runs share their seed's luck)."""
    wobble = {0: 0.0, 1: 0.02, 2: -0.01}
    return {name: {seed: 0.5 + offset + wobble[seed] + jitter[seed] for seed in wobble}
            for name, (offset, jitter) in means_and_noise.items()}


def _scipy_interval(rows, name, other) -> str:
    """``mean [low, high]`` of ``name - other`` paired by seed, by scipy's paired t-test."""
    a, b = [rows[name][s] for s in sorted(rows[name])], [rows[other][s] for s in sorted(rows[name])]
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    return f"{np.mean(np.subtract(a, b)):+.4f} [{ci.low:+.4f}, {ci.high:+.4f}]"


def test_advice_names_a_row_ahead_of_every_other():
    rows = _rows(student_alone=(0.0, [0.0, 0.001, -0.001]), pkd_stage2=(0.07, [0.0, 0.002, 0.004]),
                 cwd_stage2=(0.01, [0.0, 0.003, -0.002]), acamkd_stage2=(0.0, [0.005, -0.004, 0.001]))
    text = advice(rows, LABELS, "student_alone", "mIoU")
    next_best = _scipy_interval(rows, "pkd_stage2", "cwd_stage2")
    alone = _scipy_interval(rows, "pkd_stage2", "student_alone")
    assert next_best == "+0.0617 [+0.0523, +0.0711]" and alone == "+0.0720 [+0.0654, +0.0786]"  # by hand too
    assert text == (f"pkd at stage2 is ahead of every other row on 3/3 seeds: {next_best} mIoU over the next best "
                    f"(cwd at stage2), {alone} over the student alone; cwd at stage2 also beats the student alone, "
                    "acamkd at stage2 is inside the noise of the student alone.")
    assert _scipy_interval(rows, "cwd_stage2", "student_alone")[9] == "+"  # cwd's interval lies above 0
    assert _scipy_interval(rows, "acamkd_stage2", "student_alone")[9] == "-"  # acamkd's includes 0


def test_advice_when_methods_beat_the_student_but_tie_each_other():
    rows = _rows(student_alone=(0.0, [0.0, 0.001, -0.001]), pkd_stage2=(0.03, [0.0, 0.01, -0.008]),
                 cwd_stage2=(0.029, [0.006, -0.006, 0.0]))
    text = advice(rows, LABELS, "student_alone", "mIoU")
    pkd, cwd = (_scipy_interval(rows, name, "student_alone") for name in ("pkd_stage2", "cwd_stage2"))
    assert pkd.startswith("+0.0307 [+") and cwd.startswith("+0.0290 [+")  # both intervals above 0
    assert text == (f"pkd at stage2 ({pkd}) and cwd at stage2 ({cwd}) beat the student alone on mIoU, but no row is "
                    "ahead of every other: pkd at stage2 has the best mean, but its paired difference to cwd at stage2 "
                    f"is {_scipy_interval(rows, 'pkd_stage2', 'cwd_stage2')} mIoU, an interval that includes 0.")


def test_advice_when_nothing_beats_the_student_alone():
    rows = _rows(student_alone=(0.0, [0.0, 0.001, -0.001]), pkd_stage2=(0.004, [0.01, -0.01, 0.0]),
                 cwd_stage2=(-0.05, [0.0, 0.001, 0.0]))
    text = advice(rows, LABELS, "student_alone", "mIoU")
    assert text == (f"No method is ahead of the student alone beyond the noise: the best method, pkd at stage2, is "
                    f"{_scipy_interval(rows, 'pkd_stage2', 'student_alone')} mIoU (2/3 seeds), and cwd at stage2 is "
                    "behind it; more seeds (--seeds) or a larger --budget narrow the intervals.")


def test_advice_when_every_method_is_below_the_student_alone():
    rows = _rows(student_alone=(0.0, [0.0, 0.001, -0.001]), pkd_stage2=(-0.004, [0.01, -0.01, 0.0]),
                 cwd_stage2=(-0.05, [0.0, 0.001, 0.0]))
    text = advice(rows, LABELS, "student_alone", "mIoU")
    closest = _scipy_interval(rows, "pkd_stage2", "student_alone")
    assert closest.startswith("-0.0040 [-")
    assert text == (f"No method is ahead of the student alone: the closest, pkd at stage2, is {closest} mIoU (1/3 "
                    "seeds), and cwd at stage2 is behind it; more seeds (--seeds) or a larger --budget narrow the "
                    "intervals.")


def test_advice_with_one_seed_or_no_control():
    assert advice({"a": {0: 0.6}, "b": {0: 0.5}}, {}, None, "mAP").startswith("One seed per row: no interval")
    rows = _rows(pkd_stage2=(0.01, [0.0, 0.01, -0.01]), cwd_stage2=(0.0, [0.0, 0.0, 0.0]))
    assert advice(rows, LABELS, None, "mAP").startswith("No row is ahead of every other beyond the noise: pkd at "
                                                        "stage2 has the best mean")


# ----------------------------------------------------------------------------------------------------- reuse rule
def _finished_folder(folder: Path, argv: list[str], distillation: dict) -> Run:
    """A finished run's folder as acamkd-distill and the comparison leave it (the records only)."""
    folder.mkdir(parents=True, exist_ok=True)
    training = json.loads(parse_arguments(argv)[2].to_json_string())
    (folder / "run_config.json").write_text(json.dumps({"distillation": distillation, "training": training}))
    (folder / "metrics.json").write_text("{}")
    (folder / "comparison_run.json").write_text(json.dumps({"wall_s": 1.0, "argv": argv}))
    return Run("acamkd", 0, argv, folder)


@pytest.mark.parametrize(
    "recorded,expected",
    [
        ({}, {}),  # the run made with today's defaults: reused
        ({"imitation_standardize": False}, {"imitation_standardize": (False, True)}),  # a variant default changed
        ({"mask_normalizer": "sum_sq"}, {"mask_normalizer": ("sum_sq", "sum")}),
        ({"fusion_kv_reduction": "1"}, {"fusion_kv_reduction": ("1", "auto")}),  # no budget noise next to it
        ({"fusion_max_kv_tokens": 128}, {"fusion_max_kv_tokens": (128, "today")}),
        ({"mask_objective": "imitation", "standardize_over": "batch"},  # the default before the mask study
         {"mask_objective": ("imitation", "adversarial"), "standardize_over": ("batch", "image")}),
        ({"num_masks": 8, "distillation_points": ["logits"]}, {}),  # resolved from the models: not a default
    ],
)
def test_a_finished_run_whose_defaults_changed_is_stale(tmp_path, recorded, expected):
    """A finished run is reused only if today's code makes the same settings of its flags; a setting that a variant
    fills in is a default too (the record here: what --method acamkd resolved to when it ran)."""
    from acamkd_hf.fusion import DEFAULT_MAX_KV_TOKENS

    expected = {key: (old, DEFAULT_MAX_KV_TOKENS if new == "today" else new) for key, (old, new) in expected.items()}
    today = {"method": "acamkd", "distillation_points": ["logits"], "alpha": 1.0, "acamkd_variant": "recommended",
             "lambda_div": 1.0, "num_masks": 8, "mask_kinds": "both", "fusion_mode": "teacher_query",
             "fusion_kv_reduction": "auto", "fusion_max_kv_tokens": DEFAULT_MAX_KV_TOKENS, "detach_student_in_fusion": True,
             "alignment": "conv1x1", "detach_masks_in_imitation": False, "mask_normalizer": "sum",
             "mask_activation": "sigmoid", "imitation_standardize": True, "mask_objective": "adversarial",
             "standardize_over": "image"}  # fmt: skip
    argv = ["--task", "segmentation", "--output_dir", str(tmp_path), "--method", "acamkd"]
    assert stale_settings(_finished_folder(tmp_path, argv, {**today, **recorded})) == expected


def test_a_changed_flag_or_training_setting_is_refused_or_replaced(tmp_path):
    argv = ["--output_dir", str(tmp_path / "run"), "--method", "pkd", "--learning_rate", "0.003"]
    run = _finished_folder(tmp_path / "run", argv, {"method": "pkd"})
    assert stale_settings(run) == {}
    changed = Run(run.row, run.seed, [*argv[:-1], "0.001"], run.output_dir)
    assert stale_settings(changed) == {"flags": ("--learning_rate 0.003", "--learning_rate 0.001")}
    assert changed_flags(["--a", "1", "--b"], ["--a", "1", "--c", "3", "--b"]) == ("(none)", "--c 3")
    assert changed_flags(["--a", "1", "--b", "--d"], ["--a", "2", "--b"]) == ("--a 1; --d", "--a 2; (none)")
    with pytest.raises(StaleRunError, match=r"1 finished run\(s\) were made with other settings.*learning_rate 0\.003.*"
                                            r"0\.001.*pass another --output_dir, or --replace_stale_runs"):
        check_reuse([changed], replace_stale=False)
    # the same flags, but the record says another learning rate (e.g. the recipe file was edited): refused too
    (run.output_dir / "comparison_run.json").write_text(json.dumps({"wall_s": 1.0, "argv": changed.argv}))
    assert stale_settings(changed) == {"learning_rate": (0.003, 0.001)}
    check_reuse([changed], replace_stale=True)
    assert not run.output_dir.exists()  # deleted, to be trained again


def test_a_finished_run_is_compared_on_the_settings_its_method_reads(tmp_path):
    """A run that does not distil records no distillation setting but the common ones: a --alpha that reaches it
    (e.g. from a recipe file) changes nothing it trained with; a distilling run's weight does."""
    common = {"method": "none", "distillation_points": None, "inherit_from_teacher": False}
    argv = ["--output_dir", str(tmp_path / "none"), "--method", "none", "--alpha", "2", "--num_masks", "4"]
    assert stale_settings(_finished_folder(tmp_path / "none", argv, common)) == {}
    argv = ["--output_dir", str(tmp_path / "pkd"), "--method", "pkd", "--alpha", "2", "--num_masks", "4"]
    recorded = {**common, "method": "pkd", "distillation_points": ["logits"], "alpha": 6.0, "alignment": "conv1x1"}
    assert stale_settings(_finished_folder(tmp_path / "pkd", argv, recorded)) == {"alpha": (6.0, 2.0)}


def test_a_run_is_given_only_the_flags_its_method_reads(tmp_path):
    """The teacher trained here and the student alone read no distillation setting but the common ones: --alpha
    leaves their command lines as they were (so their finished runs are reused, the teacher trained once); ACAM-KD
    reads --alpha, not MGD's --mgd_mask_ratio. The student alone with inheritance sets its own --alpha 0."""
    def argvs(*flags):
        comparison, distill_argv = compare_command.parse(["--output_dir", str(tmp_path), "--methods", "none", "acamkd",
                                                          "--seeds", "0", "1", *flags])
        plan = make_plan(comparison, distill_argv, [])
        return {run.label: run.argv for run in [*([plan.teacher] if plan.teacher else []), *plan.runs]}

    before, after = argvs(), argvs("--alpha", "2", "--mgd_mask_ratio", "0.5")
    assert [label for label in before if before[label] != after[label]] == ["acamkd seed 0", "acamkd seed 1"]
    assert after["acamkd seed 0"] == ["--alpha", "2", *before["acamkd seed 0"]]
    before, after = argvs("--inherit_from_teacher", "true"), argvs("--inherit_from_teacher", "true", "--alpha", "2")
    assert after["student_alone seed 0"] == before["student_alone seed 0"]
    assert after["student_alone seed 0"].count("--alpha") == 1  # its own: --method mse --alpha 0


def test_each_run_gets_the_threads_the_user_set(monkeypatch):
    from acamkd_hf import comparison_runs

    monkeypatch.setattr(comparison_runs, "available_cores", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert Launcher(jobs=2).environment(None)["OMP_NUM_THREADS"] == "3"
    assert Launcher(jobs=2, threads=1).environment(None)["OMP_NUM_THREADS"] == "1"  # said by the caller
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert Launcher(jobs=2).environment(None)["OMP_NUM_THREADS"] == "4"  # 8 cores / 2 jobs


def test_each_run_gets_one_gpu_and_its_share_of_the_cores(tmp_path, monkeypatch):
    """The GPU path without GPUs: the subprocess is replaced, the environment it would get is recorded."""
    import threading
    from types import SimpleNamespace

    from acamkd_hf import comparison_runs

    seen, lock, running = [], threading.Lock(), {}

    def fake_popen(command, env, **_):
        with lock:
            gpu = env["CUDA_VISIBLE_DEVICES"]
            assert running.get(gpu, 0) == 0, "two runs on one GPU at once"  # 2 jobs, 2 GPUs: one run each
            running[gpu] = 1
            seen.append((gpu, env["OMP_NUM_THREADS"], command[-1]))

        def wait():
            threading.Event().wait(0.05)
            with lock:
                running[gpu] = 0
            return 0

        return SimpleNamespace(wait=wait)

    monkeypatch.setattr(comparison_runs.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(comparison_runs, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    launcher = comparison_runs.Launcher(jobs=2, gpus=["3", "5"], say=lambda line: None)
    runs = [Run("r", seed, ["--seed", str(seed)], tmp_path / f"seed{seed}") for seed in range(4)]
    with comparison_runs.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(launcher.train, runs))
    assert sorted(seed for _, _, seed in seen) == ["0", "1", "2", "3"]
    assert {gpu for gpu, _, _ in seen} == {"3", "5"}  # only the GPUs given, never two runs at once on one
    assert {threads for _, threads, _ in seen} == {"4"}  # 8 cores / 2 jobs


# ----------------------------------------------------------------------------------------------------- the command
def test_the_command_line(capsys):
    comparison, distill_argv = compare_command.parse(["--methods", "none", "pkd", "--seeds", "3", "4", "--budget",
                                                      "0.25", "--learning_rate", "1e-3", "--alpha", "-1"])
    assert (comparison.methods, comparison.seeds, comparison.budget) == (["none", "pkd"], [3, 4], 0.25)
    assert distill_argv == ["--learning_rate", "1e-3", "--alpha", "-1"]
    for argv, message in ((["--method", "pkd"], "unrecognized argument: --method (did you mean --methods?)"),
                          (["--seed", "1"], "unrecognized argument: --seed (did you mean --seeds?)")):
        with pytest.raises(SystemExit):
            compare_command.parse(argv)
        assert capsys.readouterr().err.splitlines()[-1] == f"acamkd-compare: error: {message}"
    with pytest.raises(SystemExit) as exit_info:
        compare_command.main(["--budget", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("acamkd-compare: error: --budget must be above 0 (a fraction of the "
                                               "recipe's training, e.g. 0.25), got 0.0")
    with pytest.raises(SystemExit) as exit_info:
        compare_command.main(["--seeds", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("acamkd-compare: error: --seeds must be at least 2 distinct seeds (one "
                                               "seed gives no interval), e.g. --seeds 0 1 2; got 0")
    with pytest.raises(SystemExit):
        compare_command.main(["--push_to_hub", "true"])
    assert capsys.readouterr().err.startswith("acamkd-compare: error: --push_to_hub would apply to every run")
    help_text = compare_command.build_parser().format_help()
    groups = [line for line in help_text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert groups[:4] == ["options:", "The comparison: rows, seeds, budget, runs:",
                          "The student and the teacher (presets, Hub ids or folders):",
                          "The dataset (a synthetic one when none is given):"]
    assert "--method " not in help_text and "--methods" in help_text and "--replace_stale_runs" in help_text


def test_the_report_states_the_data_the_runs_used(tmp_path):
    """--max_train_samples and --max_eval_samples truncate the set: the report says what the runs trained and were
    evaluated on (the synthetic set's defaults: 240 training and 60 validation images)."""
    def data(*flags):
        comparison, distill_argv = compare_command.parse(["--output_dir", str(tmp_path), *flags])
        budget = {"global_step": 1, "batch_size": 8, "learning_rate": 0.003}
        line = settings_line(make_plan(comparison, distill_argv, []), [{"budget": budget}], {"name": "t"})
        assert "(1 step, batch 8, lr 0.003)" in line
        return line.split("; data: ")[1].split("; recipe")[0]

    assert data() == "a synthetic set made here (240 training images, 60 validation images)"
    assert data("--max_train_samples", "16", "--max_eval_samples", "100") == \
        "a synthetic set made here (16 training images of 240, 60 validation images)"
    assert data("--synthetic_num_val", "20", "--max_eval_samples", "8") == \
        "a synthetic set made here (240 training images, 8 validation images of 20)"
    assert data("--dataset", str(tmp_path), "--max_train_samples", "16") == \
        f"--dataset {tmp_path} (its first 16 training images)"


TINY = ["--synthetic_num_train", "8", "--synthetic_num_val", "4", "--synthetic_image_size", "32", "64",
        "--num_train_epochs", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none"]  # fmt: skip


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """A tiny comparison: the student alone and ACAM-KD, seeds 0 and 1, half the recipe's 2 epochs, 2 at a time."""
    folder = tmp_path_factory.mktemp("compare")
    argv = ["--output_dir", str(folder / "out"), "--methods", "none", "acamkd", "--seeds", "0", "1", "--budget", "0.5",
            "--jobs", "2", "--synthetic_dir", str(folder / "data"), *TINY]
    return folder / "out", argv, compare_command.compare(argv)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_a_tiny_comparison_end_to_end(comparison):
    out, _, report = comparison
    assert {path.name for path in out.iterdir()} >= {"comparison.md", "comparison.json", "comparison.png", "teacher",
                                                      "student_alone", "acamkd"}
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every number of the report, from the runs' own metrics.json
    values = {row: [_metrics(out / row / f"seed{seed}")["student"]["eval_mean_iou"] for seed in (0, 1)]
              for row in ("student_alone", "acamkd")}
    rows = report["metrics"]["eval_mean_iou"]["rows"]
    assert rows["acamkd"]["per_seed"] == values["acamkd"]
    assert rows["student_alone"]["per_seed"] == values["student_alone"]
    golden = stats.ttest_rel(values["acamkd"], values["student_alone"]).confidence_interval(0.95)
    assert rows["acamkd"]["minus_control_ci95"] == pytest.approx([golden.low, golden.high], abs=1e-12)
    # the budget: half the recipe's 2 epochs per run; the teacher trained once at its full recipe, used by acamkd
    config = json.loads((out / "acamkd" / "seed1" / "run_config.json").read_text())
    assert config["training"]["num_train_epochs"] == 1.0 and config["distillation"]["teacher"] == str(out / "teacher")
    assert json.loads((out / "teacher" / "run_config.json").read_text())["training"]["num_train_epochs"] == 2.0
    # paired: the same seed starts both rows from the same student (the untrained evaluation is the same)
    untrained = {row: _metrics(out / row / "seed1")["student_untrained"]["eval_mean_iou"]
                 for row in ("student_alone", "acamkd")}
    assert untrained["student_alone"] == untrained["acamkd"]
    markdown = (out / "comparison.md").read_text()
    assert "budget 0.5 of the recipe's 2 epochs: 1 epoch per run" in markdown and report["advice"] in markdown
    table = [line for line in markdown.split("## pixel accuracy")[0].splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| teacher (small-segformer, trained here once, 2 epochs)",
                                                            "| student alone", "| acamkd"]
    assert table[2].split(" | ")[5] == "-" and NO_RATIO_NOTE in markdown  # the student alone: no imitation loss
    # strict JSON (what JSON.parse reads): the control's own difference is null, not NaN
    strict = json.loads((out / "comparison.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    control = strict["metrics"]["eval_mean_iou"]["rows"]["student_alone"]
    assert [control[key] for key in ("minus_control_mean", "minus_control_ci95", "minus_control_deltas",
                                     "seeds_better")] == [None, None, None, None]
    # each run's own table names the teacher it was given by its path and the model it was trained as
    assert f"| teacher | {out / 'teacher'} (small-segformer) | " in (out / "acamkd" / "seed0.log").read_text()


def test_an_interrupted_comparison_continues_and_a_changed_setting_is_refused(comparison, capsys):
    out, argv, first = comparison
    interrupted = out / "acamkd" / "seed1"
    (interrupted / "metrics.json").unlink()  # as if the run had been killed before its end
    kept = [out / "teacher", out / "student_alone" / "seed0", out / "student_alone" / "seed1", out / "acamkd" / "seed0"]
    before = {folder: (folder / "metrics.json").stat().st_mtime_ns for folder in kept}
    capsys.readouterr()
    again = compare_command.compare(argv)
    printed = capsys.readouterr().out
    assert {folder: (folder / "metrics.json").stat().st_mtime_ns for folder in kept} == before  # not rerun
    assert printed.count("(reused)") == 4 and printed.count("(trained)") == 1 and again["reused"] == 3
    assert again["metrics"]["eval_mean_iou"]["rows"]["student_alone"] == \
        first["metrics"]["eval_mean_iou"]["rows"]["student_alone"]
    with pytest.raises(SystemExit) as exit_info:
        compare_command.main([*argv, "--learning_rate", "0.001"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("acamkd-compare: error: 5 finished run(s) were made with other settings than this "
                            "command's")
    assert error.endswith("They are not reused: pass another --output_dir, or --replace_stale_runs to train them "
                          "again.")
    with pytest.raises(SystemExit):  # read by ACAM-KD only: the teacher and the student alone are reused
        compare_command.main([*argv, "--alpha", "2"])
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"acamkd-compare: error: 2 finished run(s) were made with other settings than this "
                            f"command's: {out / 'acamkd' / 'seed0'}: flags '(none)' -> '--alpha 2'; ")
    with pytest.raises(SystemExit):
        compare_command.main([*argv, "--budget", "0.25"])
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"acamkd-compare: error: 4 finished run(s) were made with other settings than this "
                            f"command's: {out / 'student_alone' / 'seed0'}: budget 0.5 -> 0.25, flags "
                            "'--num_train_epochs 1' -> '--num_train_epochs 0.5'; ")


# ----------------------------------------------------------------------------------------------------- signals, failures
def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    children = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            parent = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if parent == str(pid):
            children.append(int(status.parent.name))
    return children


@pytest.fixture(scope="module")
def sigterm(comparison, tmp_path_factory):
    """The student alone and MSE (the tiny comparison's teacher given, 80 steps per run, 2 at a time), the command
    sent SIGTERM while a run trains, then run again (in this process)."""
    tiny_out = comparison[0]
    folder = tmp_path_factory.mktemp("sigterm")
    out = folder / "out"
    argv = ["--output_dir", str(out), "--teacher", str(tiny_out / "teacher"), "--methods", "none", "mse", "--seeds", "0",
            "1", "--jobs", "2", "--synthetic_dir", str(tiny_out.parent / "data"), *TINY, "--num_train_epochs", "40"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    children, log = [], None
    with open(folder / "stdout", "w") as stdout, open(folder / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "acamkd_hf.compare_command", *argv], stdout=stdout,
                                   stderr=stderr, env=env, cwd=folder)
    try:
        deadline = time.monotonic() + 300
        while log is None and process.poll() is None and time.monotonic() < deadline:
            log = next((path for path in out.glob("*/seed*.log") if "step 1/" in path.read_text()), None)
            time.sleep(0.05)
        children = _children(process.pid)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
        survivors = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    finally:  # never leave a run training: these are this test's own processes
        for pid in [pid for pid in children if Path(f"/proc/{pid}").exists()]:
            os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
    assert log is not None, (folder / "stderr").read_text()[-2000:]
    run_dir = log.with_suffix("")
    checkpoints = sorted(path.name for path in run_dir.glob("checkpoint-*"))
    had_metrics = (run_dir / "metrics.json").exists()
    report = compare_command.compare(argv)
    return {"out": out, "argv": argv, "returncode": process.returncode, "stderr": (folder / "stderr").read_text(),
            "children": children, "survivors": survivors, "log": log, "run_dir": run_dir, "checkpoints": checkpoints,
            "had_metrics": had_metrics, "report": report}


@pytest.mark.slow
def test_sigterm_stops_the_runs_at_a_checkpoint_and_the_same_command_resumes_them(sigterm):
    assert sigterm["returncode"] == 143, sigterm["stderr"][-2000:]
    assert sigterm["stderr"].strip().splitlines()[-1] == compare_command.INTERRUPTED
    assert len(sigterm["children"]) == 2 and sigterm["survivors"] == []  # both runs ended, none left training
    run_dir, checkpoints = sigterm["run_dir"], sigterm["checkpoints"]
    assert checkpoints and not sigterm["had_metrics"]  # stopped in training, at a checkpoint
    first, continued = sigterm["log"].read_text().split("continued by a rerun of acamkd-compare")  # one rerun
    assert f"interrupted: run the same command again to resume from {run_dir / checkpoints[-1]}." in first
    assert f"resuming the interrupted run from {run_dir / checkpoints[-1]}" in continued  # resumed, not restarted
    assert all((run_dir / name).is_dir() for name in checkpoints)  # the folder was not cleared
    assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == 80  # 40 epochs x 2 steps
    assert set(sigterm["report"]["metrics"]["eval_mean_iou"]["rows"]) == {"student_alone", "mse"}


@pytest.mark.slow
def test_a_failed_row_is_reported_and_the_command_ends_with_an_error(sigterm, capsys):
    """CWD at temperature 0 diverges at its first step (NonFiniteLossError): the other runs (reused: they do not
    read --cwd_tau) are reported, CWD's row is marked failed, the advice is over the rows that finished, and the
    command ends with exit status 1 naming the failed runs' logs."""
    out = sigterm["out"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        compare_command.main([*sigterm["argv"], "--methods", "none", "mse", "cwd", "--cwd_tau", "0"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out.count("(reused)") == 4 and captured.out.count("(trained)") == 0
    assert captured.err.strip().splitlines()[-1] == (
        f"acamkd-compare: error: 2 of 6 run(s) failed: cwd seed 0 (log: {out / 'cwd' / 'seed0.log'}), cwd seed 1 "
        f"(log: {out / 'cwd' / 'seed1.log'}). The report (its failed runs with their reasons) covers the runs that "
        "finished; the same command trains the failed ones again.")
    report = json.loads((out / "comparison.json").read_text())
    assert [(record["row"], record["seed"]) for record in report["failed"]] == [("cwd", 0), ("cwd", 1)]
    assert all("NonFiniteLossError: the training loss became nan" in record["failed"] for record in report["failed"])
    markdown = (out / "comparison.md").read_text()
    assert "| cwd (failed: seeds 0, 1) | - | -, - | - | - | - | - |" in markdown
    assert markdown.count("- cwd seed ") == 2 and "## Failed runs" in markdown
    rows = report["metrics"]["eval_mean_iou"]["rows"]
    finished = {name: dict(zip(rows[name]["seeds"], rows[name]["per_seed"])) for name in ("student_alone", "mse")}
    assert report["advice"] == advice(finished, {"student_alone": "the student alone"}, "student_alone", "mIoU")
    assert "cwd" not in report["advice"]
