"""This process's worker processes for CPU-bound work: started on first use, kept for every later call."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor


class _WorkerPool:
    """One ProcessPoolExecutor per process, and the (pid, size) it was made for."""

    def __init__(self) -> None:
        self.executor: ProcessPoolExecutor | None = None
        self.owner = (0, 0)

    def get(self, workers: int) -> ProcessPoolExecutor:
        if self.executor is None or self.owner != (os.getpid(), workers):
            self.shutdown()
            # fork: workers start in milliseconds with everything imported, once per process (not per
            # chunk). spawn/forkserver re-run the parent's __main__ in every worker (under Airflow's
            # console script: Airflow imported again, seconds per worker).
            context = multiprocessing.get_context("fork")
            self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)
            self.owner = (os.getpid(), workers)
        return self.executor

    def shutdown(self) -> None:
        # A pool inherited through fork belongs to the parent: forget it, never stop it from here.
        if self.executor is not None and self.owner[0] == os.getpid():
            self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = None


_pool = _WorkerPool()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """The pool of `workers` processes; the same one on every call with the same count."""
    return _pool.get(workers)


def worker_pids() -> list[int]:
    """The process ids of the running workers (none before the first task or after shutdown_workers)."""
    executor = _pool.executor
    return sorted(executor._processes) if executor is not None and executor._processes else []


def shutdown_workers() -> None:
    """Stop the workers (the next worker_pool call starts new ones), e.g. before reading RUSAGE_CHILDREN."""
    _pool.shutdown()
