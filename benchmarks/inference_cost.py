"""Inference cost of a distilled student against the same architecture trained alone: nothing from distillation
may reach the saved artifact.

    python benchmarks/inference_cost.py [--student tiny-segformer] [--teacher small-segformer] [--quick]

Both students start from one initialisation and are trained for a few steps by `DistillationTrainer` under one
recipe on a synthetic Cityscapes-layout set (the library's API as in docs/python-api.md's Trainer example): once with
`--method acamkd` at every distillation point the pair has (logits and the backbone stages: as many distillation
modules as possible, so a leak would show), once with `--method none`. Each run writes a checkpoint at its last
step (where the distillation modules are expected, in `distillation_modules.safetensors`) and then
`trainer.save_model()`. Both folders are reloaded with `AutoModelForSemanticSegmentation.from_pretrained`; compared
are the top-level files, `config.json`, the `model.safetensors` header (tensor names, dtypes, shapes), its size,
the reloaded state-dict keys and shapes, the parameter count (also against a freshly built preset of the
architecture), and the forward time in eval mode under `no_grad`: --repeats interleaved rounds (the order of the two
alternates; ``timing.interleaved``), median. Any difference other than the weights' values and the recorded
training arguments stops the script with an AssertionError. The teacher is random-init (its quality does not
matter for the artifact).

The last line is machine-readable: `RESULT params_distilled=... params_alone=... forward_ms_distilled=...
forward_ms_alone=... ratio=...` (ratio = distilled / alone forward time).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the sibling modules, also when loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing  # noqa: E402

STUDENT_FILE = "model.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="tiny-segformer", help="segmentation preset of the student")
    parser.add_argument("--teacher", default="small-segformer", help="segmentation preset of the teacher")
    parser.add_argument("--method", default="acamkd", help="the distillation method of the distilled run")
    parser.add_argument("--points", nargs="+", default=None, help="default: logits and every stage both models have")
    parser.add_argument("--steps", type=int, default=None, help="training steps of each run (default 8; quick 2)")
    parser.add_argument("--batch", type=int, default=4, help="training batch")
    parser.add_argument("--image-size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"), help="training crops")
    parser.add_argument("--forward-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="input of the timed forward (default 256 512; quick 64 128)")
    parser.add_argument("--forward-batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 61; quick 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, steadier on a shared machine; 0 = torch's default)")
    parser.add_argument("--output-dir", default=None, help="where the two runs are written (default: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 8)
    args.repeats = args.repeats or (3 if args.quick else 61)
    args.forward_size = args.forward_size or ([64, 128] if args.quick else [256, 512])
    if args.quick:
        args.batch = min(args.batch, 2)
    return args


def safetensors_header(path: str) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict]:
    """{tensor name: (dtype, shape)} and the metadata of a safetensors file (read from its header only)."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    metadata = header.pop("__metadata__", {})
    return {name: (entry["dtype"], tuple(entry["shape"])) for name, entry in header.items()}, metadata


def top_level_files(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.startswith("checkpoint-"))


def train_and_save(method, student, teacher, train, processor, collate, args, output_dir):
    from acamkd_hf import DistillationArguments, DistillationTrainer

    training_args = DistillationArguments(
        output_dir=output_dir,
        method=method,
        distillation_points=args.points if method != "none" else None,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=args.steps,  # one checkpoint, at the last step: the distillation modules are there
        logging_steps=args.steps,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_pin_memory=False,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher if method != "none" else None,
        args=training_args,
        train_dataset=train,
        data_collator=collate,
        processing_class=processor,
    )
    started = time.perf_counter()
    trainer.train()
    trainer.save_model()  # the student only
    seconds = time.perf_counter() - started
    modules = trainer.distillation_modules
    module_params = sum(p.numel() for p in modules.parameters()) if modules is not None else 0
    return trainer, seconds, module_params


