"""Multi-process distillation on this CPU-only machine (gloo backend), and the shipped accelerate configs.

* ``accelerate launch --multi_gpu --num_processes 2 scripts/distill.py ...`` and ``torchrun --nproc_per_node 2
  scripts/distill.py ...`` as real subprocesses: both ranks train as one world of 2 and the run leaves a loadable,
  trained student. (``accelerate launch --cpu --num_processes 2`` is not used: it silently starts one process.)
* Equivalence, through ``tests/workers/ddp_equivalence.py`` (the library API): after training, the Distiller
  (student + distillation modules) is bit-identical on both ranks, and 2 processes x batch b equals 1 process x
  batch 2b. A negative control without gradient all-reduce shows that exactly these checks fail when gradients are
  not synced.
* ``configs/accelerate/*.yaml`` parse with accelerate's own loader and launcher into the intended set-up.

``scripts/distill.py`` sets ``use_cpu`` itself when it is launched as several processes on a machine without GPUs
(the launches here do not pass it): without it accelerate finds no device to distribute over and each process
would train alone on the whole data set (the trainer refuses that). The worker sets ``use_cpu=True``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForSemanticSegmentation, set_seed

from acamkd_hf.data import make_synthetic_cityscapes
from acamkd_hf.models import SEGMENTATION_PRESETS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "distill.py"
WORKER = REPO / "tests" / "workers" / "ddp_equivalence.py"
CONFIGS = REPO / "configs" / "accelerate"

NUM_TRAIN = 16
PER_DEVICE_BATCH = 2
WORKER_STEPS = 3
# 2 x batch 2 against 1 x batch 4: the same sums in another order (per-rank means, then the all-reduce average).
# Measured differences after 3 SGD steps under the default settings: <= 2e-5 (float32 round-off, amplified by the
# per-image standardisation's division by small standard deviations; raw features: <= 2e-8); without gradient sync
# ~1e-3 to 8e-3, with the statistics over each rank's batch (batch_statistics) ~2e-3 to 9e-3. 1e-4 sits 5x above the
# first and 15x or more below the others.
ATOL, RTOL = 1e-4, 1e-4


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    """One small Cityscapes-layout set, written before any launch (two ranks writing it at once would race)."""
    return Path(
        make_synthetic_cityscapes(
            tmp_path_factory.mktemp("synthetic"), num_train=NUM_TRAIN, num_val=4, image_size=(32, 64), num_classes=4,
            seed=0,
        )
    )


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # 2 processes on 2 shared cores: one thread each
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",  # this file tests the CPU (gloo) path, also on a machine that has GPUs
        "HF_HOME": str(tmp_path / "hf_home"),  # no user accelerate default_config.yaml mixes into the launch
    }


def _run(command: list, tmp_path: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, env=_env(tmp_path),
                          cwd=tmp_path, timeout=600, check=False)
    assert done.returncode == 0, f"{command[:6]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


# ----------------------------------------------------------------------------------------------- scripts/distill.py
def _distill_flags(out: Path, data: Path) -> list[str]:
    # A preset teacher (random init): nothing is trained before the distillation itself.
    return ["--output_dir", str(out), "--synthetic_dir", str(data), "--teacher", "tiny-segformer",
            "--student", "tiny-segformer", "--num_train_epochs", "1", "--per_device_train_batch_size",
            str(PER_DEVICE_BATCH), "--compare_student_alone", "false", "--disable_tqdm", "true"]


def _check_one_world_of_two(out: Path) -> None:
    """Both ranks trained, as one world of 2, and the folder is the trained student."""
    # Each rank saves its own RNG state into the checkpoint: files 0 and 1 (a lone process writes rng_state.pth).
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints, f"no checkpoint in {out}"
    assert {p.name for p in checkpoints[-1].glob("rng_state*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["hardware"]["num_processes"] == 2
    # The data was split over the ranks: one epoch takes ceil(N / (b x 2)) steps, half of what one process takes.
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == math.ceil(NUM_TRAIN / (PER_DEVICE_BATCH * 2))
    # A plain HF folder holding trained weights: the script builds the preset student after set_seed(0).
    student = AutoModelForSemanticSegmentation.from_pretrained(out)
    set_seed(0)
    untrained = SEGMENTATION_PRESETS["tiny-segformer"](student.config.id2label).state_dict()
    trained = student.state_dict()
    assert trained.keys() == untrained.keys()
    assert any(not torch.equal(trained[name], untrained[name]) for name in trained)


def test_accelerate_launch_multi_gpu_trains_on_two_cpu_processes(tmp_path, synthetic_root):
    out = tmp_path / "student"
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
          SCRIPT, *_distill_flags(out, synthetic_root)], tmp_path)
    _check_one_world_of_two(out)


def test_torchrun_trains_on_two_cpu_processes(tmp_path, synthetic_root):
    out = tmp_path / "student"
    # torch.distributed.run is torchrun; --standalone picks a free rendezvous port (tests may run side by side).
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          SCRIPT, *_distill_flags(out, synthetic_root)], tmp_path)
    _check_one_world_of_two(out)


# ----------------------------------------------------------------------------------------------- equivalence
def _run_worker(out: Path, data: Path, *, processes: int, per_device_batch: int, variants: tuple[str, ...]) -> dict:
    """Launches the worker; returns {variant: {"ranks": {rank: record + "state"}, "initial": state}}."""
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    _run([*launcher, WORKER, "--data", data, "--out", out, "--per_device_batch", str(per_device_batch),
          "--max_steps", str(WORKER_STEPS), "--variants", *variants], out)
    runs = {}
    for variant in variants:
        ranks = {}
        for rank in range(processes):
            record = json.loads((out / variant / f"rank{rank}.json").read_text())
            record["state"] = safetensors.torch.load_file(out / variant / f"rank{rank}.safetensors")
            ranks[rank] = record
        runs[variant] = {"ranks": ranks, "initial": safetensors.torch.load_file(out / variant / "initial.safetensors")}
    return runs


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory, synthetic_root) -> dict:
    """One process (no torchrun, no process group), batch 2b: the default settings and the batch-statistics control."""
    return _run_worker(tmp_path_factory.mktemp("one_process"), synthetic_root, processes=1,
                       per_device_batch=2 * PER_DEVICE_BATCH, variants=("synced", "batch_statistics"))


@pytest.fixture(scope="module")
def one_process(one_process_runs) -> dict:
    """The reference: one process, batch 2b, the default settings."""
    return one_process_runs["synced"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, synthetic_root) -> dict:
    """2 processes (torchrun, gloo), batch b each: the normal run and the two negative controls, in one launch."""
    return _run_worker(tmp_path_factory.mktemp("two_processes"), synthetic_root, processes=2,
                       per_device_batch=PER_DEVICE_BATCH, variants=("synced", "no_sync", "batch_statistics"))


def _group(state: dict, prefix: str) -> dict:
    tensors = {name: tensor for name, tensor in state.items() if name.startswith(prefix)}
    assert tensors, f"no {prefix}* tensors"
    return tensors


def _assert_ranks_identical(run: dict, prefix: str) -> None:
    """DDP applies the same all-reduced gradient to the same weights on every rank: bit-identical after training."""
    first, second = _group(run["ranks"][0]["state"], prefix), _group(run["ranks"][1]["state"], prefix)
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"ranks differ in {len(different)} tensors, e.g. {different[:3]}"


def _assert_matches_one_process(run: dict, reference: dict, prefix: str) -> None:
    expected = _group(reference["ranks"][0]["state"], prefix)
    got = _group(run["ranks"][0]["state"], prefix)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")


def _check_same_data_split_over_ranks(run: dict, reference: dict) -> None:
    """Step k of the 2-process run saw the examples of step k of the 1-process run, half on each rank."""
    one = reference["ranks"][0]["batches"]
    first, second = run["ranks"][0]["batches"], run["ranks"][1]["batches"]
    for step in range(WORKER_STEPS):
        assert len(first[step]) == len(second[step]) == PER_DEVICE_BATCH
        assert not set(first[step]) & set(second[step]), f"step {step}: both ranks got the same example"
        assert sorted(first[step] + second[step]) == sorted(one[step]), f"step {step}: another global batch"


def _check_two_ranks_trained(run: dict) -> None:
    records = run["ranks"].values()
    assert sorted(r["rank"] for r in records) == [0, 1]
    assert {r["world_size"] for r in records} == {2}
    assert len({r["pid"] for r in records}) == 2
    assert {r["global_step"] for r in records} == {WORKER_STEPS}


def test_two_processes_equal_one_process_with_the_same_global_batch(one_process, two_processes):
    """2 ranks x batch b == 1 process x batch 2b; student and distillation modules identical on both ranks."""
    assert one_process["ranks"][0]["world_size"] == 1
    two = two_processes["synced"]
    _check_two_ranks_trained(two)
    _check_same_data_split_over_ranks(two, one_process)
    for prefix in ("student.", "distillation_loss."):
        # Training moved the weights (otherwise equality below would say nothing).
        trained, initial = _group(two["ranks"][0]["state"], prefix), _group(two["initial"], prefix)
        assert any(not torch.equal(trained[name], initial[name]) for name in trained), f"{prefix}* did not train"
        _assert_ranks_identical(two, prefix)
        _assert_matches_one_process(two, one_process, prefix)
    # The logged loss (the Trainer's mean over ranks) is the 1-process loss of the same global batch.
    losses = [[e["loss"] for e in run["ranks"][0]["log_history"] if "loss" in e] for run in (one_process, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_without_gradient_sync_the_same_checks_fail(one_process, two_processes):
    """Negative control: the worker's backward under DDP's no_sync(); same data, same start, no all-reduce. The
    checks of the test above must catch it, for the student and for the distillation modules each."""
    unsynced = two_processes["no_sync"]
    _check_two_ranks_trained(unsynced)
    _check_same_data_split_over_ranks(unsynced, one_process)  # only the gradient sync differs
    for prefix in ("student.", "distillation_loss."):
        with pytest.raises(AssertionError, match="ranks differ"):
            _assert_ranks_identical(unsynced, prefix)
        with pytest.raises(AssertionError):
            _assert_matches_one_process(unsynced, one_process, prefix)


# ----------------------------------------------------------------------------------------------- accelerate configs
EXPECTED_SETUPS = {
    # file: (distributed_type, (multi_gpu, use_fsdp, use_deepspeed) as `accelerate launch` resolves them)
    "single_gpu.yaml": ("NO", (False, False, False)),
    "multi_gpu.yaml": ("MULTI_GPU", (True, False, False)),
    "fsdp.yaml": ("FSDP", (False, True, False)),
    "deepspeed_zero2.yaml": ("DEEPSPEED", (False, False, True)),
}


def _launch_arguments(path: Path):
    """What `accelerate launch --config_file path script.py` resolves (its own parser and validation; no launch).
    With --config_file given, a user's default accelerate config plays no part."""
    from accelerate.commands.launch import (
        _validate_launch_command,
        launch_command_parser,
    )

    args, config, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(path), "x.py"]))
    return args, config


