"""Graceful stop: the first SIGINT/SIGTERM asks the job to stop after the current batch commits;
a second one interrupts at once (the open transaction rolls back)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopFlag:
    """Set by a signal handler (or a test); the job checks it between batches."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.in_batch = False  # a batch transaction is open (what a second signal rolls back)

    def request(self, reason: str) -> None:
        self.reason = reason

    @property
    def requested(self) -> bool:
        return self.reason is not None


@contextmanager
def graceful_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Install the two-step handlers for the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if flag.requested:
            raise KeyboardInterrupt(name)
        flag.request(name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
