"""Progress of long work: a redrawn bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ttft_reconcile.job import Progress


class ProgressPrinter:
    """Callable for the job's progress callback; writes to stderr."""

    def __init__(self, stream: TextIO | None = None, *, interval_s: float = 10.0, tty: bool | None = None,
                 dry_run: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.dry_run = dry_run
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = 0.2 if self.tty else interval_s
        self.last: float | None = None  # the first update always shows (monotonic time may be small)
        self.started = time.monotonic()
        self.drawn = False
        self.pending: Progress | None = None
        self.latest: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        self.latest = progress
        if self.last is not None and now - self.last < self.interval_s:
            self.pending = progress
            return
        self.last = now
        self.pending = None
        self._show(progress, now)

    def _show(self, progress: Progress, now: float, *, complete: bool = False) -> None:
        line = self.describe(progress, now - self.started, complete=complete)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self.drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, *, completed: bool = False) -> None:
        """Show the last state (if it was throttled away; at 100 % when the work `completed`), then
        end the bar's line."""
        if completed and self.latest is not None:
            self._show(self.latest, time.monotonic(), complete=True)
            self.pending = None
        elif self.pending is not None and (self.drawn or not self.tty):
            self._show(self.pending, time.monotonic())
            self.pending = None
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()

    @staticmethod
    def fraction(progress: Progress) -> float | None:
        """Share done: by position in [since, until) (the current slice's, for a backfill), and for
        a backfill also by slices, so a one-slice window moves before it finishes."""
        within = None
        span = (progress.until - progress.since).total_seconds()
        if progress.position is not None and span > 0:
            within = min(1.0, max(0.0, (progress.position - progress.since).total_seconds() / span))
        if progress.slices_total:
            return min(1.0, (progress.slices_done + (within or 0.0)) / progress.slices_total)
        return within

    def describe(self, progress: Progress, elapsed_s: float, *, complete: bool = False) -> str:
        """One line; `complete` shows 100 % (the last candidate's start time is short of the end)."""
        share = 1.0 if complete else self.fraction(progress)
        repaired = progress.outcomes.get("repaired", 0)
        rate = progress.scanned / elapsed_s if elapsed_s > 0 else 0.0
        head = ""
        if share is not None and self.tty:
            width = 24
            filled = int(share * width)
            head = f"[{'#' * filled}{'.' * (width - filled)}] {share * 100:5.1f}% "
        elif share is not None:  # a log line: no bar to redraw
            head = f"{share * 100:.1f}% "
        where = f" at {progress.position.isoformat(sep=' ', timespec='seconds')}Z" if progress.position else ""
        slices = f" slices {progress.slices_done}/{progress.slices_total}" if progress.slices_total else ""
        return (
            f"{head}{progress.mode}: {progress.scanned} candidates, {repaired}"
            f" {'would be repaired' if self.dry_run else 'repaired'},"
            f" {progress.batches} batch{'' if progress.batches == 1 else 'es'}, {rate:.0f} rows/s{slices}{where}"
        )
