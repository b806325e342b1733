"""The background batcher: concurrent requests become one generate call with per-row steering.

Requests arrive as :class:`Job` objects on a thread-safe queue. One worker thread (the only one
that touches the model) takes the oldest job, keeps collecting for up to ``wait_s`` (or until
``max_batch_size`` rows of its kind are waiting), and runs every waiting job of the same kind
in one ``backend.generate`` call, older jobs first. The kind (:func:`batch_key`) keeps a row's
answer what it would be alone:

* greedy rows all share a call, whatever their ``max_tokens`` or steering;
* sampled rows without a seed share a call with the same temperature and top_p (each row draws
  from its own distribution);
* a sampled row with a seed runs alone, because a seeded draw depends on the whole batch.

Each job hears back through ``emit(event)`` (called on the worker thread): ``("text", i, delta)``
while streaming, then ``("done", results)`` or ``("error", exception)``.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .backends import ServeBackend
from .protocol import Row, Sampling

Event = tuple


@dataclass
class Job:
    rows: list[Row]
    sampling: Sampling
    emit: Callable[[Event], None]
    stream: bool = False
    number: int = field(default_factory=itertools.count().__next__)


def batch_key(job: Job) -> tuple:
    s = job.sampling
    if s.greedy:
        return ("greedy",)
    if s.seed is not None:
        return ("seeded", job.number)
    return ("sampled", s.temperature, s.top_p)


class Batcher:
    """``start()``, ``submit(job)`` from any thread, ``stop()``. ``calls`` lists the number of
    rows of every generate call made (what was batched with what)."""

    def __init__(self, backend: ServeBackend, *, max_batch_size: int = 32, wait_s: float = 0.01):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.backend, self.max_batch_size, self.wait_s = backend, max_batch_size, max(0.0, wait_s)
        self.calls: list[int] = []
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="persona-lens-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, job: Job) -> None:
        if self._thread is None:
            raise RuntimeError("the batcher is not running")
        self._queue.put(job)

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        pending: list[Job] = []
        running = True
        while running or pending:
            if not pending:
                job = self._queue.get()
                if job is None:
                    return
                pending.append(job)
            running = self._collect(pending) and running
            self._run(self._take(pending))

    def _collect(self, pending: list[Job]) -> bool:
        """Wait up to ``wait_s`` for more jobs like the oldest one; False once asked to stop."""
        key = batch_key(pending[0])
        deadline = time.monotonic() + self.wait_s
        while sum(len(j.rows) for j in pending if batch_key(j) == key) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return True
            if job is None:
                return False
            pending.append(job)
        return True

    def _take(self, pending: list[Job]) -> list[Job]:
        """The oldest job and the jobs of its kind that fit beside it, removed from ``pending``."""
        key = batch_key(pending[0])
        batch: list[Job] = []
        rows = 0
        for job in list(pending):
            if batch_key(job) == key and (not batch or rows + len(job.rows) <= self.max_batch_size):
                batch.append(job)
                rows += len(job.rows)
                pending.remove(job)
        return batch

    def _run(self, batch: list[Job]) -> None:
        rows = [row for job in batch for row in job.rows]
        owners = [(job, i) for job in batch for i in range(len(job.rows))]

        def on_text(r: int, text: str) -> None:
            job, i = owners[r]
            if job.stream:
                job.emit(("text", i, text))

        streaming = any(job.stream for job in batch)
        self.calls.append(len(rows))
        try:
            results = self.backend.generate(rows, batch[0].sampling, on_text if streaming else None)
        except Exception as exc:  # answered to each request, never a dead worker
            for job in batch:
                job.emit(("error", exc))
            return
        start = 0
        for job in batch:
            job.emit(("done", results[start:start + len(job.rows)]))
            start += len(job.rows)
