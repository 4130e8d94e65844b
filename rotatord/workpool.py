"""A bounded pool of daemon threads for blocking work handed off by a selector loop.

Rules: at most ``size`` threads, started only when no thread is idle (ThreadPoolExecutor's rule);
daemon threads, so a hung job cannot hold the process at exit; jobs must not raise (the caller
wraps them).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class WorkerPool:
    """Runs submitted jobs on at most ``size`` threads, in submission order."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)
        if not self._idle.acquire(blocking=False) and len(self._threads) < self._size:
            t = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(t)
            t.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
            self._idle.release()

    def stop(self, timeout: float = 1.0) -> None:
        """Let each thread finish its job and exit, waiting up to ``timeout`` for each one."""
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout)