def build_models(args, root: str):
    """The synthetic training set, one initial student, the teacher and a fresh student preset (all seeded); fills
    ``args.points`` (default: logits and every stage both models have)."""
    import torch

    from acamkd_hf.data import SegmentationTransforms, load_cityscapes, make_synthetic_cityscapes
    from acamkd_hf.models import SEGMENTATION_PRESETS, default_image_processor
    from acamkd_hf.taps import available_points

    data = load_cityscapes(
        make_synthetic_cityscapes(os.path.join(root, "data"), num_train=4 * args.batch, num_val=2,
                                  image_size=tuple(args.image_size), seed=0)
    )
    processor = default_image_processor(tuple(args.image_size))
    train = data.dataset["train"].with_transform(
        SegmentationTransforms(processor, train=True, crop_size=tuple(args.image_size), label_lookup=data.label_lookup)
    )
    torch.manual_seed(0)
    initial_student = SEGMENTATION_PRESETS[args.student](data.id2label)
    teacher = SEGMENTATION_PRESETS[args.teacher](data.id2label)
    if args.points is None:
        teacher_points = set(available_points(teacher))
        args.points = [p for p in available_points(initial_student) if p in teacher_points]
    fresh = SEGMENTATION_PRESETS[args.student](data.id2label)  # the architecture, untouched by any training
    return data, processor, train, initial_student, teacher, fresh


