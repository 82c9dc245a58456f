"""Training-step cost of each distillation method against the student trained alone, side by side in one run.

    python benchmarks/step_overhead.py                              # CPU: small-segformer -> tiny-segformer
    python benchmarks/step_overhead.py --device cuda                # GPU: DeepLabV3-R101 -> DeepLabV3-MBV2, 512x1024
    python benchmarks/step_overhead.py --feature-only [...]         # = python benchmarks/feature_overhead.py [...]

One training step = forward + backward + gradient clipping + optimizer step, for the methods `none` (the student
alone: no teacher forward, no distillation module), `mse`, `mgd`, `cwd`, `pkd` and `acamkd`, all with the same
teacher, student, batch and distillation points.

Each method gets its own `DistillationTrainer` (the library's own wiring: `freeze_teacher`, `probe_feature_shapes`,
`build_distillation_loss`, `Distiller`, `FeatureTaps`, the method's default weights and number of masks, the
Trainer's AdamW), built from the same initial student and teacher weights (one deep copy of each per method, so no
teacher hook of one method holds features of another). One step runs what the Trainer runs: `model.train()`,
`trainer.compute_loss(model, batch)` under `trainer.compute_loss_context_manager()` (which runs the teacher under
`no_grad` in eval mode and the Distiller), `accelerator.backward`, `clip_grad_norm_(1.0)`, `optimizer.step()`,
`model.zero_grad()`. The batch is random pixels and labels (the cost does not depend on them).

`--feature-only` runs the other benchmark, `feature_overhead.py` (the distillation modules alone at the paper's
feature-map sizes, fixed teacher maps, a stand-in student), with the remaining flags: the commands written with it
keep working.

Measurement (``overhead_common``, ``timing``): warm-up steps, then --repeats interleaved rounds (order rotated each
round), time = median over rounds (CUDA events on CUDA, one CPU thread by default); step-peak memory = the peak of
allocated tensor bytes during one step above the step's start (CUDA allocator; on CPU the allocator events of
``torch.profiler``); state = parameters, buffers and optimizer state of the Distiller and the teacher. A breakdown
follows: the teacher forward alone, every method's modules alone, ACAM-KD's parts.

The last line is machine-readable: time ratios (`<method>_over_student`, `<method>_over_mse`), step-peak memory
ratios (`peak_<method>_over_...`) and the medians in ms.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the sibling modules, also when loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead_common as common  # noqa: E402


def build_model_setups(args, device: str) -> tuple[list[common.Setup], list[str]]:
    """One ``Setup`` per variant: its own DistillationTrainer over copies of one initial student and teacher."""
    import torch

    from acamkd_hf.data import CITYSCAPES_TRAIN_CLASSES
    from acamkd_hf.models import SEGMENTATION_PRESETS
    from acamkd_hf.taps import probe_feature_shapes

    id2label = dict(enumerate(CITYSCAPES_TRAIN_CLASSES))
    overrides = {"use_pretrained_backbone": False} if args.teacher.startswith("deeplabv3") else {}
    torch.manual_seed(0)
    teacher = SEGMENTATION_PRESETS[args.teacher](id2label, **overrides)
    overrides = {"use_pretrained_backbone": False} if args.student.startswith("deeplabv3") else {}
    student = SEGMENTATION_PRESETS[args.student](id2label, **overrides)
    # on the device before the probes and the per-method copies (the trainer's own probes then run there too)
    teacher, student = teacher.to(device), student.to(device)
    height, width = args.image_size
    student_shapes = probe_feature_shapes(student, args.points, (height, width))
    teacher_shapes = probe_feature_shapes(teacher, args.points, (height, width))
    teacher_params, student_params = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    precision = "bf16 autocast (DistillationArguments bf16=True)" if args.bf16 else "float32"
    lines = [
        (f"teacher {args.teacher} ({teacher_params:,} params), student {args.student} ({student_params:,} params), "
         f"random init (no download), {len(id2label)} classes"),
        f"input batch {args.batch} x 3 x {height} x {width} (random pixels and labels), {precision}",
        "points (C, H, W) student -> teacher: "
        + ", ".join(f"{p} {student_shapes[p]} -> {teacher_shapes[p]}" for p in args.points),
    ]
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.batch, 3, height, width, generator=generator).to(device)
    labels = torch.randint(0, len(id2label), (args.batch, height, width), generator=generator).to(device)
    batch = {"pixel_values": pixel_values, "labels": labels}
    output_root = tempfile.mkdtemp(prefix="step_overhead_")
    setups = [
        trainer_setup(args, device, label, method, settings, student, teacher, batch, os.path.join(output_root, label))
        for label, method, settings in common.variants(args)
    ]
    return setups, lines


def trainer_setup(args, device, label, method, settings, student, teacher, batch, output_dir) -> common.Setup:
    """The Setup of one variant: a DistillationTrainer over deep copies of the student and (distilling) teacher."""
    import torch

    from acamkd_hf import DistillationArguments, DistillationTrainer

    training_args = DistillationArguments(
        output_dir=output_dir,
        method=method,
        **settings,
        distillation_points=list(args.points) if method != "none" else None,
        report_to="none",
        use_cpu=device == "cpu",
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        max_grad_norm=1.0,
        bf16=args.bf16,
    )
    trainer = DistillationTrainer(
        model=copy.deepcopy(student),
        teacher_model=copy.deepcopy(teacher) if method != "none" else None,
        args=training_args,
        probe_image_size=tuple(args.image_size),
    )
    trainer.create_optimizer()
    model = trainer.model
    pixel_values = batch["pixel_values"]

    def step() -> None:
        # Trainer.training_step + the inner loop's clipping and optimizer step, without its bookkeeping
        model.train()
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(model, batch)
        trainer.accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        model.zero_grad(set_to_none=True)

    setup = common.Setup()
    setup.method, setup.step = label, step
    setup.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    setup.state_bytes = lambda: trainer_state_bytes(trainer)
    if method != "none":
        setup.point_losses = dict(model.distillation_loss.points.items())
        setup.teacher_forward = lambda: trainer.teacher_features(pixel_values)

        def capture() -> tuple[dict, dict]:
            teacher_features = trainer.teacher_features(pixel_values)
            with torch.no_grad():
                outputs = model.student(pixel_values=pixel_values)
                student_features = model.student_taps.collect(outputs)
            return student_features, teacher_features

        setup.capture = capture
    return setup


def trainer_state_bytes(trainer) -> int:
    """Parameters, buffers and optimizer state of the Distiller (student + modules), and the teacher's."""
    tensors = [*trainer.model.parameters(), *trainer.model.buffers(), *common.optimizer_tensors(trainer.optimizer)]
    if trainer.teacher is not None:
        tensors += [*trainer.teacher.parameters(), *trainer.teacher.buffers()]
    return common.tensor_bytes(tensors)


