"""Measurements for the scale benchmark: the job as users run it (the CLI in a child process, with
its peak RSS from wait4), the one-statement DBA baseline, EXPLAIN of every statement the job
sends to SpendLogs, and a profile of an in-process backfill."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg
from sqlalchemy import event
from sqlalchemy.engine import Engine

from bench.scale_data import BASELINE_SQL


@dataclass(frozen=True)
class CliRun:
    """One `ttft-reconcile ...` child process. Seconds are wall clock; RSS in MiB (with its workers)."""

    args: list[str]
    exit_code: int
    wall_seconds: float
    job_seconds: float | None
    peak_rss_mib: float  # the largest single process
    rss_sum_mib: float  # all its processes (the parent and any workers)
    summary: dict[str, Any]
    stderr_tail: str


def run_cli(args: list[str], url: str) -> CliRun:
    """Run `python -m ttft_reconcile <args> --database-url URL --json` and wait4 it."""
    command = [sys.executable, "-m", "ttft_reconcile", *args, "--database-url", url, "--json"]
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err, peak, total = _communicate(proc)
    wall = time.monotonic() - started
    summary: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("{"):
            summary = json.loads(line)
    return CliRun(args=args, exit_code=proc.returncode, wall_seconds=wall,
                  job_seconds=summary.get("duration_seconds"), peak_rss_mib=peak, rss_sum_mib=total,
                  summary=summary, stderr_tail=err[-2000:])


def _hwm_kib(pid: int) -> int:
    """VmHWM (peak RSS of the process's current image) from /proc, KiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


class _PeakRss:
    """Samples VmHWM of a child and its worker processes every 20 ms.

    wait4's ru_maxrss is no use here: Linux carries the parent's peak over the fork and exec,
    so every child would report at least the benchmark's own size.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peaks: dict[int, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(0.02):
            for pid in (self.pid, *_descendants(self.pid)):
                self.peaks[pid] = max(self.peaks.get(pid, 0), _hwm_kib(pid))

    def stop(self) -> tuple[float, float]:
        """(largest single process, sum over processes), MiB."""
        self._done.set()
        self._thread.join()
        values = [v for v in self.peaks.values() if v]
        return (max(values, default=0) / 1024.0, sum(values) / 1024.0)


def _communicate(proc: subprocess.Popen[str]) -> tuple[str, str, float, float]:
    """Read both pipes while sampling peak RSS; returns (stdout, stderr, peak MiB, sum MiB)."""
    sampler = _PeakRss(proc.pid)
    out, err = proc.communicate()
    peak, total = sampler.stop()
    return out, err, round(peak, 1), round(total, 1)


@dataclass(frozen=True)
class Baseline:
    seconds: float
    updated: int


def baseline(url: str) -> Baseline:
    """The DBA's one statement (issue 5), in one transaction, timed to its commit."""
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.commit()
        started = time.monotonic()
        cur = conn.execute(BASELINE_SQL)
        updated = cur.rowcount
        conn.commit()
        return Baseline(time.monotonic() - started, updated)


@dataclass
class Captured:
    """Statements mentioning SpendLogs, first parameters kept per distinct text."""

    statements: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@contextmanager
def capture_spend_logs_statements() -> Iterator[Captured]:
    """Record every statement sent by any engine in this process that touches SpendLogs."""
    captured = Captured()

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if '"LiteLLM_SpendLogs"' in statement:
            first = parameters[0] if executemany and parameters else parameters
            captured.statements.setdefault(statement, first)
            captured.counts[statement] = captured.counts.get(statement, 0) + 1

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield captured
    finally:
        event.remove(Engine, "before_cursor_execute", before)


@dataclass(frozen=True)
class Explained:
    statement: str
    executions: int
    spend_logs_scans: list[str]  # e.g. "Index Scan using LiteLLM_SpendLogs_startTime_request_id_idx"
    seq_scan: bool
    plan: list[Any]


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


def explain(url: str, captured: Captured) -> list[Explained]:
    """EXPLAIN (no ANALYZE: nothing runs) each captured statement with its first parameters."""
    results = []
    with psycopg.connect(url) as conn:
        for statement, params in captured.statements.items():
            row = conn.execute(("EXPLAIN (FORMAT JSON) " + statement).encode(), params).fetchone()
            conn.rollback()
            assert row is not None
            plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
            scans = []
            for node in _walk(plan[0]["Plan"]):
                if node.get("Relation Name") == "LiteLLM_SpendLogs":
                    index = node.get("Index Name")
                    scans.append(f"{node['Node Type']}" + (f" using {index}" if index else ""))
            results.append(Explained(statement=statement, executions=captured.counts[statement],
                                     spend_logs_scans=scans, seq_scan=any(s.startswith("Seq Scan") for s in scans),
                                     plan=plan))
    return results


def profile(action: Callable[[], Any], top: int = 45) -> tuple[Any, str]:
    """Run `action` under pyinstrument; returns its result and the profile's top lines ('' if absent)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return action(), ""
    profiler = Profiler(interval=0.005)
    profiler.start()
    try:
        result = action()
    finally:
        profiler.stop()
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    lines = [line for line in text.splitlines() if line.strip()]
    return result, "\n".join(lines[:top])