def print_header(args, num_classes: int) -> None:
    import torch
    import transformers

    print("Inference cost: distilled student vs the same architecture trained alone")
    print(f"  python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"cpu, torch threads {torch.get_num_threads()}")
    print(f"  student {args.student}, teacher {args.teacher} (random init), {num_classes} classes; "
          f"{args.steps} steps of batch {args.batch} at {args.image_size[0]}x{args.image_size[1]} on the synthetic "
          "set, "
          f"same initialisation and seed")
    print(f"  distilled run: method {args.method} at {', '.join(args.points)}; alone: method none")
    print(f"  forward: batch {args.forward_batch} x 3 x {args.forward_size[0]} x {args.forward_size[1]}, eval, "
          "no_grad, "
          f"{args.repeats} interleaved rounds, median")
    print(flush=True)


def train_runs(args, initial_student, teacher, train, processor, root: str) -> dict[str, dict]:
    """Trains and saves the distilled and the alone run; {name: what the run left (folder, seconds, modules)}."""
    from acamkd_hf.checkpointing import DISTILLATION_MODULES_NAME
    from acamkd_hf.data import collate_segmentation

    runs = {}
    for name, method in (("distilled", args.method), ("alone", "none")):
        folder = os.path.join(root, name)
        trainer, seconds, module_params = train_and_save(
            method, copy.deepcopy(initial_student), copy.deepcopy(teacher), train, processor, collate_segmentation,
            args, folder,
        )
        checkpoints = sorted(n for n in os.listdir(folder) if n.startswith("checkpoint-"))
        side_file = os.path.join(folder, checkpoints[-1], DISTILLATION_MODULES_NAME) if checkpoints else None
        runs[name] = {
            "folder": folder,
            "seconds": seconds,
            "module_params": module_params,
            "trained_params": sum(p.numel() for p in trainer.student.parameters()),
            "side_file_in_checkpoint": side_file is not None and os.path.isfile(side_file),
            "side_file_tensors": (
                len(safetensors_header(side_file)[0]) if side_file and os.path.isfile(side_file) else 0
            ),
        }
        del trainer
    return runs


def reload_run(run: dict) -> None:
    """Reloads a run's folder with ``from_pretrained`` and reads its files into ``run``."""
    from transformers import AutoModelForSemanticSegmentation

    folder = run["folder"]
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    run["model"] = model
    run["params"] = sum(p.numel() for p in model.parameters())
    run["state"] = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    run["files"] = top_level_files(folder)
    run["size"] = os.path.getsize(os.path.join(folder, STUDENT_FILE))
    run["header"], run["metadata"] = safetensors_header(os.path.join(folder, STUDENT_FILE))
    with open(os.path.join(folder, "config.json")) as handle:
        run["config"] = json.load(handle)
    with open(os.path.join(folder, "training_args.json")) as handle:
        run["training_args"] = json.load(handle)


def artifact_checks(distilled: dict, alone: dict, fresh_keys: set, fresh_params: int) -> list[tuple[str, bool, str]]:
    """(label, ok, detail) of every equality the two saved students must satisfy."""
    from acamkd_hf.checkpointing import DISTILLATION_MODULES_NAME

    return [
        ("top-level files equal", distilled["files"] == alone["files"],
         f"{distilled['files']} vs {alone['files']}"),
        (f"no {DISTILLATION_MODULES_NAME} outside checkpoints",
         DISTILLATION_MODULES_NAME not in distilled["files"], ""),
        ("config.json equal", distilled["config"] == alone["config"],
         str({k for k in distilled["config"].keys() | alone["config"].keys()
              if distilled["config"].get(k) != alone["config"].get(k)})),
        ("safetensors header equal (names, dtypes, shapes)", distilled["header"] == alone["header"],
         str(set(distilled["header"]) ^ set(alone["header"]))),
        ("safetensors metadata equal", distilled["metadata"] == alone["metadata"],
         f"{distilled['metadata']} vs {alone['metadata']}"),
        ("model.safetensors size equal", distilled["size"] == alone["size"], f"{distilled['size']} vs {alone['size']}"),
        ("state-dict keys equal", set(distilled["state"]) == set(alone["state"]),
         str(set(distilled["state"]) ^ set(alone["state"]))),
        ("state-dict shapes equal", distilled["state"] == alone["state"], ""),
        ("state-dict keys == freshly built architecture", set(distilled["state"]) == fresh_keys,
         str(set(distilled["state"]) ^ fresh_keys)),
        ("parameter count equal (and == fresh preset)", distilled["params"] == alone["params"] == fresh_params,
         f"{distilled['params']} / {alone['params']} / {fresh_params}"),
        ("parameter count == the trained student's", distilled["params"] == distilled["trained_params"], ""),
        ("distillation modules existed and were checkpointed", distilled["module_params"] > 0
         and distilled["side_file_in_checkpoint"], f"{distilled['module_params']} params"),
        ("no side file in the 'none' run", not alone["side_file_in_checkpoint"], ""),
    ]


def forward_times(models: dict, args) -> tuple[dict[str, list[float]], dict[str, tuple]]:
    """Eval-mode forward under ``no_grad``: two untimed calls per model, then --repeats interleaved rounds (the order
    of the two alternates each round); {name: [ms per round]} and {name: output shape}."""
    import torch

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.forward_batch, 3, *args.forward_size, generator=generator)
    shapes = {}
    with torch.no_grad():
        for name, model in models.items():  # warm-up
            shapes[name] = tuple(model(pixel_values=pixel_values).logits.shape)
            model(pixel_values=pixel_values)
        jobs = {name: (lambda model=model: timing.wall_ms(lambda: model(pixel_values=pixel_values)))
                for name, model in models.items()}
        times = timing.interleaved(jobs, args.repeats)
    return times, shapes


