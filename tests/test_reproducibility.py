"""The same command gives the same numbers on the same machine (issue 15, item 6).

What changes the numbers' last digits: the number of torch threads (reductions split differently), the hardware
and library versions (other kernels), the number of processes. The run records them (run_config.json's
`hardware`, the card's "hardware" row). `--full_determinism true` (TrainingArguments' flag, through the CLI) also
makes torch refuse non-deterministic kernels, for bit-identical reruns on GPUs.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from acamkd_hf import cli

#: Numbers that measure time, not the model.
TIMINGS = ("runtime", "per_second", "preparation_time")


def _numbers(record: dict, prefix: str = "") -> dict[str, float]:
    numbers = {}
    for key, value in record.items():
        if isinstance(value, dict):
            numbers.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not any(t in key for t in TIMINGS):
            numbers[f"{prefix}{key}"] = value
    return numbers


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.slow
def test_the_same_command_gives_the_same_numbers(tmp_path):
    """Two runs of one command (full determinism on, one thread, each in its own output folder: a folder holding
    the finished run would not train again) write the same metrics.json numbers, every one of them."""
    environment = dict(os.environ)
    flags = ["--synthetic_dir", str(tmp_path / "data"), "--synthetic_num_train", "8", "--synthetic_num_val", "4",
             "--synthetic_image_size", "32", "64", "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
             "--disable_tqdm", "true", "--compare_student_alone", "true", "--full_determinism", "true"]  # fmt: skip
    try:
        for name in ("first", "second"):
            cli.run([*flags, "--output_dir", str(tmp_path / name)])
    finally:  # full determinism switches torch (and a few environment variables) for the rest of the process
        torch.use_deterministic_algorithms(False)
        os.environ.clear()
        os.environ.update(environment)
    first, second = (_numbers(json.loads((tmp_path / n / "metrics.json").read_text())) for n in ("first", "second"))
    assert first.keys() == second.keys() and len(first) > 40
    assert {key: (first[key], second[key]) for key in first if not _same(first[key], second[key])} == {}
    run_config = json.loads((tmp_path / "first" / "run_config.json").read_text())
    assert run_config["training"]["full_determinism"] is True
    assert run_config["hardware"]["torch_threads"] == torch.get_num_threads()
    assert f"{torch.get_num_threads()} torch thread(s)" in (tmp_path / "first" / "README.md").read_text()