def test_the_shipped_configs_are_the_expected_ones():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED_SETUPS)


@pytest.mark.parametrize("name", sorted(EXPECTED_SETUPS))
def test_accelerate_config_parses_with_accelerates_own_loader(name):
    from accelerate.commands.config.config_args import (
        ClusterConfig,
        load_config_from_file,
    )
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType

    path = CONFIGS / name
    distributed_type, launch_flags = EXPECTED_SETUPS[name]
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == DistributedType(distributed_type)
    assert config.mixed_precision == "no"  # precision is the script's --bf16 / --fp16, not a hidden default

    # The header says when to use the file and gives its launch line.
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "When:" in header
    assert f"accelerate launch --config_file configs/accelerate/{name} scripts/distill.py" in header

    # accelerate copies fsdp_config / deepspeed_config keys onto its arguments without checking them: a misspelt
    # key would be silently ignored. Every key must be an argument `accelerate launch` has.
    known = vars(launch_command_parser().parse_args(["x.py"]))
    for section in ("fsdp_config", "deepspeed_config"):
        for key in getattr(config, section) or {}:
            assert key in known, f"{name}: {section}.{key} is not an accelerate launch argument"

    args, _ = _launch_arguments(path)
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == launch_flags
    assert args.num_processes == (1 if name == "single_gpu.yaml" else 8)  # the paper's 8 GPUs


