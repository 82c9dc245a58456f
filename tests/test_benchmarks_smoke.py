"""The overhead and inference-cost benchmarks run (in their --quick form) and end with a RESULT line; the inference
check's equalities hold. In-process (one import of torch/transformers for all): a smoke test, not a measurement."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _result_line(output: str) -> dict[str, float]:
    last = output.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return {key: float(value) for key, value in (item.split("=") for item in last.split()[1:])}


def _within_rounding(ratio: float, numerator: float, denominator: float, digits: int, ratio_digits: int) -> bool:
    """Whether a printed ratio is what the printed (rounded) numerator and denominator allow: the exact ratio of the
    unrounded values lies in [(n - h) / (d + h), (n + h) / (d - h)] with h half a unit of the last printed digit, and
    the printed ratio is that ratio rounded to ``ratio_digits``."""
    half, half_ratio = 0.5 * 10**-digits, 0.5 * 10**-ratio_digits + 1e-9
    low = (numerator - half) / (denominator + half)
    high = (numerator + half) / (denominator - half) if denominator > half else math.inf
    return low - half_ratio <= ratio <= high + half_ratio


#: the RESULT keys of the step-overhead benchmarks, in their order (the reduced ACAM-KD variants after the base keys)
OVERHEAD_KEYS = {
    "feature-only": [
        "acamkd_over_mse", "acamkd_over_student", "mse_over_student", "mgd_over_student", "cwd_over_student",
        "pkd_over_student", "mgd_over_mse", "cwd_over_mse", "pkd_over_mse",
        "peak_acamkd_over_student", "peak_mse_over_student", "peak_mgd_over_student", "peak_cwd_over_student",
        "peak_pkd_over_student", "peak_acamkd_over_mse",
        "student_ms", "mse_ms", "mgd_ms", "cwd_ms", "pkd_ms", "acamkd_ms", "acamkd_peak_mib", "student_peak_mib",
    ],
    "models": [
        "acamkd_over_mse", "acamkd_over_student", "mse_over_student", "mgd_over_student", "cwd_over_student",
        "pkd_over_student", "mgd_over_mse", "cwd_over_mse", "pkd_over_mse", "acamkd_r2_over_mse",
        "acamkd_rauto_over_mse",
        "peak_acamkd_over_student", "peak_mse_over_student", "peak_mgd_over_student", "peak_cwd_over_student",
        "peak_pkd_over_student", "peak_acamkd_over_mse", "peak_acamkd_r2_over_mse", "peak_acamkd_rauto_over_mse",
        "student_ms", "mse_ms", "mgd_ms", "cwd_ms", "pkd_ms", "acamkd_ms", "acamkd_r2_ms", "acamkd_rauto_ms",
        "acamkd_peak_mib", "student_peak_mib",
    ],
}  # fmt: skip


def _check_overhead_table(output: str, returned: dict[str, float]) -> None:
    """The method table agrees with the RESULT values: each row's median (in its min-max), its ratio to the student,
    and a state that the distilling setups only add to."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.split() for cell in line.split("|")]
        if len(cells) == 6 and cells[0] and (cells[0][0] + "_ms") in returned:
            rows[cells[0][0]] = cells
    assert set(rows) == {key[: -len("_ms")] for key in returned if key.endswith("_ms")}
    for name, (_, (ms, spread), (x_student, _x_mse), _peak, (state,), _trainable) in rows.items():
        median = returned[f"{name}_ms"]
        assert ms == f"{median:.1f}", name
        low, high = (float(v) for v in spread.split("-"))
        assert low - 0.5 <= median <= high + 0.5, (name, spread, median)  # the median of the rounds it shows
        assert x_student == f"{median / returned['student_ms']:.2f}", name
        assert float(state) >= float(rows["student"][4][0]), name  # teacher / modules / maps add to the student's


@pytest.mark.parametrize(
    "flags", [["--feature-only"], ["--no-breakdown", "--kv-reductions", "2", "auto"]], ids=["feature-only", "models"]
)
def test_step_overhead_quick(flags, capsys, request):
    returned = _load("step_overhead").main(["--quick", *flags])
    output = capsys.readouterr().out
    printed = _result_line(output)
    expected = OVERHEAD_KEYS[request.node.callspec.id]
    assert list(printed) == expected and list(returned) == expected
    for key, value in returned.items():
        assert math.isfinite(value) and value > 0, key
        assert printed[key] == float(f"{value:.{1 if key.endswith(('_ms', '_mib')) else 3}f}"), key
    for key in expected:  # every time ratio is the ratio of the two medians it names, also as printed
        if key.endswith(("_over_mse", "_over_student")) and not key.startswith("peak_"):
            name, base = key.rsplit("_over_", 1)
            assert returned[key] == pytest.approx(returned[f"{name}_ms"] / returned[f"{base}_ms"], rel=1e-12), key
            assert _within_rounding(printed[key], printed[f"{name}_ms"], printed[f"{base}_ms"], 1, 3), key
    # the step peaks: acamkd/student = acamkd/mse * mse/student, and the MiB values give the same ratio
    peak = returned["peak_acamkd_over_student"]
    assert peak == pytest.approx(returned["peak_acamkd_over_mse"] * returned["peak_mse_over_student"], rel=1e-12)
    assert peak == pytest.approx(returned["acamkd_peak_mib"] / returned["student_peak_mib"], rel=1e-12)
    _check_overhead_table(output, returned)
    if "--no-breakdown" not in flags:  # the breakdown's step differences are those of the same medians
        for base in ("student", "mse"):
            line = next(line for line in output.splitlines() if line.strip().startswith(f"step: acamkd - {base}"))
            difference = returned["acamkd_ms"] - returned[f"{base}_ms"]
            assert abs(float(line.split()[-1]) - difference) <= 0.05 + 1e-9, line


