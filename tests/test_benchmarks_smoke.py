"""The overhead and inference-cost benchmarks run (in their --quick form) and end with a RESULT line; the inference
check's equalities hold. In-process (one import of torch/transformers for all): a smoke test, not a measurement."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.parametrize(
    "flags", [["--feature-only"], ["--no-breakdown", "--kv-reductions", "2", "auto"]], ids=["feature-only", "models"]
)
def test_step_overhead_quick(flags, capsys):
    _load("step_overhead").main(["--quick", *flags])
    result = _result_line(capsys.readouterr().out)
    if "--kv-reductions" in flags:
        assert result["acamkd_r2_over_mse"] > 0 and result["peak_acamkd_rauto_over_mse"] > 0
    for key in ("acamkd_over_mse", "acamkd_over_student", "mse_over_student", "mgd_over_student", "cwd_over_student",
                "peak_acamkd_over_mse", "peak_acamkd_over_student"):
        assert result[key] > 0, key


def test_gpu_suite_commands_parse():
    """Every benchmark command of benchmarks/gpu_suite.sh parses with its script's own argument parser (the suite
    itself needs a GPU; a typo in a flag would otherwise be found only on the lent machine)."""
    import shlex

    text = (BENCHMARKS / "gpu_suite.sh").read_text().replace("\\\n", " ")
    commands = [line.split("python ", 1)[1] for line in text.splitlines()
                if line.startswith("step ") and "python benchmarks/" in line]
    assert len(commands) == 7
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
    _load("inference_cost").main(["--quick", "--output-dir", str(tmp_path)])  # raises if any equality fails
    output = capsys.readouterr().out
    result = _result_line(output)
    assert result["params_distilled"] == result["params_alone"] > 0
    assert result["size_bytes_distilled"] == result["size_bytes_alone"]
    assert result["keys_equal"] == 1 and result["distillation_module_params"] > 0
    assert result["forward_ms_distilled"] > 0 and result["forward_ms_alone"] > 0
    assert "FAIL" not in output


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
def test_quality_benchmark_refuses_a_finished_run_whose_defaults_changed(tmp_path, recorded, expected):
    """A finished run is reused only if today's code makes the same settings of its flags; a setting that a
    variant fills in is a default too (the record here: what --method acamkd resolved to when it ran)."""
    import json

    from acamkd_hf.fusion import DEFAULT_MAX_KV_TOKENS

    quality = _load("quality")
    expected = {key: (old, DEFAULT_MAX_KV_TOKENS if new == "today" else new) for key, (old, new) in expected.items()}
    today = {"method": "acamkd", "distillation_points": ["logits"], "alpha": 1.0, "acamkd_variant": "recommended",
             "lambda_div": 1.0, "num_masks": 8, "mask_kinds": "both", "fusion_mode": "teacher_query",
             "fusion_kv_reduction": "auto", "fusion_max_kv_tokens": DEFAULT_MAX_KV_TOKENS, "detach_student_in_fusion": True,
             "alignment": "conv1x1", "detach_masks_in_imitation": False, "mask_normalizer": "sum",
             "mask_activation": "sigmoid", "imitation_standardize": True, "mask_objective": "adversarial",
             "standardize_over": "image"}  # fmt: skip
    (tmp_path / "run_config.json").write_text(json.dumps({"distillation": {**today, **recorded}}))
    argv = ["--task", "segmentation", "--output_dir", str(tmp_path), "--method", "acamkd"]
    changed = quality.changed_defaults(argv, tmp_path)
    if "fusion_kv_reduction" in expected:  # the budget is then read on one side only: named, but not the point
        changed.pop("fusion_max_kv_tokens", None)
    assert changed == expected
