"""The runs of a comparison: each one ``acamkd-distill`` in a subprocess, reused when finished, several at a time.

A :class:`Run` is a row at one seed: the ``acamkd-distill`` flags that make it and its folder. :func:`execute` trains
the runs not finished yet, ``jobs`` at a time (:class:`Launcher`: one GPU per run where there are GPUs, else the CPU
cores split between the runs), and returns what each measured (:func:`read_run`), or why it failed. While runs go,
SIGINT and SIGTERM are forwarded to them (each checkpoints at its next step boundary and ends, as ``acamkd-distill``
does on its own, :mod:`acamkd_hf.interrupts`), no other run starts, and :class:`RunsInterrupted` is raised once they
have ended.

The reuse rule. A run is finished when its folder holds ``metrics.json`` (written last by ``acamkd-distill``) and
the comparison's record of it (``comparison_run.json``: its flags and wall time). A finished run is reused only when
it was made by the same flags *and* trained with what today's code makes of them (:func:`stale_settings`: the rule
by which ``acamkd-distill`` resumes a checkpoint, :mod:`acamkd_hf.resume`); otherwise it is refused
(:class:`StaleRunError`) or, when asked, deleted and trained again. The distillation settings compared are those the
run's method reads (:func:`~acamkd_hf.distiller.recorded_settings`). An unfinished folder is trained again (its
checkpoints, if any, are resumed by ``acamkd-distill``'s own rule, its log continued).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

from .arguments import parse_arguments
from .distiller import recorded_settings
from .interrupts import EXIT_STATUS
from .resume import changed_training_settings
from .settings import DistillationSettings

#: the program of every run: ``acamkd-distill``
CLI = [sys.executable, "-m", "acamkd_hf.cli"]
#: the comparison's record of a finished run, in its folder: ``{"wall_s", "argv"}`` (and ``"budget"``, a row's)
RUN_RECORD = "comparison_run.json"
#: distillation settings that ``acamkd-distill`` resolves from the models when no flag sets them (not code defaults)
MODEL_RESOLVED_SETTINGS = ("distillation_points", "num_masks")
#: HfArgumentParser resolves the dataclasses' field types in place: not thread-safe
PARSER_LOCK = threading.Lock()


@dataclass
class Run:
    """One training run: ``row`` at ``seed`` (``None``: not a seeded row, e.g. the teacher), made by ``acamkd-distill
    <argv>`` into ``output_dir``; ``budget``: the fraction of the recipe it trains (``None``: not a budgeted run)."""

    row: str
    seed: int | None
    argv: list[str]
    output_dir: Path
    budget: float | None = None

    @property
    def label(self) -> str:
        return self.row if self.seed is None else f"{self.row} seed {self.seed}"

    @property
    def log_path(self) -> Path:
        return Path(f"{self.output_dir}.log")


class StaleRunError(ValueError):
    """A run folder holds a finished run made with other settings than the comparison's."""


class RunFailedError(RuntimeError):
    """``acamkd-distill`` ended with an error in one or more runs."""


class RunsInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (``number``) stopped the runs: those going were forwarded it and have ended."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


class _Stopped(Exception):
    """A run stopped by a forwarded signal, or not started after one."""


def finished(run: Run, record_name: str = RUN_RECORD) -> bool:
    return (run.output_dir / "metrics.json").is_file() and (run.output_dir / record_name).is_file()


def stale_settings(run: Run, record_name: str = RUN_RECORD) -> dict[str, tuple[Any, Any]]:
    """``{setting: (recorded, today)}`` on which the finished run in ``run.output_dir`` differs from what ``run.argv``
    makes today: its flags, then the training settings ``acamkd-distill`` resumes only when equal
    (:func:`~acamkd_hf.resume.changed_training_settings`) and every distillation setting it trained with (defaults
    filled in; the points and ``M`` only where a flag sets them, else they come from the models; only those the
    recorded or today's method reads). A changed budget is named as such, next to the flags it changed."""
    record = json.loads((run.output_dir / record_name).read_text())
    recorded_argv = record.get("argv") or []
    if recorded_argv != run.argv:
        budget = {"budget": (record["budget"], run.budget)} if record.get("budget", run.budget) != run.budget else {}
        return {**budget, "flags": changed_flags(recorded_argv, run.argv)}
    run_config = json.loads((run.output_dir / "run_config.json").read_text())
    with PARSER_LOCK:
        args = parse_arguments(run.argv)[2]
    today = args.distillation_settings()
    recorded = DistillationSettings.from_record(run_config["distillation"])
    read = set(recorded_settings(recorded)) | set(recorded_settings(today))  # what either method reads
    from_models = {key for key in MODEL_RESOLVED_SETTINGS if getattr(today, key) is None}
    differences = {key: values for key, values in recorded.differences(today).items()
                   if key in read and key not in from_models}
    return {**changed_training_settings(run_config["training"], args), **differences}


