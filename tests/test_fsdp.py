"""FSDP with the shipped `configs/accelerate/fsdp.yaml`: train, checkpoint, kill, resume, and compare with a run
that never stopped (issue 15, item 7).

FSDP needs GPUs here. On CPU processes (gloo), accelerate 1.15 does not shard: with `use_cpu` it runs the launch as
plain multi-process CPU training (MULTI_CPU, DDP-style; the CLI then says so, see
`test_fsdp_on_cpu_processes_is_said_to_be_plain_data_parallel`), and without it, `fsdp_sync_module_states: true`
stops with "no available devices". So the end-to-end test runs where GPUs exist (2 processes with 2+ GPUs, 1 with
one) and is skipped elsewhere with that reason. torch's own FSDP does shard on CPU processes (gloo): the ACAM-KD
module's use of its parameters under sharding is tested that way, here too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSemanticSegmentation

from acamkd_hf import cli, preflight
from acamkd_hf.data import make_synthetic_cityscapes

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "distill.py"
FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp.yaml"
GPUS = torch.cuda.device_count()
NO_FSDP_HERE = ("FSDP needs GPUs: on CPU processes accelerate runs fsdp.yaml as plain data-parallel training "
                "(use_cpu) or stops (fsdp_sync_module_states without a device)")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}


def _command(out: Path, data: Path, processes: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG), "--num_processes",
            str(processes), "--main_process_port", "0", str(SCRIPT),
            "--output_dir", str(out), "--synthetic_dir", str(data), "--synthetic_num_train", "32",
            "--synthetic_num_val", "4", "--synthetic_image_size", "32", "64", "--teacher", "tiny-segformer",
            "--student", "tiny-segformer", "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2",
            "--per_device_train_batch_size", "2", "--compare_student_alone", "false", "--disable_tqdm", "true"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(GPUS == 0, reason=NO_FSDP_HERE)
def test_fsdp_run_killed_and_resumed_ends_like_an_uninterrupted_one(tmp_path):
    processes = min(GPUS, 2)
    data = make_synthetic_cityscapes(tmp_path / "data", num_train=32, num_val=4, image_size=(32, 64))
    whole = tmp_path / "whole"
    done = subprocess.run(_command(whole, data, processes), capture_output=True, text=True, env=_env(tmp_path),
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]

    stopped = tmp_path / "stopped"
    command = _command(stopped, data, processes)
    launch = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
                              start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not (stopped / "checkpoint-4").is_dir() and launch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert launch.poll() is None, "the run ended before it could be killed"
    os.killpg(launch.pid, signal.SIGKILL)  # every rank at once, mid-training
    launch.wait(timeout=60)
    assert not (stopped / "metrics.json").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resuming the interrupted run from" in resumed.stderr

    expected = AutoModelForSemanticSegmentation.from_pretrained(whole).state_dict()
    actual = AutoModelForSemanticSegmentation.from_pretrained(stopped).state_dict()
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, atol=1e-4, rtol=1e-4, msg=name)


def test_fsdp_on_cpu_processes_is_said_to_be_plain_data_parallel(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    _, _, args = cli.parse_arguments(["--dataset", "/data/x", "--use_cpu", "true"])
    assert preflight.launch_warnings(args) == [
        "FSDP was asked for, but the processes train on CPU: accelerate runs them as plain data-parallel (DDP-style) "
        "training, nothing is sharded. FSDP needs GPUs."
    ]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert preflight.launch_warnings(args) == []


def _fsdp_wrapped_fusion_worker(rank: int, world: int, port: int, channels: int, size: int, results) -> None:
    """One of two gloo processes: ACAM-KD's point loss under torch FSDP with a size policy that shards each of the
    fusion's projections (W_q, W_k, W_v) as a unit of its own; rank 0 reports loss and gradient norm."""
    import functools

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    from acamkd_hf.acamkd_loss import ACAMKDLoss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        loss = ACAMKDLoss(16, channels, num_masks=3, fusion_kv_reduction="1")
        policy = functools.partial(size_based_auto_wrap_policy, min_num_params=channels * channels // 2)
        model = FullyShardedDataParallel(loss, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu"))
        wrapped = [name for name, module in model.named_modules() if isinstance(module, FullyShardedDataParallel)]
        torch.manual_seed(1)
        student = torch.randn(2, 16, size, size, requires_grad=True)
        teacher = torch.randn(2, channels, size, size)
        out = model(student, teacher)
        out["loss"].backward()
        if rank == 0:
            results.put((wrapped, out["loss"].item(), student.grad.norm().item()))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("size", [8, 17])  # 64 key tokens: the factored fusion; 289 (> 256): the dense kernel path
def test_acamkd_point_under_fsdp_sharding_of_the_fusion_equals_the_unwrapped_loss(size):
    """The fusion's projections sharded as FSDP units of their own (torch FSDP on 2 CPU processes, gloo): the
    parameters must be gathered for every use, so the loss and the student's gradient equal the unwrapped module's.
    (Reading a wrapped projection's weight directly, outside its own call, would see a shard: an error or wrong
    numbers.)"""
    import socket

    import torch.multiprocessing as mp

    channels = 96
    torch.manual_seed(0)
    from acamkd_hf.acamkd_loss import ACAMKDLoss

    reference_loss = ACAMKDLoss(16, channels, num_masks=3, fusion_kv_reduction="1")
    torch.manual_seed(1)
    student = torch.randn(2, 16, size, size, requires_grad=True)
    teacher = torch.randn(2, channels, size, size)
    expected = reference_loss(student, teacher)["loss"]
    expected.backward()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_fsdp_wrapped_fusion_worker, args=(2, port, channels, size, results), nprocs=2, join=True,
                       start_method="spawn")  # fmt: skip
    wrapped, loss, grad_norm = results.get()
    assert all(any(name.endswith(f"fusion.{conv}") for name in wrapped) for conv in ("query", "key", "value")), wrapped
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert grad_norm == pytest.approx(student.grad.norm().item(), rel=1e-4)
