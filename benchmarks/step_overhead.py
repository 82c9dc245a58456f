"""Training-step cost of each distillation method against the student trained alone, side by side in one run.

    python benchmarks/step_overhead.py                              # CPU: small-segformer -> tiny-segformer
    python benchmarks/step_overhead.py --feature-only               # CPU: one paper-scale level (64x128 tokens)
    python benchmarks/step_overhead.py --device cuda                # GPU: DeepLabV3-R101 -> DeepLabV3-MBV2, 512x1024
    python benchmarks/step_overhead.py --device cuda --feature-only # GPU: paper-scale feature maps, batch 8, 4 levels

One training step = forward + backward + gradient clipping + optimizer step, for the methods `none` (the student
alone: no teacher forward, no distillation module), `mse`, `mgd`, `cwd` and `acamkd`, all with the same teacher,
student, batch and distillation points.

Model mode (default). Each method gets its own `DistillationTrainer` (the library's own wiring: `freeze_teacher`,
`probe_feature_shapes`, `build_distillation_loss`, `Distiller`, `FeatureTaps`, the method's default weights and
number of masks, the Trainer's AdamW), built from the same initial student and teacher weights (one deep copy of
each per method, so no teacher hook of one method holds features of another). One step runs what the Trainer runs:
`model.train()`, `trainer.compute_loss(model, batch)` under `trainer.compute_loss_context_manager()` (which runs
the teacher under `no_grad` in eval mode and the Distiller), `accelerator.backward`, `clip_grad_norm_(1.0)`,
`optimizer.step()`, `model.zero_grad()`. The batch is random pixels and labels (the cost does not depend on them).

Feature-only mode (`--feature-only`). A pure distillation-module benchmark at the paper's feature sizes: the teacher
features are fixed random maps (B, C_t, H, W) per level (no teacher forward is timed), and the student is a small
stand-in conv net (a 3x3 stem, then per level a depthwise 3x3 + pointwise 1x1 block with ReLU, and a 1x1 classifier
with cross-entropy on the first level as the task loss). The per-level losses are the library's own
(`build_distillation_loss` -> `MultiPointDistillationLoss`, the same defaults as the trainer's: method's alpha,
M = --num-masks); the stand-in is not a Hugging Face model, so there is no `Distiller` / `FeatureTaps` here. The
"student" ratios of this mode depend on the stand-in's arbitrary size; the ratios to `mse` and the absolute
overheads (ms, MiB) are what it is for.

Measurement. Warm-up steps first (every method, so that kernels are loaded and optimizer states exist), then
--repeats rounds; in each round every method runs one timed step, in an order rotated by one each round
(interleaved: a load spike on the shared machine hits all methods alike). Reported time = median over rounds.
CPU runs use one intra-op thread by default (--threads): on the shared 2-core development machine a second OpenMP
thread made the same step 5-40x slower and erratic, whenever another job held a core.
CUDA: CUDA events around the step, synchronised. Memory = the peak of allocated tensor bytes during one step above
what was allocated when the step began (activations, gradients, temporaries; the same quantity on both devices):
on CUDA `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, minus `memory_allocated()` at the
start; on CPU (where PyTorch keeps no allocator peak counter, and RSS mostly measures glibc's caching) from
`torch.profiler` with `profile_memory=True`: the running sum of the CPU allocator's allocation (+) and free (-)
events, in time order, over one separate profiled step; its maximum is the step peak. "State" is what lives between
steps: parameters + buffers of the Distiller (student + distillation modules) and of the teacher, plus the
optimizer's state. After the main table, a breakdown runs the same way (interleaved, median): the teacher forward
alone, every method's distillation modules alone (forward + backward on the points' features captured from one
step), and ACAM-KD's parts (adapter, STCA-FF fusion attention, ASCM selection units; the rest = the masked losses,
Dice and glue, as full module minus the parts).

The last line is machine-readable: time ratios (`<method>_over_student`, `<method>_over_mse`), step-peak memory
ratios (`peak_<method>_over_...`) and the medians in ms.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

METHODS = ("none", "mse", "mgd", "cwd", "pkd", "acamkd")
DISTILLING = METHODS[1:]


def variants(args) -> list[tuple[str, str, dict]]:
    """``(label, method, settings)`` of every setup: each method with its defaults, then ACAM-KD once per
    ``--kv-reductions`` value (``acamkd_r<R>``: STCA-FF's keys/values average-pooled R per side) and once per
    ``--kv-budgets`` value (``acamkd_kv<N>``: ``auto`` with at most N key/value tokens per point)."""
    rows = [(method, method, {}) for method in METHODS]
    rows += [(f"acamkd_r{r}", "acamkd", {"fusion_kv_reduction": r}) for r in args.kv_reductions]
    rows += [(f"acamkd_kv{n}", "acamkd", {"fusion_kv_reduction": "auto", "fusion_max_kv_tokens": n}) for n in args.kv_budgets]
    return rows
MIB = 2**20


# ----------------------------------------------------------------------------------------------------- measuring
class Meter:
    """Wall time and step-peak memory of a callable on one device."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = device

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def time_ms(self, fn: Callable[[], object]) -> float:
        torch = self.torch
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000

    def peak_bytes(self, fn: Callable[[], object]) -> int:
        """Peak of allocated tensor bytes during fn() above the level when it began."""
        torch = self.torch
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        try:
            events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
            cpu = [e for e in events if str(e.device_type()).endswith("CPU")]
        except AttributeError as error:  # the profiler's result API moved: say so rather than print a wrong number
            raise SystemExit(
                f"cannot read CPU allocation events from torch.profiler in torch {torch.__version__}: {error}"
            ) from error
        running = peak = 0
        for event in sorted(cpu, key=lambda e: e.start_ns()):
            running += event.nbytes()
            peak = max(peak, running)
        return peak


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages (a tied or shared weight counts once)."""
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), tensor.device)
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def optimizer_tensors(optimizer):
    import torch

    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                yield value


def interleaved(jobs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Runs every job once per round, order rotated by one each round; returns {name: [ms per round]}."""
    names = list(jobs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(jobs[name]())
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


# ----------------------------------------------------------------------------------------------------- set-ups
class Setup:
    """One method's training step and what the measurements need of it (attributes set by the builders)."""

    method: str
    step: Callable[[], None]  # one training step
    trainable_params: int
    trainer = None  # model mode: the method's DistillationTrainer
    modules = optimizer = None  # feature-only mode: stand-in student + distillation modules, their AdamW
    # for the breakdown (distilling methods): {point: per-point loss module}, the features of one step, teacher alone
    point_losses: dict | None = None
    capture: Callable[[], tuple[dict, dict]] | None = None
    teacher_forward: Callable[[], object] | None = None


def build_model_setups(args, device: str) -> tuple[list[Setup], list[str]]:
    import torch

    from acamkd_hf import DistillationArguments, DistillationTrainer
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
    setups = []
    for label, method, settings in variants(args):
        training_args = DistillationArguments(
            output_dir=os.path.join(output_root, label),
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
            probe_image_size=(height, width),
        )
        trainer.create_optimizer()
        model = trainer.model

        def step(trainer=trainer, model=model) -> None:
            # Trainer.training_step + the inner loop's clipping and optimizer step, without its bookkeeping
            model.train()
            with trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(model, batch)
            trainer.accelerator.backward(loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
            trainer.optimizer.step()
            model.zero_grad(set_to_none=True)

        setup = Setup()
        setup.method, setup.step = label, step
        setup.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        setup.trainer = trainer
        if method != "none":
            setup.point_losses = dict(model.distillation_loss.points.items())
            setup.teacher_forward = lambda trainer=trainer: trainer.teacher_features(pixel_values)

            def capture(trainer=trainer, model=model) -> tuple[dict, dict]:
                teacher_features = trainer.teacher_features(pixel_values)
                with torch.no_grad():
                    outputs = model.student(pixel_values=pixel_values)
                    student_features = model.student_taps.collect(outputs)
                return student_features, teacher_features

            setup.capture = capture
        setups.append(setup)
    return setups, lines


def build_feature_setups(args, device: str) -> tuple[list[Setup], list[str]]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from acamkd_hf.distiller import build_distillation_loss
    from acamkd_hf.settings import DistillationSettings

    height, width = args.feature_size
    sizes = [
        (height // 2**i, width // 2**i) if args.pyramid else (height, width) for i in range(args.levels)
    ]
    points = [f"level{i + 1}" for i in range(args.levels)]
    c_s, c_t, classes = args.student_channels, args.channels, args.num_masks

    class StandInStudent(nn.Module):
        """3x3 stem, then per level a depthwise 3x3 + pointwise 1x1 block (stride 2 between levels when the
        levels form a pyramid); a 1x1 classifier on level 1 gives the task loss."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, c_s, 3, padding=1)
            self.blocks = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(c_s, c_s, 3, stride=2 if args.pyramid and i else 1, padding=1, groups=c_s),
                    nn.Conv2d(c_s, c_s, 1),
                    nn.ReLU(),
                )
                for i in range(args.levels)
            )
            self.classifier = nn.Conv2d(c_s, classes, 1)

        def forward(self, x, labels):
            feature, features = self.stem(x), {}
            for name, block in zip(points, self.blocks):
                feature = block(feature)
                features[name] = feature
            return features, F.cross_entropy(self.classifier(features[points[0]]), labels)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, height, width, generator=generator).to(device)
    labels = torch.randint(0, classes, (args.batch, height, width), generator=generator).to(device)
    teacher_features = {
        name: torch.randn(args.batch, c_t, h, w, generator=generator).to(device) for name, (h, w) in zip(points, sizes)
    }
    student_shapes = {name: (c_s, h, w) for name, (h, w) in zip(points, sizes)}
    teacher_shapes = {name: (c_t, h, w) for name, (h, w) in zip(points, sizes)}
    torch.manual_seed(0)
    initial = StandInStudent()
    lines = [
        f"feature-only: {args.levels} level(s) of "
        + ", ".join(f"{h}x{w} ({h * w:,} tokens)" for h, w in sizes)
        + f", teacher C_t={c_t}, student C_s={c_s}, batch {args.batch}, "
        + ("bf16 autocast" if args.bf16 else "float32"),
        (f"teacher features: fixed random maps (no teacher forward); student: stand-in conv net "
         f"({sum(p.numel() for p in initial.parameters()):,} params), task loss = cross-entropy of {classes} classes "
         f"on level 1; ACAM-KD M = {args.num_masks}"),
    ]
    setups = []
    for label, method, overrides in variants(args):
        torch.manual_seed(0)  # every method's modules start alike (build_distillation_loss draws from the global RNG)
        student = copy.deepcopy(initial).to(device)
        settings = DistillationSettings(method=method, **overrides).resolved(points, num_masks=args.num_masks)
        losses = build_distillation_loss(settings, student_shapes, teacher_shapes)
        modules = nn.ModuleDict({"student": student, **({"distillation_loss": losses} if losses is not None else {})})
        modules.to(device).train()
        optimizer = torch.optim.AdamW([p for p in modules.parameters() if p.requires_grad], lr=5e-5)

        def step(student=student, losses=losses, modules=modules, optimizer=optimizer) -> None:
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=args.bf16):
                features, loss = student(x, labels)
                if losses is not None:  # what Distiller.forward adds: the sum over points of the per-point losses
                    loss = loss + losses(features, teacher_features)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
            optimizer.step()
            modules.zero_grad(set_to_none=True)

        setup = Setup()
        setup.method, setup.step = label, step
        setup.modules, setup.optimizer = modules, optimizer
        setup.trainable_params = sum(p.numel() for p in modules.parameters() if p.requires_grad)
        if losses is not None:
            setup.point_losses = dict(losses.points.items())

            def capture(student=student) -> tuple[dict, dict]:
                with torch.no_grad():
                    features, _ = student(x, labels)
                return features, teacher_features

            setup.capture = capture
        setups.append(setup)
    lines.append("teacher feature maps held: " + f"{tensor_bytes(teacher_features.values()) / MIB:.1f} MiB (in every "
                 "method's state except none)")
    setups[0].feature_bytes = tensor_bytes(teacher_features.values())
    return setups, lines


def state_bytes(setup: Setup, feature_only: bool, feature_bytes: int = 0) -> int:
    if feature_only:
        tensors = [*setup.modules.parameters(), *setup.modules.buffers(), *optimizer_tensors(setup.optimizer)]
        return tensor_bytes(tensors) + (feature_bytes if setup.method != "none" else 0)
    trainer = setup.trainer
    tensors = [*trainer.model.parameters(), *trainer.model.buffers(), *optimizer_tensors(trainer.optimizer)]
    if trainer.teacher is not None:
        tensors += [*trainer.teacher.parameters(), *trainer.teacher.buffers()]
    return tensor_bytes(tensors)


# ----------------------------------------------------------------------------------------------------- breakdown
#: ACAM-KD's pieces timed alone; the fusion and the selection units together, since the factored fusion hands the
#: masks its attention factors, not a fused map (acamkd_hf.fusion.FactoredFusion)
PARTS = ("adapter", "fusion + masks")


def breakdown_jobs(
    setups: list[Setup], meter: Meter, model_mode: bool
) -> tuple[dict[tuple, Callable[[], float]], dict]:
    """Jobs for the breakdown, keyed ("teacher",), (method, point) for a method's whole module at one point, and
    ("acamkd", point, part) for ACAM-KD's parts; each returns the ms of one forward + backward, inputs prepared
    outside the timed region. Also returns {point: (C_t, H, W)} of the teacher features."""
    import torch

    jobs: dict[tuple, Callable[[], float]] = {}
    by_method = {setup.method: setup for setup in setups}
    if model_mode:
        jobs[("teacher",)] = lambda: meter.time_ms(by_method["acamkd"].teacher_forward)

    def leaf(tensor):
        return tensor.detach().clone().requires_grad_(True)

    shapes = {}
    for method in DISTILLING:
        setup = by_method[method]
        student_features, teacher_features = setup.capture()
        for point, module in setup.point_losses.items():
            student, teacher = student_features[point], teacher_features[point]
            shapes[point] = tuple(teacher.shape[1:])

            def whole(module=module, student=student, teacher=teacher):
                source = leaf(student)
                elapsed = meter.time_ms(lambda: module(source, teacher)["loss"].backward())
                module.zero_grad(set_to_none=True)
                return elapsed

            jobs[(method, point)] = whole
            if method != "acamkd":
                continue
            with torch.no_grad():
                aligned = module.align(student, teacher.shape[-2:])
            for kind in PARTS:

                def part(kind=kind, module=module, student=student, teacher=teacher, aligned=aligned):
                    if kind == "adapter":
                        source = leaf(student)
                        forward = lambda: [module.align(source, teacher.shape[-2:])]
                    else:  # the student enters detached by default: the gradient reaches W_q,k,v and the units
                        source = leaf(aligned)
                        forward = lambda: [m for m in module.masking(module.fusion(teacher, source, factored=True)) if m is not None]
                    with torch.no_grad():
                        grads = [torch.randn_like(o) for o in forward()]

                    def run():
                        outputs = forward()
                        pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
                        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])

                    elapsed = meter.time_ms(run)
                    module.zero_grad(set_to_none=True)
                    return elapsed

                jobs[("acamkd", point, kind)] = part
    return jobs, shapes


def print_breakdown(parts: dict[tuple, float], shapes: dict, ms: dict[str, float]) -> None:
    points = list(shapes)
    overhead = ms["acamkd"] - ms["none"]

    def share(value: float) -> str:
        return f"{100 * value / overhead:5.1f}%" if overhead > 0 else ""

    print("\nBreakdown: each piece alone, forward + backward on the features of one step, median ms (the step's "
          "optimizer update and the distillation gradient's way back through the student are not in these)")
    print(f"  {'piece':<34} {'ms':>9}  {'share of (acamkd - student) step':>32}")
    if ("teacher",) in parts:
        print(f"  {'teacher forward (no_grad)':<34} {parts[('teacher',)]:>9.1f}  {share(parts[('teacher',)]):>32}")
    for method in DISTILLING:
        total = sum(parts[(method, p)] for p in points)
        print(f"  {method + ' modules, all points':<34} {total:>9.1f}  {share(total):>32}")
    totals = {kind: sum(parts[("acamkd", p, kind)] for p in points) for kind in PARTS}
    whole = sum(parts[("acamkd", p)] for p in points)
    for kind in PARTS:
        print(f"  {'  acamkd: ' + kind:<34} {totals[kind]:>9.1f}  {share(totals[kind]):>32}")
    rest = whole - sum(totals.values())
    print(f"  {'  acamkd: rest (L_c, L_s, Dice)':<34} {rest:>9.1f}  {share(rest):>32}")
    print(f"  {'step: acamkd - student':<34} {overhead:>9.1f}")
    print(f"  {'step: acamkd - mse':<34} {ms['acamkd'] - ms['mse']:>9.1f}")
    print("\nACAM-KD per point (ms; rest = whole module - adapter - fusion + masks, so it carries the noise of three "
          "medians)")
    header = (f"  {'point':<8} {'C_t':>5} {'tokens':>7} | {'mse':>7} {'mgd':>7} {'cwd':>7} | {'acamkd':>7} "
              f"{'adapter':>8} {'fusion+masks':>13} {'rest':>8}")
    print(header)
    for p in points:
        c, h, w = shapes[p]
        a = parts[("acamkd", p)]
        pieces = [parts[("acamkd", p, kind)] for kind in PARTS]
        print(f"  {p:<8} {c:>5} {h * w:>7} | {parts[('mse', p)]:>7.1f} {parts[('mgd', p)]:>7.1f} "
              f"{parts[('cwd', p)]:>7.1f} | {a:>7.1f} {pieces[0]:>8.1f} {pieces[1]:>13.1f}"
              + f" {a - sum(pieces):>8.1f}")


# ----------------------------------------------------------------------------------------------------- main
def environment_lines(device: str) -> list[str]:
    import torch
    import transformers

    lines = [
        (f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
         f"{platform.system()} {platform.machine()}")
    ]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"device cuda: {props.name}, {props.total_memory / 2**30:.1f} GiB, capability {props.major}.{props.minor}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, TF32 matmul "
            f"{torch.backends.cuda.matmul.allow_tf32}"
        )
    else:
        lines.append(
            f"device cpu: {platform.processor() or 'unknown'}, {os.cpu_count()} logical CPUs visible, "
            f"torch threads {torch.get_num_threads()}"
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--feature-only", action="store_true", help="synthetic paper-scale feature maps")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds: a smoke run, not a measurement")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; cuda 20; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per method first (default 2; cuda 5)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads on CPU (default 1: on a shared machine a second thread's "
                             "synchronisation costs whole scheduler time slices; 0 = torch's default)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-component table")
    parser.add_argument("--kv-reductions", nargs="*", default=[], metavar="R",
                        help="also ACAM-KD with --fusion_kv_reduction R for each value (e.g. 2 4 8 auto): acamkd_r<R>")
    parser.add_argument("--kv-budgets", nargs="*", type=int, default=[], metavar="N",
                        help="also ACAM-KD with --fusion_kv_reduction auto --fusion_max_kv_tokens N for each value: "
                             "acamkd_kv<N>")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast (cuda only; the losses still compute in float32, as the library does)")
    model = parser.add_argument_group("model mode")
    model.add_argument("--teacher", default=None, help="preset (default small-segformer; cuda deeplabv3-resnet101)")
    model.add_argument("--student", default=None, help="preset (default tiny-segformer; cuda deeplabv3-mobilenetv2)")
    model.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                       help="default 128 256; cuda 512 1024")
    model.add_argument("--points", nargs="+", default=None,
                       help="distillation points (default: logits stage1..4; cuda: logits, the paper's)")
    feature = parser.add_argument_group("feature-only mode")
    feature.add_argument("--feature-size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"),
                         help="finest level (default 64 128: stride 8 of a 512x1024 crop)")
    feature.add_argument("--levels", type=int, default=None,
                         help="number of levels (default 1 on CPU, to stay within minutes; cuda 4). The per-level "
                              "modules are independent, so their cost adds up over levels")
    feature.add_argument("--pyramid", action="store_true", help="halve H, W per level (FPN) instead of all at stride 8")
    feature.add_argument("--channels", type=int, default=256, help="teacher channels C_t")
    feature.add_argument("--student-channels", type=int, default=256, help="student channels C_s")
    feature.add_argument("--num-masks", type=int, default=19, help="ACAM-KD M (and the stand-in's classes)")
    args = parser.parse_args(argv)

    cuda = args.device == "cuda"
    if args.quick:
        defaults = {"repeats": 2, "warmup": 1, "batch": 1, "image_size": [32, 64], "levels": 2}
        args.feature_size = [16, 32]
        args.channels = min(args.channels, 32)
        args.student_channels = min(args.student_channels, 32)
    else:
        defaults = {"repeats": 20 if cuda else 7, "warmup": 5 if cuda else 2, "levels": 4 if cuda else 1,
                    "image_size": [512, 1024] if cuda else [128, 256]}
        if args.feature_only and not cuda:  # one ACAM-KD step at 8,192 tokens is ~7 s on one shared core
            defaults.update(repeats=5, warmup=1)
        defaults["batch"] = (8 if cuda else 1) if args.feature_only else (8 if cuda else 2)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.quick:  # the smallest pair, two points: exercises every code path in seconds
        args.teacher = args.teacher or "tiny-segformer"
        args.points = args.points or ["logits", "stage1"]
    args.teacher = args.teacher or ("deeplabv3-resnet101" if cuda else "small-segformer")
    args.student = args.student or ("deeplabv3-mobilenetv2" if cuda else "tiny-segformer")
    if args.points is None:
        args.points = ["logits"] if cuda else ["logits", "stage1", "stage2", "stage3", "stage4"]
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda needs a CUDA GPU, but torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}). Run without --device cuda for the CPU measurement."
        )
    if args.bf16 and args.device != "cuda":
        raise SystemExit("--bf16 is for --device cuda (CPU autocast timings would say little about training)")
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = args.device
    meter = Meter(device)
    started = time.perf_counter()

    build = build_feature_setups if args.feature_only else build_model_setups
    setups, setting_lines = build(args, device)
    feature_bytes = getattr(setups[0], "feature_bytes", 0)
    print("Training-step overhead of distillation, one step = forward + backward + clip + AdamW step")
    for line in environment_lines(device) + setting_lines:
        print("  " + line)
    print(f"  {args.warmup} warm-up step(s) per method, then {args.repeats} interleaved rounds (order rotated); "
          f"time = median; peak = max allocated above the step's start "
          f"({'cuda allocator' if device == 'cuda' else 'CPU allocator events, torch.profiler'})")
    print(flush=True)

    for _ in range(args.warmup):
        for setup in setups:
            setup.step()
    meter.sync()
    peaks = {setup.method: meter.peak_bytes(setup.step) for setup in setups}
    states = {setup.method: state_bytes(setup, args.feature_only, feature_bytes) for setup in setups}
    times = interleaved({setup.method: (lambda setup=setup: meter.time_ms(setup.step)) for setup in setups},
                        args.repeats)
    ms = {method: median(values) for method, values in times.items()}

    header = (f"{'method':<12} | {'step ms':>9} {'min-max':>11} | {'x student':>9} {'x mse':>6} | {'peak MiB':>9} "
              f"{'x student':>9} {'x mse':>6} | {'state MiB':>9} | {'trainable':>11}")
    print(header)
    print("-" * len(header))
    for setup in setups:
        m = setup.method
        print(
            f"{m if m != 'none' else 'student':<12} | {ms[m]:>9.1f} {spread(times[m]):>11} | {ms[m] / ms['none']:>9.2f} "
            f"{ms[m] / ms['mse']:>6.2f} | {peaks[m] / MIB:>9.1f} {peaks[m] / peaks['none']:>9.2f} "
            f"{peaks[m] / peaks['mse']:>6.2f} | {states[m] / MIB:>9.1f} | {setup.trainable_params:>11,}"
        )
    print("(student = method none: the student alone, no teacher forward; state = parameters, buffers and optimizer "
          "state of Distiller + teacher" + (", + the fixed teacher maps)" if args.feature_only else ")"), flush=True)

    if not args.no_breakdown:
        jobs, shapes = breakdown_jobs(setups, meter, model_mode=not args.feature_only)
        for _ in range(max(1, args.warmup // 2)):
            for job in jobs.values():
                job()
        parts = {key: median(values) for key, values in interleaved(jobs, args.repeats).items()}
        print_breakdown(parts, shapes, ms)

    print(f"\nwall time of the benchmark: {time.perf_counter() - started:.0f} s")
    result = {}
    for m in DISTILLING:
        if m != "mse":
            result[f"{m}_over_mse"] = ms[m] / ms["mse"]
    for m in DISTILLING:
        result[f"{m}_over_student"] = ms[m] / ms["none"]
    order = ["acamkd_over_mse", "acamkd_over_student", "mse_over_student", "mgd_over_student", "cwd_over_student",
             "pkd_over_student", "mgd_over_mse", "cwd_over_mse", "pkd_over_mse"]
    result = {key: result[key] for key in order}
    reduced = [setup.method for setup in setups if setup.method.startswith(("acamkd_r", "acamkd_kv"))]
    for m in reduced:
        result[f"{m}_over_mse"] = ms[m] / ms["mse"]
    for m in ("acamkd", "mse", "mgd", "cwd", "pkd"):
        result[f"peak_{m}_over_student"] = peaks[m] / peaks["none"]
    for m in ("acamkd", *reduced):
        result[f"peak_{m}_over_mse"] = peaks[m] / peaks["mse"]
    for m in (*METHODS, *reduced):
        result[f"{'student' if m == 'none' else m}_ms"] = ms[m]
    result["acamkd_peak_mib"] = peaks["acamkd"] / MIB
    result["student_peak_mib"] = peaks["none"] / MIB
    print("RESULT " + " ".join(
        f"{key}={value:.1f}" if key.endswith(("_ms", "_mib")) else f"{key}={value:.3f}" for key, value in result.items()
    ), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
