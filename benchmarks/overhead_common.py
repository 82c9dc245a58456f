"""What the two training-step overhead benchmarks share: the methods compared, one run of the measurement, its
tables, the per-piece breakdown and the RESULT line.

    benchmarks/step_overhead.py      the library's DistillationTrainer step on real (random-init) HF models
    benchmarks/feature_overhead.py   the distillation modules alone at paper-scale feature maps, stand-in student

Each script builds one ``Setup`` per compared setup (the methods ``none`` = the student alone, ``mse``, ``mgd``,
``cwd``, ``pkd``, ``acamkd``, plus ACAM-KD once per ``--kv-reductions`` / ``--kv-budgets`` value) and hands them to
``run``. Measurement (with ``timing``): warm-up steps first (every method, so that kernels are loaded and optimizer
states exist), then --repeats rounds; in each round every method runs one timed step, in an order rotated by one each
round (interleaved: a load spike on the shared machine hits all methods alike). Reported time = median over rounds.
CPU runs use one intra-op thread by default (--threads). CUDA: CUDA events around the step, synchronised. Memory =
the peak of allocated tensor bytes during one separate step above what was allocated when the step began
(activations, gradients, temporaries; the same quantity on both devices: ``timing.peak_bytes``). "State" is what
lives between steps: parameters + buffers of the student, the distillation modules and the teacher, plus the
optimizer's state. After the main table, a breakdown runs the same way (interleaved, median): the teacher forward
alone (model mode), every method's distillation modules alone (forward + backward on the points' features captured
from one step), and ACAM-KD's parts (adapter, STCA-FF fusion attention with the ASCM selection units; the rest = the
masked losses, Dice and glue, as full module minus the parts).

The last line is machine-readable: time ratios (``<method>_over_student``, ``<method>_over_mse``), step-peak memory
ratios (``peak_<method>_over_...``) and the medians in ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import timing
from timing import MIB

METHODS = ("none", "mse", "mgd", "cwd", "pkd", "acamkd")
DISTILLING = METHODS[1:]
#: ACAM-KD's pieces timed alone; the fusion and the selection units together, since the factored fusion hands the
#: masks its attention factors, not a fused map (acamkd_hf.fusion.FactoredFusion)
PARTS = ("adapter", "fusion + masks")


def variants(args) -> list[tuple[str, str, dict]]:
    """``(label, method, settings)`` of every setup: each method with its defaults, then ACAM-KD once per
    ``--kv-reductions`` value (``acamkd_r<R>``: STCA-FF's keys/values average-pooled R per side) and once per
    ``--kv-budgets`` value (``acamkd_kv<N>``: ``auto`` with at most N key/value tokens per point) and once per
    ``--mask-objectives`` value (``acamkd_<objective>``: what trains the masks)."""
    rows = [(method, method, {}) for method in METHODS]
    rows += [(f"acamkd_{o}", "acamkd", {"mask_objective": o}) for o in getattr(args, "mask_objectives", [])]
    rows += [(f"acamkd_r{r}", "acamkd", {"fusion_kv_reduction": r}) for r in args.kv_reductions]
    rows += [(f"acamkd_kv{n}", "acamkd", {"fusion_kv_reduction": "auto", "fusion_max_kv_tokens": n}) for n in args.kv_budgets]
    return rows


class Setup:
    """One method's training step and what the measurements need of it (attributes set by the builders)."""

    method: str
    step: Callable[[], None]  # one training step
    trainable_params: int
    state_bytes: Callable[[], int]  # bytes that live between steps (read after the warm-up: optimizer state exists)
    # for the breakdown (distilling methods): {point: per-point loss module}, the features of one step, teacher alone
    point_losses: dict | None = None
    capture: Callable[[], tuple[dict, dict]] | None = None
    teacher_forward: Callable[[], object] | None = None


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


# ----------------------------------------------------------------------------------------------------- arguments
def add_common_arguments(parser: argparse.ArgumentParser, repeats_help: str, warmup_help: str) -> None:
    """The flags both scripts take (device, rounds, threads, breakdown, the ACAM-KD key/value variants, bf16)."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds: a smoke run, not a measurement")
    parser.add_argument("--repeats", type=int, default=None, help=repeats_help)
    parser.add_argument("--warmup", type=int, default=None, help=warmup_help)
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
    parser.add_argument("--mask-objectives", nargs="*", default=[], metavar="OBJECTIVE",
                        help="also ACAM-KD with --mask_objective OBJECTIVE for each value (e.g. imitation uniform): "
                             "acamkd_<objective>")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast (cuda only; the losses still compute in float32, as the library does)")


def fill_defaults(args: argparse.Namespace, defaults: dict) -> argparse.Namespace:
    """Sets every argument still None to its entry in ``defaults``."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def prepare_device(args: argparse.Namespace) -> None:
    """Refuses a device or precision the run cannot use, then pins the CPU threads (``timing.pin_threads``)."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda needs a CUDA GPU, but torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}). Run without --device cuda for the CPU measurement."
        )
    if args.bf16 and args.device != "cuda":
        raise SystemExit("--bf16 is for --device cuda (CPU autocast timings would say little about training)")
    timing.pin_threads(args.threads, args.device)


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


# ----------------------------------------------------------------------------------------------------- the run
def run(args, setups: list[Setup], setting_lines: list[str], started: float, state_note: str) -> dict[str, float]:
    """Measures the setups (warm-up, one step-peak step each, then interleaved timed rounds), prints the table, the
    breakdown unless --no-breakdown, and the RESULT line; returns the RESULT values. ``started`` =
    ``time.perf_counter()`` at the script's start; ``state_note`` ends the table's footnote on "state"."""
    device = args.device
    print("Training-step overhead of distillation, one step = forward + backward + clip + AdamW step")
    for line in environment_lines(device) + setting_lines:
        print("  " + line)
    print(f"  {args.warmup} warm-up step(s) per method, then {args.repeats} interleaved rounds (order rotated); "
          f"time = median; peak = max allocated above the step's start "
          f"({'cuda allocator' if device == 'cuda' else 'CPU allocator events, torch.profiler'})")
    print(flush=True)

    timing.warm_up([setup.step for setup in setups], args.warmup)
    timing.cuda_sync(device)
    peaks = {setup.method: timing.peak_bytes(setup.step, device) for setup in setups}
    states = {setup.method: setup.state_bytes() for setup in setups}
    jobs = {setup.method: (lambda setup=setup: timing.time_ms(setup.step, device)) for setup in setups}
    times = timing.interleaved(jobs, args.repeats)
    ms = timing.medians(times)
    print_table(setups, ms, times, peaks, states, state_note)

    if not args.no_breakdown:
        parts_jobs, shapes = breakdown_jobs(setups, device)
        timing.warm_up(parts_jobs.values(), max(1, args.warmup // 2))
        parts = timing.medians(timing.interleaved(parts_jobs, args.repeats))
        print_breakdown(parts, shapes, ms)

    print(f"\nwall time of the benchmark: {time.perf_counter() - started:.0f} s")
    result = result_values([setup.method for setup in setups], ms, peaks)
    timing.print_result(result, lambda key: 1 if key.endswith(("_ms", "_mib")) else 3)
    return result


def print_table(setups, ms, times, peaks, states, state_note: str) -> None:
    header = (f"{'method':<12} | {'step ms':>9} {'min-max':>11} | {'x student':>9} {'x mse':>6} | {'peak MiB':>9} "
              f"{'x student':>9} {'x mse':>6} | {'state MiB':>9} | {'trainable':>11}")
    print(header)
    print("-" * len(header))
    for setup in setups:
        m = setup.method
        print(
            f"{m if m != 'none' else 'student':<12} | {ms[m]:>9.1f} {timing.spread(times[m]):>11} | "
            f"{ms[m] / ms['none']:>9.2f} "
            f"{ms[m] / ms['mse']:>6.2f} | {peaks[m] / MIB:>9.1f} {peaks[m] / peaks['none']:>9.2f} "
            f"{peaks[m] / peaks['mse']:>6.2f} | {states[m] / MIB:>9.1f} | {setup.trainable_params:>11,}"
        )
    print("(student = method none: the student alone, no teacher forward; state = parameters, buffers and optimizer "
          "state of Distiller + teacher" + state_note + ")", flush=True)


def result_values(labels: list[str], ms: dict[str, float], peaks: dict[str, int]) -> dict[str, float]:
    """The RESULT line's values, in its order: time ratios to mse and to the student, the reduced ACAM-KD variants'
    ratios to mse, peak ratios, the median ms of every setup, ACAM-KD's and the student's step peak in MiB."""
    result = {}
    for m in DISTILLING:
        if m != "mse":
            result[f"{m}_over_mse"] = ms[m] / ms["mse"]
    for m in DISTILLING:
        result[f"{m}_over_student"] = ms[m] / ms["none"]
    order = ["acamkd_over_mse", "acamkd_over_student", "mse_over_student", "mgd_over_student", "cwd_over_student",
             "pkd_over_student", "mgd_over_mse", "cwd_over_mse", "pkd_over_mse"]
    result = {key: result[key] for key in order}
    reduced = [label for label in labels if label.startswith("acamkd_")]
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
    return result


# ----------------------------------------------------------------------------------------------------- breakdown
def breakdown_jobs(setups: list[Setup], device: str) -> tuple[dict[tuple, Callable[[], float]], dict]:
    """Jobs for the breakdown, keyed ("teacher",) (when the setups have a teacher forward), (method, point) for a
    method's whole module at one point, and ("acamkd", point, part) for ACAM-KD's parts; each returns the ms of one
    forward + backward (``timing.time_ms``), inputs prepared outside the timed region. Also returns
    {point: (C_t, H, W)} of the teacher features."""
    import torch

    jobs: dict[tuple, Callable[[], float]] = {}
    by_method = {setup.method: setup for setup in setups}
    teacher_forward = by_method["acamkd"].teacher_forward
    if teacher_forward is not None:
        jobs[("teacher",)] = lambda: timing.time_ms(teacher_forward, device)
    shapes = {}
    for method in DISTILLING:
        student_features, teacher_features = by_method[method].capture()
        for point, module in by_method[method].point_losses.items():
            student, teacher = student_features[point], teacher_features[point]
            shapes[point] = tuple(teacher.shape[1:])
            jobs[(method, point)] = _whole_module_job(module, student, teacher, device)
            if method != "acamkd":
                continue
            with torch.no_grad():
                aligned = module.align(student, teacher.shape[-2:])
            for kind in PARTS:
                jobs[("acamkd", point, kind)] = _acamkd_part_job(kind, module, student, teacher, aligned, device)
    return jobs, shapes


def _leaf(tensor):
    return tensor.detach().clone().requires_grad_(True)


def _whole_module_job(module, student, teacher, device: str) -> Callable[[], float]:
    """ms of one forward + backward of a point's whole distillation module (a fresh leaf student each call)."""

    def whole():
        source = _leaf(student)
        elapsed = timing.time_ms(lambda: module(source, teacher)["loss"].backward(), device)
        module.zero_grad(set_to_none=True)
        return elapsed

    return whole


def _acamkd_part_job(kind: str, module, student, teacher, aligned, device: str) -> Callable[[], float]:
    """ms of one forward + backward of one ACAM-KD part (``PARTS``; ``aligned`` = the adapter's output of the
    student), backward from random output gradients drawn outside the timed region."""
    import torch

    def part():
        if kind == "adapter":
            source = _leaf(student)
            def forward():
                return [module.align(source, teacher.shape[-2:])]
        else:  # the student enters detached by default: the gradient reaches W_q,k,v and the units
            source = _leaf(aligned)
            def forward():
                return [m for m in module.masking(module.fusion(teacher, source, factored=True)) if m is not None]
        with torch.no_grad():
            grads = [torch.randn_like(o) for o in forward()]

        def run():
            outputs = forward()
            pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])

        elapsed = timing.time_ms(run, device)
        module.zero_grad(set_to_none=True)
        return elapsed

    return part


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