def changed_flags(old: list[str], new: list[str]) -> tuple[str, str]:
    """The parts of two command lines that differ, each with its flag: ``("--learning_rate 0.003", "--learning_rate
    0.001")``; several parts joined by ``; ``, a part only one side has shown as ``(none)``."""
    before, after = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        first = (old[i1:i2] or new[j1:j2])[0]
        if i1 > 0 and not first.startswith("--"):  # a value changed: name its flag
            i1, j1 = i1 - 1, j1 - 1
        before.append(" ".join(old[i1:i2]) or "(none)")
        after.append(" ".join(new[j1:j2]) or "(none)")
    return "; ".join(before), "; ".join(after)


def check_reuse(runs: list[Run], replace_stale: bool, record_name: str = RUN_RECORD, *,
                remedy: str = "pass another --output_dir, or --replace_stale_runs to train them again") -> None:
    """Every finished run must be reusable (:func:`stale_settings`). Those that are not: deleted with
    ``replace_stale``, else one :class:`StaleRunError` naming them, what changed and ``remedy``."""
    stale = [(run, changed) for run in runs
             if finished(run, record_name) and (changed := stale_settings(run, record_name))]
    if not stale:
        return
    if replace_stale:
        for run, _ in stale:
            shutil.rmtree(run.output_dir)
        return
    listed = "; ".join(
        f"{run.output_dir}: " + ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        for run, changed in stale[:3]
    )
    more = f" (and {len(stale) - 3} more)" if len(stale) > 3 else ""
    raise StaleRunError(f"{len(stale)} finished run(s) were made with other settings than this command's: {listed}"
                        f"{more}. They are not reused: {remedy}.")


def visible_gpus() -> list[str]:
    """The GPUs a run can be given (``CUDA_VISIBLE_DEVICES`` as set, else every CUDA device); none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [device.strip() for device in visible.split(",") if device.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_set_by_user() -> int | None:
    """``OMP_NUM_THREADS`` when the user set it to a thread count, else None."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


