"""Training-step cost of each method's distillation modules at the paper's feature-map sizes, against a stand-in
student trained alone, side by side in one run.

    python benchmarks/feature_overhead.py                # CPU: one paper-scale level (64x128 tokens)
    python benchmarks/feature_overhead.py --device cuda  # GPU: paper-scale feature maps, batch 8, 4 levels

(`python benchmarks/step_overhead.py --feature-only [...]` runs this same benchmark.)

A pure distillation-module benchmark: the teacher features are fixed random maps (B, C_t, H, W) per level (no
teacher forward is timed), and the student is a small stand-in conv net (a 3x3 stem, then per level a depthwise 3x3 +
pointwise 1x1 block with ReLU, and a 1x1 classifier with cross-entropy on the first level as the task loss). One
training step = forward + backward + gradient clipping + AdamW step, for the methods `none` (the stand-in alone),
`mse`, `mgd`, `cwd`, `pkd` and `acamkd`. The per-level losses are the library's own (`build_distillation_loss` ->
`MultiPointDistillationLoss`, the same defaults as the trainer's: method's alpha, M = --num-masks); the stand-in is
not a Hugging Face model, so there is no `Distiller` / `FeatureTaps` here. The "student" ratios of this benchmark
depend on the stand-in's arbitrary size; the ratios to `mse` and the absolute overheads (ms, MiB) are what it is for.

Measurement (``overhead_common``, ``timing``): warm-up steps, then --repeats interleaved rounds (order rotated each
round), time = median over rounds (CUDA events on CUDA, one CPU thread by default); step-peak memory = the peak of
allocated tensor bytes during one step above the step's start (CUDA allocator; on CPU the allocator events of
``torch.profiler``); state = parameters, buffers and optimizer state of the stand-in and the modules, plus the fixed
teacher maps. A breakdown follows: every method's modules alone, ACAM-KD's parts.

The last line is machine-readable: time ratios (`<method>_over_student`, `<method>_over_mse`), step-peak memory
ratios (`peak_<method>_over_...`) and the medians in ms.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the sibling modules, also when loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead_common as common  # noqa: E402
from timing import MIB  # noqa: E402


def stand_in_student(channels: int, classes: int, points: list[str], pyramid: bool):
    """3x3 stem, then per level a depthwise 3x3 + pointwise 1x1 block (stride 2 between levels when the levels form
    a pyramid); a 1x1 classifier on level 1 gives the task loss. ``forward(x, labels)`` -> ({level: feature}, loss)."""
    import torch.nn.functional as F
    from torch import nn

    class StandInStudent(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, channels, 3, padding=1)
            self.blocks = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(channels, channels, 3, stride=2 if pyramid and i else 1, padding=1, groups=channels),
                    nn.Conv2d(channels, channels, 1),
                    nn.ReLU(),
                )
                for i in range(len(points))
            )
            self.classifier = nn.Conv2d(channels, classes, 1)

        def forward(self, x, labels):
            feature, features = self.stem(x), {}
            for name, block in zip(points, self.blocks):
                feature = block(feature)
                features[name] = feature
            return features, F.cross_entropy(self.classifier(features[points[0]]), labels)

    return StandInStudent()


def build_feature_setups(args, device: str) -> tuple[list[common.Setup], list[str]]:
    """One ``Setup`` per variant: a copy of one initial stand-in student, the method's modules, their AdamW."""
    import torch

    height, width = args.feature_size
    sizes = [
        (height // 2**i, width // 2**i) if args.pyramid else (height, width) for i in range(args.levels)
    ]
    points = [f"level{i + 1}" for i in range(args.levels)]
    c_s, c_t, classes = args.student_channels, args.channels, args.num_masks
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, height, width, generator=generator).to(device)
    labels = torch.randint(0, classes, (args.batch, height, width), generator=generator).to(device)
    teacher_features = {
        name: torch.randn(args.batch, c_t, h, w, generator=generator).to(device) for name, (h, w) in zip(points, sizes)
    }
    shapes = ({name: (c_s, h, w) for name, (h, w) in zip(points, sizes)},
              {name: (c_t, h, w) for name, (h, w) in zip(points, sizes)})
    torch.manual_seed(0)
    initial = stand_in_student(c_s, classes, points, args.pyramid)
    feature_bytes = common.tensor_bytes(teacher_features.values())
    lines = [
        f"feature-only: {args.levels} level(s) of "
        + ", ".join(f"{h}x{w} ({h * w:,} tokens)" for h, w in sizes)
        + f", teacher C_t={c_t}, student C_s={c_s}, batch {args.batch}, "
        + ("bf16 autocast" if args.bf16 else "float32"),
        (f"teacher features: fixed random maps (no teacher forward); student: stand-in conv net "
         f"({sum(p.numel() for p in initial.parameters()):,} params), task loss = cross-entropy of {classes} classes "
         f"on level 1; ACAM-KD M = {args.num_masks}"),
    ]
    setups = [
        module_setup(args, device, label, method, overrides, initial, points, shapes, (x, labels, teacher_features),
                     feature_bytes)
        for label, method, overrides in common.variants(args)
    ]
    lines.append("teacher feature maps held: " + f"{feature_bytes / MIB:.1f} MiB (in every "
                 "method's state except none)")
    return setups, lines


