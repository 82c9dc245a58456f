"""Training throughput of distillation with 1 process against N processes (DDP), same per-process batch.

    python benchmarks/ddp_scaling.py                          # CPU: 1 vs 2 processes, gloo, one thread each
    python benchmarks/ddp_scaling.py --device cuda            # GPUs: 1 vs all visible GPUs, nccl
    python benchmarks/ddp_scaling.py --processes 1 2 4 --steps 30 --per_device_batch 8

Each configuration is a fresh launch of this file in worker mode: plain ``python`` for 1 process (how one device is
used: no process group, no DDP), ``torch.distributed.run --standalone`` (torchrun) for more. A worker runs the real
``DistillationTrainer`` (ACAM-KD at the logits, random-init presets: default small-segformer teacher ->
tiny-segformer student, on a synthetic Cityscapes-layout set written once beforehand, random crops and flips as in
training) for ``--warmup`` + ``--steps`` optimizer steps and times the last ``--steps`` of them (wall clock between
the end of step ``warmup`` and the end of the last step; rank 0 reports). On CPU every process gets
OMP_NUM_THREADS=1, so N processes use N cores. Each configuration is launched ``--repeats`` times, interleaved with
the others (1, 2, 1, 2, ...: load that drifts on a shared machine hits all of them), and the median is reported.

Weak scaling: the per-process batch is fixed, so N processes train N times as many images per step.
``speed-up`` = images/s(N) / images/s(1); ``efficiency`` = speed-up / N = steps/s(N) / steps/s(1) (1.0 = perfect:
the all-reduce and the synchronisation cost nothing). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the sibling modules, also when loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing  # noqa: E402


# ----------------------------------------------------------------------------------------------------- worker
def _worker(options: argparse.Namespace) -> None:
    """One process of one configuration (launched by ``_launch``); rank 0 writes the timings to ``--_result``."""
    import torch
    from transformers import TrainerCallback

    from acamkd_hf import DistillationArguments, DistillationTrainer
    from acamkd_hf.data import (
        SegmentationTransforms,
        collate_segmentation,
        load_cityscapes,
    )
    from acamkd_hf.models import SEGMENTATION_PRESETS, default_image_processor

    timing.pin_threads(1, options.device)

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            timing.cuda_sync(options.device)
            self.ends.append(time.perf_counter())

    data = load_cityscapes(options._data)
    height, width = options.image_size
    processor = default_image_processor((height, width))
    train = data.dataset["train"].with_transform(
        SegmentationTransforms(processor, train=True, crop_size=(height, width), label_lookup=data.label_lookup)
    )
    torch.manual_seed(0)
    teacher = SEGMENTATION_PRESETS[options.teacher](data.id2label)
    student = SEGMENTATION_PRESETS[options.student](data.id2label)
    args = DistillationArguments(
        output_dir=options._output,
        method="acamkd",
        distillation_points=["logits"],
        per_device_train_batch_size=options.per_device_batch,
        max_steps=options.warmup + options.steps,
        learning_rate=1e-3,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=options.device == "cpu",  # without it, CPU processes would not form a process group
        dataloader_pin_memory=options.device == "cuda",
        seed=0,
    )
    clock = StepClock()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train,
                                  data_collator=collate_segmentation, callbacks=[clock])
    trainer.train()
    if trainer.is_world_process_zero():
        seconds = clock.ends[-1] - clock.ends[options.warmup - 1]
        result = {"world_size": trainer.args.world_size, "steps": options.steps, "seconds": seconds,
                  "device": str(trainer.args.device)}
        Path(options._result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------------- launcher
def _launch(processes: int, options: argparse.Namespace, data: str, scratch: str, repeat: int) -> dict:
    result_file = Path(scratch, f"result_{processes}_{repeat}.json")
    worker_flags = [
        __file__, "--_worker", "--_data", data, "--_output", str(Path(scratch, f"out_{processes}_{repeat}")),
        "--_result", str(result_file), "--device", options.device, "--per_device_batch", str(options.per_device_batch),
        "--steps", str(options.steps), "--warmup", str(options.warmup), "--teacher", options.teacher,
        "--student", options.student, "--image_size", *map(str, options.image_size),
    ]
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if options.device == "cpu":
        env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([*launcher, *worker_flags], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result = json.loads(result_file.read_text())
    if result["world_size"] != processes:
        raise SystemExit(f"asked for {processes} processes, the Trainer ran with world size {result['world_size']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", type=int, nargs="+", default=None,
                        help="process counts to time (default: 1 2 on CPU, 1 and the number of GPUs on CUDA)")
    parser.add_argument("--per_device_batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (start-up, first batches)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="launches per configuration, interleaved; the median is reported")
    parser.add_argument("--image_size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"))
    parser.add_argument("--teacher", default="small-segformer")
    parser.add_argument("--student", default="tiny-segformer")
    for hidden in ("--_data", "--_output", "--_result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.warmup < 1:
        parser.error("--warmup must be >= 1 (the timing starts at the end of a step)")
    if options._worker:
        return _worker(options)

    if options.processes is None:
        if options.device == "cuda":
            import torch

            gpus = torch.cuda.device_count()
            if gpus < 1:
                raise SystemExit("--device cuda: no GPU visible")
            options.processes = sorted({1, gpus})
        else:
            options.processes = [1, 2]
    if 1 not in options.processes:
        options.processes = [1, *options.processes]  # the baseline of the speed-up

    from acamkd_hf.data import make_synthetic_cityscapes

    with tempfile.TemporaryDirectory(prefix="ddp_scaling_") as scratch:
        # Written once, before any launch: enough images that no configuration repeats an image within a step.
        num_train = max(options.processes) * options.per_device_batch * 4
        data = str(make_synthetic_cityscapes(Path(scratch, "data"), num_train=num_train, num_val=2,
                                             image_size=tuple(options.image_size), num_classes=8, seed=0))
        launched = {processes: 0 for processes in options.processes}

        def steps_per_s(processes: int) -> float:
            run = _launch(processes, options, data, scratch, launched[processes])
            launched[processes] += 1
            return run["steps"] / run["seconds"]

        # Interleaved (1, 2, 1, 2, ...: the same order each round): on a shared machine the load drifts, and it
        # should hit every configuration.
        jobs = {processes: (lambda processes=processes: steps_per_s(processes)) for processes in options.processes}
        rates = timing.interleaved(jobs, options.repeats, rotate=False)
        results = {processes: {"steps_per_s": timing.median(r), "all": r} for processes, r in rates.items()}

    base = results[1]["steps_per_s"]
    print(f"\n{options.teacher} -> {options.student}, ACAM-KD at the logits, {options.image_size[0]}x"
          f"{options.image_size[1]} crops, {options.per_device_batch} images per process and step, {options.steps} "
          f"timed steps after {options.warmup}, device {options.device}"
          + (", 1 thread per process" if options.device == "cpu" else "") + f", median of {options.repeats}\n")
    print("| processes | global batch | steps/s | images/s | speed-up | efficiency | steps/s of each launch |")
    print("|---|---|---|---|---|---|---|")
    for processes, result in results.items():
        steps = result["steps_per_s"]
        images = steps * options.per_device_batch * processes
        speed_up = images / (base * options.per_device_batch)
        each = ", ".join(f"{rate:.2f}" for rate in result["all"])
        print(f"| {processes} | {options.per_device_batch * processes} | {steps:.2f} | {images:.1f} | {speed_up:.2f}x |"
              f" {speed_up / processes:.2f} | {each} |")
    largest = max(results)
    fields = {f"processes_{p}_steps_per_s": r["steps_per_s"] for p, r in results.items()}
    fields["scaling_efficiency"] = results[largest]["steps_per_s"] / base
    print()
    timing.print_result(fields, lambda key: 3)


if __name__ == "__main__":
    main()