@dataclass
class Launcher:
    """How runs go out: ``jobs`` at a time, each a subprocess. With ``gpus``, each run sees one of them
    (``CUDA_VISIBLE_DEVICES``; more jobs than GPUs share them in turn); each run gets ``threads`` CPU threads
    (default: the user's ``OMP_NUM_THREADS`` when set, else the cores split between the jobs). ``say`` prints a line
    of progress. :meth:`forward` passes a signal on to the runs going and starts no other."""

    jobs: int = 1
    gpus: list[str] = field(default_factory=list)
    threads: int | None = None
    say: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.jobs = max(1, self.jobs)
        self.threads = self.threads or threads_set_by_user() or max(1, available_cores() // self.jobs)
        self.received: int | None = None  # the first signal forwarded: no run starts after it
        self._running: list[subprocess.Popen] = []
        self._lock = threading.RLock()  # re-entrant: a second signal may land while the first is forwarded
        self._free: Queue[str] = Queue()
        for index in range(self.jobs):
            if self.gpus:
                self._free.put(self.gpus[index % len(self.gpus)])

    def environment(self, gpu: str | None) -> dict[str, str]:
        """A run's environment: its threads, its GPU, and output written as it comes (a log shows the progress)."""
        threads = str(self.threads)
        environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        if gpu is not None:
            environment["CUDA_VISIBLE_DEVICES"] = gpu
        return environment

    def forward(self, number: int) -> None:
        """Sends signal ``number`` to every run going (``acamkd-distill`` checkpoints at its next step boundary and
        ends; a second signal ends it at once); no run starts after the first."""
        with self._lock:
            first = self.received is None
            self.received = self.received or number
            running = list(self._running)
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(number)
        if first and running:
            self.say(f"{signal.Signals(number).name}: stopping the {len(running)} run(s) going at their next step "
                     "boundary, with a checkpoint (a second signal stops them at once)")

    def train(self, run: Run) -> float:
        """Trains ``run`` (``acamkd-distill <argv>``, its output in ``<output_dir>.log``); its wall time in seconds.
        An unfinished folder with checkpoints is resumed by the CLI (by its own resume rule), its log continued; any
        other is cleared first (also one whose run ended without the comparison's record of it: its wall time is
        unknown). The run is a session of its own: a terminal's Ctrl-C reaches it only through :meth:`forward`."""
        if self.received is not None:
            raise _Stopped(run.label)
        resumable = any(run.output_dir.glob("checkpoint-*")) and not (run.output_dir / "metrics.json").is_file()
        if run.output_dir.exists() and not resumable:
            shutil.rmtree(run.output_dir)
        run.output_dir.parent.mkdir(parents=True, exist_ok=True)
        gpu = self._free.get() if self.gpus else None
        try:
            with open(run.log_path, "a" if resumable else "w") as log:
                with self._lock:  # a signal forwarded now waits for this run to be among those it reaches
                    if self.received is not None:
                        raise _Stopped(run.label)
                    where = f" on GPU {gpu}" if gpu is not None else ""
                    self.say(f"{'continuing' if resumable else 'running'} {run.label}{where}: acamkd-distill "
                             f"{' '.join(run.argv)}")
                    if resumable:
                        log.write(f"\n----- {time.strftime('%Y-%m-%d %H:%M:%S')}: continued by a rerun of "
                                  "acamkd-compare (from the run's last checkpoint) -----\n")
                        log.flush()
                    start = time.perf_counter()
                    process = subprocess.Popen([*CLI, *run.argv], env=self.environment(gpu), stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True)
                    self._running.append(process)
                try:
                    returncode = process.wait()
                finally:
                    with self._lock:
                        self._running.remove(process)
        finally:
            if gpu is not None:
                self._free.put(gpu)
        if returncode != 0:
            if self.received is not None:
                raise _Stopped(run.label)  # interrupted (its checkpoint continues it), not failed
            raise RunFailedError(f"{run.label} failed (exit {returncode}): {last_line(run.log_path)} "
                                 f"(log: {run.log_path})")
        return time.perf_counter() - start


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    return lines[-1].strip() if lines else "no output"


@contextlib.contextmanager
def signals_forwarded(launcher: Launcher) -> Iterator[None]:
    """Within it (in the main thread), SIGINT and SIGTERM are forwarded to the runs (:meth:`Launcher.forward`)
    instead of acting here."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, lambda number, frame: launcher.forward(number)) for number in EXIT_STATUS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def execute(runs: list[Run], launcher: Launcher, metric_keys: list[str], record_name: str = RUN_RECORD) -> list[dict]:
    """The record of every run, in the order of ``runs``: finished ones read back, the others trained,
    ``launcher.jobs`` at a time; a run's record is :func:`read_run`'s plus ``row``, ``output_dir``, ``wall_s``,
    ``argv`` and ``seed``, or, when it failed, :func:`failure`'s. A failed run does not stop the others. SIGINT or
    SIGTERM meanwhile: forwarded to the runs going, none started after it, :class:`RunsInterrupted` once they have
    ended. Check the finished ones first (:func:`check_reuse`)."""

    def one(run: Run) -> dict[str, Any]:
        record_path = run.output_dir / record_name
        if finished(run, record_name):
            wall = json.loads(record_path.read_text()).get("wall_s")
            verb = "reused"
        else:
            try:
                wall = launcher.train(run)
            except RunFailedError as error:
                launcher.say(str(error))
                return failure(run, str(error))
            budget = {} if run.budget is None else {"budget": run.budget}
            record_path.write_text(json.dumps({"wall_s": wall, "argv": run.argv, **budget}))
            verb = "trained"
        record = read_run(run.output_dir, metric_keys)
        headline = metric_keys[0]
        launcher.say(f"{run.label} ({verb}): {headline} {record[headline]:.4f}, wall {wall:.0f} s")
        record.update(row=run.row, output_dir=str(run.output_dir), wall_s=wall, argv=run.argv)
        if run.seed is not None:
            record["seed"] = run.seed
        return record

    pool = ThreadPoolExecutor(max_workers=launcher.jobs)
    records = []
    with signals_forwarded(launcher):
        try:
            futures = [pool.submit(one, run) for run in runs]
            for future in futures:
                with contextlib.suppress(_Stopped):
                    records.append(future.result())
        finally:  # interrupted: the runs not started yet never start
            pool.shutdown(wait=True, cancel_futures=True)
    if launcher.received is not None:
        raise RunsInterrupted(launcher.received)
    return records


def failure(run: Run, reason: str) -> dict[str, Any]:
    """The record of a run that failed: ``failed`` (``<label> failed (exit N): <its log's last line> (log: ...)``),
    its ``label`` and ``log``, with ``row``, ``seed``, ``output_dir`` and ``argv``."""
    return {"row": run.row, "seed": run.seed, "output_dir": str(run.output_dir), "argv": run.argv, "failed": reason,
            "label": run.label, "log": str(run.log_path)}


def failures(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the runs that failed."""
    return [record for record in records if "failed" in record]


def failure_summary(records: list[dict[str, Any]], total: int) -> str:
    """``"2 of 6 run(s) failed: <reason>; <reason>"``, for the records that failed."""
    failed = failures(records)
    return f"{len(failed)} of {total} run(s) failed: " + "; ".join(record["failed"] for record in failed)


def read_run(output_dir: Path, metric_keys: list[str]) -> dict[str, Any]:
    """What a finished run's folder says: method, distillation settings, budget, the logged loss terms (first, last,
    every training log) and ``metric_keys`` of the student (``teacher_`` / ``untrained_`` + the first one: the
    teacher's and the untrained student's where the run evaluated them)."""
    metrics = json.loads((output_dir / "metrics.json").read_text())
    run_config = json.loads((output_dir / "run_config.json").read_text())
    student = metrics["student"]
    state_path = output_dir / "trainer_state.json"
    history = json.loads(state_path.read_text())["log_history"] if state_path.is_file() else []
    train_logs = [entry for entry in history if "loss" in entry and "eval_loss" not in entry]

    def terms(entry: dict[str, Any] | None) -> dict[str, float]:
        if not entry:
            return {}
        kept = {key: value for key, value in entry.items()
                if key in ("step", "loss", "task_loss", "distillation_loss") or key.startswith("distill/")}
        if student.get("method") == "none" and "task_loss" not in kept and "loss" in kept:
            kept["task_loss"] = kept["loss"]  # no distillation: the logged loss is the task loss
        return kept

    training = run_config["training"]
    record = {
        "method": student.get("method"),
        "distillation": run_config.get("distillation"),
        "budget": {
            "epochs": training.get("num_train_epochs"),
            "train_images": run_config["data"].get("max_train_samples"),
            "batch_size": training.get("per_device_train_batch_size"),
            "learning_rate": training.get("learning_rate"),
            "global_step": student.get("global_step"),
        },
        "train_runtime_s": student.get("train_runtime"),
        "first_log": terms(train_logs[0] if train_logs else None),
        "last_log": terms(train_logs[-1] if train_logs else None),
        "log_history": [terms(entry) for entry in train_logs],
    }
    for key in metric_keys:
        record[key] = student.get(key)
    if "teacher" in metrics:
        record["teacher_" + metric_keys[0]] = metrics["teacher"].get(metric_keys[0])
    if "student_untrained" in metrics:
        record["untrained_" + metric_keys[0]] = metrics["student_untrained"].get(metric_keys[0])
    return record


def imitation_ratio(record: dict[str, Any], entry: dict[str, Any]) -> float | None:
    """Weighted imitation loss / task loss in one logged entry (ACAM-KD: alpha (L_c + L_s), the Dice term left out;
    the baselines: their distillation loss); ``None`` without distillation."""
    task, distill = entry.get("task_loss"), entry.get("distillation_loss")
    imitation = [v for k, v in entry.items() if k.endswith(("/channel", "/spatial"))]
    if imitation:
        alpha = (record.get("distillation") or {}).get("alpha")
        distill = (1.0 if alpha is None else alpha) * sum(imitation)
    return distill / task if task and distill is not None else None


def log_snapshots(history: list[dict[str, Any]], fractions=(0.0, 0.1, 0.25, 0.5, 1.0)) -> list[dict[str, Any]]:
    """The training logs at these fractions of training (what the JSON reports keep of a run's log history)."""
    return [history[round(f * (len(history) - 1))] for f in fractions] if history else []


__all__ = ["CLI", "Launcher", "RUN_RECORD", "Run", "RunFailedError", "RunsInterrupted", "StaleRunError", "check_reuse",
           "execute", "failure", "failure_summary", "failures", "finished", "imitation_ratio", "log_snapshots",
           "read_run", "signals_forwarded", "stale_settings", "visible_gpus"]
