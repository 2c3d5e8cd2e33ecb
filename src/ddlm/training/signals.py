"""Stopping a training cleanly: SIGINT (Ctrl-C) and SIGTERM end it at the next step boundary."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A second signal this soon after the first is the same request: Ctrl-C on a torchrun job reaches each
# worker from the terminal and again from the launcher, which forwards it.
ECHO_SECONDS = 1.0


class TrainingInterrupted(KeyboardInterrupt):
    """A signal stopped the run between two steps, after a checkpoint of the last one."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"{signal_name} at step {step}")
        self.step = step
        self.signal_name = signal_name


class StopSignals:
    """While active, SIGINT and SIGTERM only set ``received``; a second signal (or any, after
    ``stop_at_once``) raises KeyboardInterrupt at once, unless it comes within ``ECHO_SECONDS`` of
    the first (an echo of the same request, as under torchrun).

    A signal the process ignores stays ignored; outside the main thread (where Python cannot
    install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self.received_at = 0.0
        self.immediate = False
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self.handle) for number in STOP_SIGNALS
                             if signal.getsignal(number) is not signal.SIG_IGN}  # e.g. SIGINT under nohup or `&`
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        self.previous = {}

    def stop_at_once(self) -> None:
        """From now on the first signal raises KeyboardInterrupt (nothing is left to finish cleanly)."""
        self.immediate = True

    def handle(self, number: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.received is not None and not self.immediate and now - self.received_at < ECHO_SECONDS:
            return
        if self.immediate or self.received is not None:
            raise KeyboardInterrupt  # stop now, keeping the last checkpoint
        self.received, self.received_at = signal.Signals(number).name, now
