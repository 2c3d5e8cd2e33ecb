"""What one server lets a request ask for, and the bounded queue in front of its generations.

A 2-core CPU gains nothing from running forty generations at once: :class:`GenerationPool`
runs at most ``workers`` of them, each in a worker thread, lets ``queue_size`` more wait
in line, and refuses the rest at once (:class:`QueueFull`, HTTP 429) instead of letting
them pile up. A run's steps travel from its worker thread to the request that asked for
it; the request cancels the run when its client goes away, and the worker stops between
two steps.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ddlm.errors import DDLMError


@dataclass(frozen=True)
class Limits:
    """Caps on one request, and how many generations run and wait at once."""

    max_samples: int = 8  # samples per request
    max_length: int = 512  # generated tokens per sample
    max_steps: int = 1024  # sampler steps
    max_seconds: float = 120.0  # running time of one generation
    workers: int = 1  # generations running at once
    queue_size: int = 4  # generations waiting for a worker

    def __post_init__(self) -> None:
        for name in ("max_samples", "max_length", "max_steps", "workers"):
            if getattr(self, name) < 1:
                raise DDLMError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue_size < 0:
            raise DDLMError(f"queue_size must be at least 0, got {self.queue_size}")
        if not self.max_seconds > 0:
            raise DDLMError(f"max_seconds must be positive, got {self.max_seconds}")


class QueueFull(Exception):
    """Every worker is busy and the waiting line is full."""


class TimeLimitExceeded(Exception):
    """A generation ran longer than the server's ``max_seconds``."""


class RunStopped(Exception):
    """A generation was cancelled before it finished (the server is shutting down)."""


_DONE = object()


class Run:
    """One admitted generation: iterate it (in a thread) or ``async for`` it (in an event loop) for its steps.

    The steps are computed in a worker thread of the pool; :meth:`cancel` (called when the
    client is gone) stops the worker before its next step, or before it starts.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None):
        self.cancelled = threading.Event()
        self.future: Future | None = None
        self._loop = loop
        self._async_items: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._items: queue.Queue = queue.Queue()

    def put(self, item: Any) -> None:
        """Hand a step (or the end, or an error) to the consumer; called from the worker thread."""
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_items.put_nowait, item)
            except RuntimeError:  # the event loop has closed: nobody is listening
                self.cancelled.set()
        else:
            self._items.put(item)

    def cancel(self) -> None:
        self.cancelled.set()
        if self.future is not None:
            self.future.cancel()  # removes it from the line if it has not started

    def __iter__(self) -> Iterator[Any]:
        try:
            while (item := self._items.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()  # a consumer that stops early (a closed browser tab) ends the run

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            while (item := await self._async_items.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()


class GenerationPool:
    """At most ``limits.workers`` generations at once and ``limits.queue_size`` waiting; the rest refused."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._executor = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="ddlm-generation")
        self._lock = threading.Lock()
        self.admitted = 0  # running or waiting
        self.runs: set[Run] = set()
        self.running = 0
        self.counts = {"completed": 0, "cancelled": 0, "refused": 0, "failed": 0, "timed_out": 0}

    def submit(self, steps: Callable[[], Iterator[Any]], loop: asyncio.AbstractEventLoop | None = None) -> Run:
        """Queue a generation whose steps ``steps()`` yields; raises :class:`QueueFull` when the line is full.

        Pass the running event loop to consume the run with ``async for``, or None to iterate it.
        """
        with self._lock:
            if self.admitted >= self.limits.workers + self.limits.queue_size:
                self.counts["refused"] += 1
                raise QueueFull
            self.admitted += 1
        run = Run(loop)
        with self._lock:
            self.runs.add(run)
        run.future = self._executor.submit(self._work, run, steps)
        run.future.add_done_callback(lambda future: self._leave(future, run))
        return run

    def _work(self, run: Run, steps: Callable[[], Iterator[Any]]) -> None:
        with self._lock:
            self.running += 1
        outcome = "completed"
        try:
            deadline = time.monotonic() + self.limits.max_seconds
            iterator = steps()
            for step in iterator:
                if run.cancelled.is_set():
                    outcome = "cancelled"
                    break
                run.put(step)
                if time.monotonic() > deadline and not run.cancelled.is_set():
                    outcome = "timed_out"
                    run.put(TimeLimitExceeded())
                    break
            else:
                outcome = "cancelled" if run.cancelled.is_set() else outcome
            if outcome == "cancelled":
                run.put(RunStopped())  # for a consumer still listening: the steps it got are not a result
        except Exception as error:  # handed to the request, which answers with it
            outcome = "failed"
            run.put(error)
        finally:
            with self._lock:
                self.running -= 1
                self.counts[outcome] += 1
            run.put(_DONE)

    def _leave(self, future: Future, run: Run) -> None:
        with self._lock:
            self.admitted -= 1
            self.runs.discard(run)
            if future.cancelled():  # cancelled while waiting in line: _work never ran
                self.counts["cancelled"] += 1
        if future.cancelled():
            run.put(RunStopped())
            run.put(_DONE)

    def stats(self) -> dict[str, int]:
        """Running and waiting generations, and what became of the finished ones."""
        with self._lock:
            return {"running": self.running, "waiting": self.admitted - self.running, **self.counts}

    def shutdown(self) -> None:
        """Stop every run at its next step (and those waiting before they start), so that the process can exit."""
        with self._lock:
            runs = list(self.runs)
        for run in runs:
            run.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
