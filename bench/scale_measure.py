"""Measurements for the scale benchmark: the job as users run it (the CLI in a child process, with
its peak RSS from wait4), the one-statement DBA baseline, EXPLAIN of every statement the job
sends to SpendLogs (and of the query the rollup function runs on it), and a profile of an
in-process backfill."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg
from sqlalchemy import event
from sqlalchemy.engine import Engine

from bench.scale_data import BASELINE_SQL
from ttft_reconcile import dashboard_queries
from ttft_reconcile.settings import DEFAULT_CALL_TYPES


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


@dataclass
class StatementTimes:
    """Wall seconds the job spent waiting on each kind of statement (see `statement_kind`)."""

    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


# Threads of a backfill beside the one that writes: the rollup rebuilt behind the batches, and the
# next batch decided ahead of them. Their statements run at the same time as the writes.
THREAD_SUFFIX = {"ttft-rollup": " (behind the batches)", "ttft-decide": " (ahead of the writes)"}


def statement_kind(statement: str) -> str:
    """The cost bucket of one statement the job sends."""
    if statement.lstrip().startswith("WITH cand"):
        return "batch decide (read, join, decide, stage)"
    if statement.lstrip().startswith("WITH staged"):
        return "batch write (guarded UPDATE, audit)"
    if "INSERT INTO ttft_reconcile.ttft_daily" in statement:
        return "ttft_daily refresh"
    return "bookkeeping (runs, slices, limits)"


@contextmanager
def time_statements() -> Iterator[StatementTimes]:
    """Sum the time every engine in this process waits on each kind of statement (commits excluded)."""
    times = StatementTimes()
    started: dict[int, float] = {}

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        started[id(cursor)] = time.monotonic()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        kind = statement_kind(statement)
        kind += THREAD_SUFFIX.get(threading.current_thread().name, "")
        elapsed = time.monotonic() - started.pop(id(cursor), time.monotonic())
        times.seconds[kind] = times.seconds.get(kind, 0.0) + elapsed
        times.counts[kind] = times.counts.get(kind, 0) + 1

    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "after_cursor_execute", after)
    try:
        yield times
    finally:
        event.remove(Engine, "before_cursor_execute", before)
        event.remove(Engine, "after_cursor_execute", after)


@dataclass(frozen=True)
class WriteFloor:
    """What the writes alone cost on the baseline's rows, each in its own rolled-back transaction:
    the bare UPDATE and an audit INSERT of the same rows (seconds, rows)."""

    update_seconds: float
    audit_insert_seconds: float
    rows: int


_FLOOR_ROWS = (
    "CREATE TEMP TABLE floor_rows ON COMMIT DROP AS"
    ' SELECT DISTINCT ON (s.request_id) s.request_id, s."startTime" AS start_time,'
    ' s."completionStartTime" AS old_cst, t.first_chunk_at AT TIME ZONE \'UTC\' AS new_cst, t.litellm_call_id'
    ' FROM "LiteLLM_SpendLogs" s JOIN ttft_reconcile.stream_traces t ON s.request_id = t.litellm_call_id'
    " WHERE s.call_type IN ('anthropic_messages', 'aresponses', 'pass_through_endpoint')"
    ' AND abs(extract(epoch FROM s."endTime" - s."completionStartTime")) <= 0.005'
    ' AND t.first_chunk_at BETWEEN s."startTime" AND s."endTime"'
)
_FLOOR_UPDATE = (
    'UPDATE "LiteLLM_SpendLogs" s SET "completionStartTime" = f.new_cst FROM floor_rows f'
    ' WHERE s.request_id = f.request_id AND s."startTime" = f.start_time'
)
_FLOOR_AUDIT = (
    "INSERT INTO ttft_reconcile.corrections (request_id, start_time, run_id, policy, old_completion_start_time,"
    " new_completion_start_time, ttft_ms, litellm_call_id, stream_seq, call_type, model_group, joined_by, streams,"
    " trace_outcome, chunk_count, request_start_at, api_call_start_at, first_chunk_at, first_event_at,"
    " first_output_at, first_visible_at)"
    " SELECT f.request_id, f.start_time, %(run_id)s, 'first_chunk', f.old_cst, f.new_cst,"
    " round((extract(epoch FROM f.new_cst - f.start_time) * 1000)::numeric, 3)::float8, f.litellm_call_id, 0,"
    " 'anthropic_messages', 'm', ARRAY['request_id=litellm_call_id'], 1, 'completed', 40, f.start_time,"
    " f.start_time, f.new_cst, f.new_cst, f.new_cst, f.new_cst"
    " FROM floor_rows f"
)


def write_floor(url: str) -> WriteFloor:
    """Time the bare UPDATE and a same-sized audit INSERT separately; both are rolled back."""
    seconds = []
    rows = 0
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.commit()
        for statement in (_FLOOR_UPDATE, _FLOOR_AUDIT):
            conn.execute(_FLOOR_ROWS)
            run = conn.execute("INSERT INTO ttft_reconcile.runs (mode) VALUES ('backfill') RETURNING id").fetchone()
            assert run is not None
            started = time.monotonic()
            rows = conn.execute(statement, {"run_id": run[0]}).rowcount
            seconds.append(time.monotonic() - started)
            conn.rollback()
    return WriteFloor(seconds[0], seconds[1], rows)


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


ROLLUP_STATEMENT = "ttft_daily_rows(day, day + 1): the query it runs on SpendLogs (rollup of one UTC day)"


def explain_rollup(url: str, day: date) -> Explained:
    """EXPLAIN the query the rollup function runs on SpendLogs for one UTC day, planned as a
    rebuild plans it (`ROLLUP_PLAN`): a statement the job sends names only the function."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT ttft_reconcile.spend_logs_ttft_sql('public')").fetchone()
        assert row is not None
        cursor = psycopg.ClientCursor(conn)  # simple protocol: $1..$4 are PREPARE's own parameters
        cursor.execute(dashboard_queries.ROLLUP_PLAN)
        cursor.execute(f"PREPARE rollup_day(timestamp, timestamp, text[], interval) AS {row[0]}")
        cursor.execute(
            "EXPLAIN (FORMAT JSON) EXECUTE rollup_day(%s::timestamp, %s::timestamp, %s::text[], %s::interval)",
            (datetime.combine(day, datetime.min.time()), datetime.combine(day + timedelta(days=1), datetime.min.time()),
             list(DEFAULT_CALL_TYPES), timedelta(milliseconds=5)))
        found = cursor.fetchone()
        conn.rollback()
    assert found is not None
    plan = found[0] if isinstance(found[0], list) else json.loads(found[0])
    scans = [f"{node['Node Type']}" + (f" using {node['Index Name']}" if node.get("Index Name") else "")
             for node in _walk(plan[0]["Plan"]) if node.get("Relation Name") == "LiteLLM_SpendLogs"]
    return Explained(statement=ROLLUP_STATEMENT, executions=1, spend_logs_scans=scans,
                     seq_scan=any(s.startswith("Seq Scan") for s in scans), plan=plan)


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