def test_step_overhead_feature_only_is_feature_overhead():
    """``step_overhead.py --feature-only`` (the documented commands) hands its other flags to feature_overhead.py."""
    args = _load("step_overhead").parse_args(["--feature-only", "--levels", "3", "--pyramid", "--device", "cuda"])
    direct = _load("feature_overhead").parse_args(["--levels", "3", "--pyramid", "--device", "cuda"])
    assert vars(args) == vars(direct) and args.levels == 3 and not hasattr(args, "teacher")
    model = _load("step_overhead").parse_args(["--quick"])
    assert model.teacher == "tiny-segformer" and not hasattr(model, "levels")


def test_timing_harness():
    """The shared harness: interleaved rounds rotate (or keep) the order, medians, and the RESULT line's digits."""
    timing = _load("timing")
    calls = []
    jobs = {name: (lambda name=name: calls.append(name) or float(len(calls))) for name in "abc"}
    values = timing.interleaved(jobs, 3)
    assert "".join(calls) == "abcbcacab"
    assert values == {"a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}
    calls.clear()
    timing.interleaved(jobs, 2, rotate=False)
    assert "".join(calls) == "abcabc"
    assert timing.medians({"a": [3.0, 1.0, 2.0], "b": [1.0, 4.0]}) == {"a": 2.0, "b": 2.5}
    line = timing.result_line({"n": 7, "x_ms": 1.25, "r": 2 / 3}, lambda key: None if key == "n" else 3)
    assert line == "RESULT n=7 x_ms=1.250 r=0.667"


def test_gpu_suite_commands_parse():
    """Every benchmark command of benchmarks/gpu_suite.sh parses with its script's own argument parser (the suite
    itself needs a GPU; a typo in a flag would otherwise be found only on the lent machine)."""
    import shlex

    text = (BENCHMARKS / "gpu_suite.sh").read_text().replace("\\\n", " ")
    commands = [line.split("python ", 1)[1] for line in text.splitlines()
                if line.startswith("step ") and "python benchmarks/" in line]
    assert commands and len(commands) == text.count("python benchmarks/")  # every benchmark line was found
    for command in commands:
        script, *argv = shlex.split(command)
        name = Path(script).stem
        if name == "step_overhead":
            args = _load(name).parse_args(argv)
            assert args.device == "cuda"
        else:
            assert name == "fusion_memory" and argv == ["--device", "cuda"]


def test_step_overhead_cuda_without_gpu_says_so(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        _load("step_overhead").main(["--device", "cuda", "--quick"])


def test_inference_cost_quick(tmp_path, capsys):
    returned = _load("inference_cost").main(["--quick", "--output-dir", str(tmp_path)])  # raises if any check fails
    output = capsys.readouterr().out
    result = _result_line(output)
    assert list(result) == list(returned) == [
        "params_distilled", "params_alone", "forward_ms_distilled", "forward_ms_alone", "ratio", "size_bytes_distilled",
        "size_bytes_alone", "keys_equal", "distillation_module_params"]  # fmt: skip
    forward_ms = returned["forward_ms_distilled"], returned["forward_ms_alone"]
    assert returned["ratio"] == pytest.approx(forward_ms[0] / forward_ms[1], rel=1e-12)
    assert result["params_distilled"] == result["params_alone"] > 0
    assert result["size_bytes_distilled"] == result["size_bytes_alone"]
    assert result["keys_equal"] == 1 and result["distillation_module_params"] > 0
    assert result["forward_ms_distilled"] > 0 and result["forward_ms_alone"] > 0
    assert _within_rounding(result["ratio"], result["forward_ms_distilled"], result["forward_ms_alone"], 2, 3)
    median_row = next(line for line in output.splitlines() if line.startswith("forward ms (median)"))
    assert median_row.split("|")[1].split() == [f"{result['forward_ms_distilled']:.2f}"]
    assert median_row.split("|")[2].split() == [f"{result['forward_ms_alone']:.2f}"]
    assert "FAIL" not in output


def test_quality_benchmark_plans_its_runs_for_acamkd_compare(tmp_path):
    """benchmarks/quality.py is a caller of acamkd-compare's runs (the reuse rule, pairing and cells are the
    package's, tested in tests/test_compare.py): its plan keeps the folder layout and flags its finished runs were
    made with (the student alone shared by the tables of a task, every other row under its table), and a stale run
    ends the benchmark with the package's refusal."""
    import json

    quality = _load("quality")
    flags = ["--table", "feature", "--rows", "student", "pkd", "--seeds", "3", "--work_dir", str(tmp_path)]
    options = quality.parse(flags)
    options.work_dir = str(tmp_path / options.task)
    teacher, runs = quality.plan_runs(options, quality.TABLES["feature"])
    work = tmp_path / "segmentation"
    assert teacher.output_dir == work / "teacher" and teacher.seed is None
    assert [(run.row, run.seed, run.output_dir) for run in runs] == [
        ("student", 3, work / "student" / "seed3"), ("pkd", 3, work / "feature" / "pkd" / "seed3")]
    assert runs[1].argv[-6:] == ["--method", "pkd", "--num_train_epochs", "40", "--teacher", str(work / "teacher")]
    assert runs[1].argv[runs[1].argv.index("--distillation_points") + 1] == "stage2"
    folder = runs[1].output_dir
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    (folder / quality.RUN_RECORD).write_text(json.dumps({"wall_s": 1.0, "argv": [*runs[1].argv, "--alpha", "2"]}))
    with pytest.raises(SystemExit, match=r"quality: 1 finished run\(s\) were made with other settings.*--alpha 2.*use "
                                         r"another --work_dir, or delete those folders"):
        quality.main(flags)
