"""The timing harness the benchmark scripts share: thread pinning, warm-up, timed calls, interleaved rounds with
their medians, step-peak memory, and the machine-readable ``RESULT`` line.

The scripts import it as a sibling (``import timing``): run as ``python benchmarks/<name>.py``, Python puts
``benchmarks/`` first on ``sys.path``; loaded from a file path (the smoke tests), each script adds its own folder
first (see ``step_overhead.py``). Plain functions, no state; torch is imported inside them, so that a script's
``--help`` and argument parsing stay fast.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Mapping

MIB = 2**20


# ----------------------------------------------------------------------------------------------------- threads
def pin_threads(threads: int, device: str = "cpu") -> None:
    """``torch.set_num_threads(threads)`` on CPU; nothing when ``threads`` is 0 (torch's default kept) or the device
    is CUDA. On the shared 2-core development machine a second OpenMP thread made the same step 5-40x slower and
    erratic whenever another job held a core, hence one thread by default in the scripts."""
    if threads and device == "cpu":
        import torch

        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------- time
def cuda_sync(device: str) -> None:
    """Waits for the queued CUDA work (nothing on CPU): a wall-clock or memory reading then covers all of it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def wall_ms(fn: Callable[[], object], device: str = "cpu") -> float:
    """Milliseconds of one ``fn()`` by ``time.perf_counter``; on CUDA the device is synchronised before the start and
    before the end reading, so that the queued kernels are inside the interval."""
    cuda_sync(device)
    start = time.perf_counter()
    fn()
    cuda_sync(device)
    return (time.perf_counter() - start) * 1000


def event_ms(fn: Callable[[], object]) -> float:
    """Milliseconds of one ``fn()`` on CUDA, between two CUDA events recorded around it (synchronised before the
    start and after the end): the GPU's time, without the host's launch jitter at the edges."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def time_ms(fn: Callable[[], object], device: str) -> float:
    """One timed call: CUDA events on CUDA (``event_ms``), ``time.perf_counter`` on CPU (``wall_ms``)."""
    return event_ms(fn) if device == "cuda" else wall_ms(fn)


def warm_up(fns: Iterable[Callable[[], object]], rounds: int) -> None:
    """Untimed calls first: ``rounds`` passes over the callables, each called once per pass, in their order (kernels
    loaded, caches and optimizer states created before anything is timed)."""
    calls = list(fns)
    for _ in range(rounds):
        for fn in calls:
            fn()


def interleaved(
    jobs: Mapping[Hashable, Callable[[], float]], repeats: int, rotate: bool = True
) -> dict[Hashable, list[float]]:
    """Side by side in one run: ``repeats`` rounds, each calling every job once; a job returns its own measurement
    (e.g. the ms of one timed call). With ``rotate`` the order moves by one each round (A B C, B C A, C A B, ...; for
    two jobs it alternates), without it every round keeps the given order. A load spike on a shared machine then
    hits every job alike instead of one of them. Returns ``{name: [one value per round]}``."""
    names = list(jobs)
    values: dict[Hashable, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            values[name].append(jobs[name]())
    return values


def median(values: list[float]) -> float:
    """The reported statistic of repeated measurements: the median (``statistics.median``: for an even count, the
    mean of the two middle values), robust to the odd slow round on a shared machine."""
    return statistics.median(values)


def medians(values: Mapping[Hashable, list[float]]) -> dict[Hashable, float]:
    """``{name: median of its values}`` of an ``interleaved`` result."""
    return {name: median(v) for name, v in values.items()}


def spread(values: list[float]) -> str:
    """``min-max`` of the rounds, to 0 decimals, as the tables print it next to the median."""
    return f"{min(values):.0f}-{max(values):.0f}"


# ----------------------------------------------------------------------------------------------------- memory
def cuda_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of allocated CUDA tensor bytes during one ``fn()`` above what was allocated when it began:
    ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus ``memory_allocated()`` at the
    start (synchronised on both sides)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def profiler_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of allocated CPU tensor bytes during one ``fn()`` above the level when it began, where PyTorch keeps no
    allocator peak counter (and RSS mostly measures glibc's caching): ``fn()`` runs under ``torch.profiler`` with
    ``profile_memory=True``; the running sum of the CPU allocator's allocation (+) and free (-) events, in time
    order, has this maximum."""
    import torch
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


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    """Step-peak memory of one ``fn()``, the same quantity on both devices: ``cuda_peak_bytes`` on CUDA,
    ``profiler_peak_bytes`` on CPU."""
    return cuda_peak_bytes(fn) if device == "cuda" else profiler_peak_bytes(fn)


# ----------------------------------------------------------------------------------------------------- RESULT
def result_line(result: Mapping[str, float], decimals: Callable[[str], int | None]) -> str:
    """The machine-readable last line: ``RESULT key=value key=value ...`` in the dict's order; ``decimals(key)``
    gives the fixed-point digits of a value, or None to print it as it is (integers)."""

    def text(key: str, value: float) -> str:
        digits = decimals(key)
        return f"{value}" if digits is None else f"{value:.{digits}f}"

    return "RESULT " + " ".join(f"{key}={text(key, value)}" for key, value in result.items())


def print_result(result: Mapping[str, float], decimals: Callable[[str], int | None]) -> None:
    """Prints ``result_line`` and flushes (the line a caller parses must not sit in a buffer)."""
    print(result_line(result, decimals), flush=True)