def split_feature_only(argv: list[str] | None) -> tuple[bool, list[str]]:
    """(whether --feature-only was given, the other flags): that flag hands the run to feature_overhead.py."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--feature-only", action="store_true")
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.feature_only, rest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    feature_only, argv = split_feature_only(argv)
    if feature_only:
        import feature_overhead

        return feature_overhead.parse_args(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feature-only", action="store_true",
                        help="run benchmarks/feature_overhead.py (synthetic paper-scale feature maps) with the other "
                             "flags instead")
    common.add_common_arguments(parser, repeats_help="timed rounds (default 7; cuda 20; quick 2)",
                                warmup_help="untimed steps per method first (default 2; cuda 5)")
    parser.add_argument("--teacher", default=None, help="preset (default small-segformer; cuda deeplabv3-resnet101)")
    parser.add_argument("--student", default=None, help="preset (default tiny-segformer; cuda deeplabv3-mobilenetv2)")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="default 128 256; cuda 512 1024")
    parser.add_argument("--points", nargs="+", default=None,
                        help="distillation points (default: logits stage1..4; cuda: logits, the paper's)")
    args = parser.parse_args(argv)

    cuda = args.device == "cuda"
    if args.quick:
        defaults = {"repeats": 2, "warmup": 1, "batch": 1, "image_size": [32, 64]}
    else:
        defaults = {"repeats": 20 if cuda else 7, "warmup": 5 if cuda else 2, "batch": 8 if cuda else 2,
                    "image_size": [512, 1024] if cuda else [128, 256]}
    common.fill_defaults(args, defaults)
    if args.quick:  # the smallest pair, two points: exercises every code path in seconds
        args.teacher = args.teacher or "tiny-segformer"
        args.points = args.points or ["logits", "stage1"]
    args.teacher = args.teacher or ("deeplabv3-resnet101" if cuda else "small-segformer")
    args.student = args.student or ("deeplabv3-mobilenetv2" if cuda else "tiny-segformer")
    if args.points is None:
        args.points = ["logits"] if cuda else ["logits", "stage1", "stage2", "stage3", "stage4"]
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    feature_only, rest = split_feature_only(argv)
    if feature_only:
        import feature_overhead

        return feature_overhead.main(rest)
    args = parse_args(rest)
    common.prepare_device(args)
    started = time.perf_counter()
    setups, setting_lines = build_model_setups(args, args.device)
    return common.run(args, setups, setting_lines, started, state_note="")


if __name__ == "__main__":
    sys.exit(main() and 0)
