"""What scripts.bench measures: per-stage wall time and CPU of the pipeline's processes (the emulator's CPU
apart: it stands for AWS), peak memory, and the machine; progress lines on stderr."""

from __future__ import annotations

import cProfile
import os
import platform
import pstats
import resource
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil

EXCLUDED_PIDS: set[int] = set()  # the emulator's processes
COUNT_POSTGRES = False  # the inventory is on a PostgreSQL server of this machine: its CPU is counted
PSS_EVERY = 10  # memory samples (0.1 s apart) per PSS reading
_STARTED = time.perf_counter()


def note(message: str) -> None:
    """A progress line on stderr (stdout is kept for the table and the JSON line)."""
    print(f"[bench {time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Stage:
    """One measured stage: wall seconds for `devices` devices using `cores` cores."""

    name: str
    devices: int
    seconds: float
    cores: int = 1
    cpu_seconds: float = 0.0  # this process (all threads, the emulator's too) + credential worker processes
    worker_cpu_seconds: float = 0.0  # the credential worker processes alone
    server_cpu_seconds: float = 0.0  # a local PostgreSQL inventory's server processes (in cpu_seconds too)
    emulator_cpu_seconds: float = 0.0  # the emulator's (not in cpu_seconds: it stands for AWS)

    @property
    def per_second(self) -> float:
        return self.devices / self.seconds if self.seconds > 0 else float("inf")


class Stopwatch:
    """Collects stages in order; `with watch("name", devices) as stage:` times one."""

    def __init__(self, profile: tuple[str, ...] = ()) -> None:
        self.stages: list[Stage] = []
        self.profile = profile  # stage name prefixes to run under cProfile

    def __call__(self, name: str, devices: int = 0, cores: int = 1) -> _Timing:
        stage = Stage(name, devices, 0.0, cores)
        self.stages.append(stage)
        profiled = any(name.startswith(prefix) for prefix in self.profile)
        return _Timing(stage, cProfile.Profile(time.process_time) if profiled else None)


class _Timing:
    def __init__(self, stage: Stage, profiler: cProfile.Profile | None) -> None:
        self.stage, self.profiler = stage, profiler

    def __enter__(self) -> Stage:
        note(f"{self.stage.name} ...")
        self._start, self._cpu, self._children = time.perf_counter(), cpu_seconds(), children_cpu_seconds()
        self._server, self._emulator = server_cpu_seconds(), emulator_cpu_seconds()
        if self.profiler:
            self.profiler.enable()
        return self.stage

    def __exit__(self, *exc: object) -> None:
        if self.profiler:
            self.profiler.disable()
        self.stage.seconds = time.perf_counter() - self._start
        self.stage.cpu_seconds = cpu_seconds() - self._cpu
        self.stage.worker_cpu_seconds = children_cpu_seconds() - self._children
        self.stage.server_cpu_seconds = server_cpu_seconds() - self._server
        self.stage.emulator_cpu_seconds = emulator_cpu_seconds() - self._emulator
        if exc[0] is None:
            note(f"{self.stage.name}: {self.stage.devices:,} devices in {self.stage.seconds:.2f} s")
        if self.profiler:  # its overhead is in the figures above: profile runs are for finding, not quoting
            pstats.Stats(self.profiler, stream=sys.stderr).sort_stats(
                os.environ.get("BENCH_PROFILE_SORT", "tottime")
            ).print_stats(30)


def cpu_seconds() -> float:
    """CPU time of this process, of all its children (the credential pool lives across chunks) and of a
    local PostgreSQL inventory's server."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime + children_cpu_seconds() + server_cpu_seconds()


def server_cpu_seconds() -> float:
    """The CPU of the PostgreSQL server's processes, when the inventory is on a server of this machine: its
    work is the inventory's, which the pipeline asks for (a backend that ends within a stage takes its share
    with it; the engine's pooled connections live across stages)."""
    if not COUNT_POSTGRES:
        return 0.0
    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        times = process.info["cpu_times"]
        if process.info["name"] in ("postgres", "postmaster") and times is not None:
            total += times.user + times.system
    return total


def emulator_cpu_seconds() -> float:
    """The emulator's CPU (all its threads): not the pipeline's, but on the same cores as the pipeline here,
    which is why a stage's wall time can exceed its CPU over the cores."""
    return _cpu_of(EXCLUDED_PIDS)


def children_cpu_seconds() -> float:
    """Children that ended (RUSAGE_CHILDREN) plus the ones still running (the worker pool), but the
    emulator's: it stands for AWS."""
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    alive = _cpu_of(c.pid for c in psutil.Process().children(recursive=True) if c.pid not in EXCLUDED_PIDS)
    return ended.ru_utime + ended.ru_stime + alive


def _cpu_of(pids: Iterable[int]) -> float:
    """User + system CPU of running processes (one that has just ended counts nothing)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class MemoryPeak:
    """The peak memory of this process and its children (but the emulator) together, sampled every
    0.1 s (PSS every second).

    Two sums: PSS (Linux's proportional set size: a page shared by k processes counts 1/k in each, so the
    sum is what the machine really gave them, the figure the memory goal is read on) and RSS (a shared page
    counts in every process: the forked credential workers share the parent's pages, so this is an upper
    bound). PSS comes from /proc/PID/smaps_rollup; where it cannot be read, RSS stands in for it.
    """

    def __init__(self) -> None:
        self.peak = 0  # PSS summed
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        tick = 0
        while not self._stop.is_set():
            # PSS walks the page tables (milliseconds per GB): read once a second, RSS ten times.
            with_pss = tick % PSS_EVERY == 0
            pss = rss = 0
            for process in (me, *me.children(recursive=True)):
                if process.pid in EXCLUDED_PIDS:  # the emulator stands for AWS: not the pipeline's memory
                    continue
                try:
                    resident = process.memory_info().rss
                    pss += _pss(process.pid, resident) if with_pss else 0
                    rss += resident
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, rss)
            if with_pss:
                self.peak = max(self.peak, pss)
            tick += 1
            self._stop.wait(0.1)


def _pss(pid: int, rss: int) -> int:
    """A process's PSS in bytes (smaps_rollup, cheaper than psutil's full smaps walk); RSS if unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "load_1m": round(load[0], 2),
        "python": platform.python_version(),
    }