def test_fsdp_config_reaches_the_processes_as_intended():
    """The environment the FSDP launch hands each process (what FullyShardedDataParallelPlugin reads)."""
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _ = _launch_arguments(CONFIGS / "fsdp.yaml")
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "1"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "SIZE_BASED_WRAP" and env["FSDP_MIN_NUM_PARAMS"] == "1000000"
    assert env["FSDP_USE_ORIG_PARAMS"] == "true"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"  # the trainer's _save writes the plain student
    # transformers' from_pretrained leaves weights empty on ranks > 0 when this is true (is_fsdp_enabled()); the
    # teacher is never FSDP-wrapped, so nothing would fill them.
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"


def test_deepspeed_config_reaches_the_processes_as_intended():
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, config = _launch_arguments(CONFIGS / "deepspeed_zero2.yaml")
    args.deepspeed_fields_from_accelerate_config = list(config.deepspeed_config)  # set by launch_command itself
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "false"
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] == "none"
    # Left to the Trainer ("auto"): --gradient_accumulation_steps and --max_grad_norm are the one place to set them.
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env and "ACCELERATE_GRADIENT_CLIPPING" not in env


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path, synthetic_root):
    """A scheduler's SIGTERM to torchrun (forwarded to each rank): the ranks agree on the step (the flag is
    all-reduced), write one checkpoint there together and end; the same command then resumes from it."""
    import signal
    import time

    out = tmp_path / "student"
    flags = [*_distill_flags(out, synthetic_root), "--num_train_epochs", "1000", "--save_strategy", "steps",
             "--save_steps", "3", "--report_to", "none"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT, *flags]
    process = subprocess.Popen([str(part) for part in command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=_env(tmp_path), cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not list(out.glob("checkpoint-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted: run the same command again")]
    assert len(lines) == 1, stderr[-4000:]  # said once (rank 0)
    last = Path(lines[0].rsplit(" ", 1)[-1].rstrip("."))
    step = int(last.name.split("-")[-1])
    assert {p.name for p in last.glob("rng_state*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}  # both ranks
    assert json.loads((last / "trainer_state.json").read_text())["global_step"] == step


def test_with_batch_statistics_two_processes_differ_from_one(one_process_runs, two_processes):
    """The default's per-image standardisation is what makes 2 x b equal 1 x 2b: with the statistics over each
    rank's batch (PKD's) the same comparison fails (the ranks still agree with each other: DDP syncs them)."""
    two, one = two_processes["batch_statistics"], one_process_runs["batch_statistics"]
    _check_same_data_split_over_ranks(two, one)
    _assert_ranks_identical(two, "student.")
    with pytest.raises(AssertionError):
        _assert_matches_one_process(two, one, "student.")