def module_setup(args, device, label, method, overrides, initial, points, shapes, inputs, feature_bytes):
    """The Setup of one variant: the stand-in (a copy of ``initial``) plus the method's per-level losses."""
    import torch
    from torch import nn

    from acamkd_hf.distiller import build_distillation_loss
    from acamkd_hf.settings import DistillationSettings

    x, labels, teacher_features = inputs
    torch.manual_seed(0)  # every method's modules start alike (build_distillation_loss draws from the global RNG)
    student = copy.deepcopy(initial).to(device)
    settings = DistillationSettings(method=method, **overrides).resolved(points, num_masks=args.num_masks)
    losses = build_distillation_loss(settings, *shapes)
    modules = nn.ModuleDict({"student": student, **({"distillation_loss": losses} if losses is not None else {})})
    modules.to(device).train()
    optimizer = torch.optim.AdamW([p for p in modules.parameters() if p.requires_grad], lr=5e-5)

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=args.bf16):
            features, loss = student(x, labels)
            if losses is not None:  # what Distiller.forward adds: the sum over points of the per-point losses
                loss = loss + losses(features, teacher_features)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        modules.zero_grad(set_to_none=True)

    def state_bytes() -> int:
        tensors = [*modules.parameters(), *modules.buffers(), *common.optimizer_tensors(optimizer)]
        return common.tensor_bytes(tensors) + (feature_bytes if label != "none" else 0)

    setup = common.Setup()
    setup.method, setup.step, setup.state_bytes = label, step, state_bytes
    setup.trainable_params = sum(p.numel() for p in modules.parameters() if p.requires_grad)
    if losses is not None:
        setup.point_losses = dict(losses.points.items())

        def capture() -> tuple[dict, dict]:
            with torch.no_grad():
                features, _ = student(x, labels)
            return features, teacher_features

        setup.capture = capture
    return setup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser, repeats_help="timed rounds (default 5; cuda 20; quick 2)",
                                warmup_help="untimed steps per method first (default 1; cuda 5)")
    parser.add_argument("--feature-size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"),
                        help="finest level (default 64 128: stride 8 of a 512x1024 crop)")
    parser.add_argument("--levels", type=int, default=None,
                        help="number of levels (default 1 on CPU, to stay within minutes; cuda 4). The per-level "
                             "modules are independent, so their cost adds up over levels")
    parser.add_argument("--pyramid", action="store_true", help="halve H, W per level (FPN) instead of all at stride 8")
    parser.add_argument("--channels", type=int, default=256, help="teacher channels C_t")
    parser.add_argument("--student-channels", type=int, default=256, help="student channels C_s")
    parser.add_argument("--num-masks", type=int, default=19, help="ACAM-KD M (and the stand-in's classes)")
    args = parser.parse_args(argv)

    cuda = args.device == "cuda"
    if args.quick:
        defaults = {"repeats": 2, "warmup": 1, "batch": 1, "levels": 2}
        args.feature_size = [16, 32]
        args.channels = min(args.channels, 32)
        args.student_channels = min(args.student_channels, 32)
    elif cuda:
        defaults = {"repeats": 20, "warmup": 5, "batch": 8, "levels": 4}
    else:  # one ACAM-KD step at 8,192 tokens is ~7 s on one shared core
        defaults = {"repeats": 5, "warmup": 1, "batch": 1, "levels": 1}
    return common.fill_defaults(args, defaults)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    common.prepare_device(args)
    started = time.perf_counter()
    setups, setting_lines = build_feature_setups(args, args.device)
    return common.run(args, setups, setting_lines, started, state_note=", + the fixed teacher maps")


if __name__ == "__main__":
    sys.exit(main() and 0)