def print_report(args, distilled, alone, forward_ms, times, fresh_params, moved, weight_gap, different_args) -> None:
    header = f"{'':<38} | {'distilled (' + args.method + ')':>20} | {'alone (none)':>14}"
    print(header)
    print("-" * len(header))
    rows = [
        ("parameters (reloaded)", f"{distilled['params']:,}", f"{alone['params']:,}"),
        ("model.safetensors bytes", f"{distilled['size']:,}", f"{alone['size']:,}"),
        ("state-dict tensors", f"{len(distilled['state'])}", f"{len(alone['state'])}"),
        ("forward ms (median)", f"{forward_ms['distilled']:.2f}", f"{forward_ms['alone']:.2f}"),
        ("forward ms (min-max)", f"{min(times['distilled']):.1f}-{max(times['distilled']):.1f}",
         f"{min(times['alone']):.1f}-{max(times['alone']):.1f}"),
        ("forward ms min / min", f"{min(times['distilled']) / min(times['alone']):.3f}", ""),
        ("training (s, incl. save)", f"{distilled['seconds']:.1f}", f"{alone['seconds']:.1f}"),
        ("distillation-module params (trained)", f"{distilled['module_params']:,}", f"{alone['module_params']:,}"),
        ("  ... tensors in checkpoint side file", f"{distilled['side_file_tensors']}", f"{alone['side_file_tensors']}"),
    ]
    for label, a, b in rows:
        print(f"{label:<38} | {a:>20} | {b:>14}")
    print(f"top-level files (both): {', '.join(distilled['files'])}")
    print(f"fresh {args.student} preset: {fresh_params:,} parameters; largest parameter change of the distilled "
          f"student from init {moved:.3g}, largest gap between the two students' tensors {weight_gap:.3g}")
    print(f"training_args.json differs only in: {', '.join(different_args) or 'nothing'} "
          "(the run's record, not the model)")
    print()


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    import transformers

    timing.pin_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()  # the shard-writing / weight-loading bars
    started = time.perf_counter()
    root = args.output_dir or tempfile.mkdtemp(prefix="inference_cost_")
    data, processor, train, initial_student, teacher, fresh = build_models(args, root)
    fresh_params = sum(p.numel() for p in fresh.parameters())
    print_header(args, len(data.id2label))

    runs = train_runs(args, initial_student, teacher, train, processor, root)
    for run in runs.values():
        reload_run(run)
    distilled, alone = runs["distilled"], runs["alone"]
    checks = artifact_checks(distilled, alone, set(fresh.state_dict()), fresh_params)
    distilled_state, alone_state = distilled["model"].state_dict(), alone["model"].state_dict()
    weight_gap = max((distilled_state[k].float() - alone_state[k].float()).abs().max().item() for k in distilled_state)
    initial_params = dict(initial_student.named_parameters())
    moved = max((distilled_state[k].float() - p.detach().float()).abs().max().item() for k, p in initial_params.items())
    checks.append(("the two students' weights differ (both trained, differently)", weight_gap > 0, f"{weight_gap}"))
    different_args = sorted(k for k in distilled["training_args"].keys() | alone["training_args"].keys()
                            if distilled["training_args"].get(k) != alone["training_args"].get(k)
                            and k not in ("output_dir", "logging_dir"))

    times, shapes = forward_times({"distilled": distilled["model"], "alone": alone["model"]}, args)
    checks.append(("output shapes equal", shapes["distilled"] == shapes["alone"], str(shapes)))
    forward_ms = timing.medians(times)
    print_report(args, distilled, alone, forward_ms, times, fresh_params, moved, weight_gap, different_args)
    failed = []
    for label, ok, detail in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {label}" + (f": {detail}" if not ok and detail else ""))
        if not ok:
            failed.append(label)
    print(f"\nwall time of the benchmark: {time.perf_counter() - started:.0f} s (outputs in {root})")
    if failed:
        raise AssertionError(f"the distilled artifact differs from the student trained alone: {', '.join(failed)}")
    result = {
        "params_distilled": distilled["params"],
        "params_alone": alone["params"],
        "forward_ms_distilled": forward_ms["distilled"],
        "forward_ms_alone": forward_ms["alone"],
        "ratio": forward_ms["distilled"] / forward_ms["alone"],
        "size_bytes_distilled": distilled["size"],
        "size_bytes_alone": alone["size"],
        "keys_equal": int(set(distilled["state"]) == set(alone["state"])),
        "distillation_module_params": distilled["module_params"],
    }
    timing.print_result(result, lambda key: 2 if key.startswith("forward_ms") else 3 if key == "ratio" else None)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
