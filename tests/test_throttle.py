"""Stopping and staying alive: throttle waits, signals while starting, rollback's liveness check.

Real console-script processes against a real database; a killed run is the row state SIGKILL
leaves behind (status `running`, a heartbeat that stopped).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from datetime import date, datetime, timedelta

import psycopg
import pytest

from tests.factories import broken_stream, insert_spend, insert_trace, ms
from tests.reliability.procs import run, spawn

WINDOW = ["--since", "2026-03-10", "--until", "2026-03-12"]
AUDIT = "SELECT count(*), count(DISTINCT (request_id, start_time)) FROM ttft_reconcile.corrections"


def _seed(url: str, per_day: int) -> None:
    with psycopg.connect(url) as conn:
        for day in (10, 11):
            for i in range(per_day):
                start = datetime(2026, 3, day, 1, i)
                row = broken_stream(start, request_id=str(uuid.uuid4()))
                insert_spend(conn, [row])
                insert_trace(conn, row.request_id, request_start=start, first_chunk=start + ms(120))


def _corrections(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(AUDIT).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_sigterm_during_a_throttle_wait_stops_at_once_after_committing(db_url: str) -> None:
    _seed(db_url, 4)
    # 4 rows per batch at 0.1 rows/s: a 40 s wait after the first batch commits
    proc = spawn("backfill", *WINDOW, "--database-url", db_url, "--batch-size", "4", "--max-rows-per-second", "0.1")
    deadline = time.monotonic() + 60
    while _corrections(db_url)[0] < 4 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    time.sleep(0.5)  # inside the wait now
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _, err = proc.communicate(timeout=30)
    waited = time.monotonic() - signalled
    assert proc.returncode == 130, err
    assert "after committing batch 1" in err and "rolled back" not in err, err
    assert waited < 15, f"the stop waited {waited:.1f} s for a 40 s throttle"
    assert _corrections(db_url) == (4, 4)


def test_a_throttled_worker_keeps_its_slice(db_url: str) -> None:
    """A slow worker's batches are further apart than --slice-lease; its heartbeat during the
    wait keeps a second worker from taking over its live slice (which would fail the first)."""
    _seed(db_url, 6)
    slow = spawn("backfill", *WINDOW, "--database-url", db_url, "--batch-size", "2", "--max-rows-per-second", "0.5",
                 "--slice-lease", "2s", "--json")
    deadline = time.monotonic() + 60
    while _corrections(db_url)[0] < 2 and time.monotonic() < deadline:
        assert slow.poll() is None, slow.communicate()
        time.sleep(0.1)
    fast = run("backfill", *WINDOW, "--database-url", db_url, "--slice-lease", "2s", "--json", timeout=120)
    out, err = slow.communicate(timeout=120)
    assert slow.returncode == 0, err
    assert fast.returncode == 0, fast.stderr
    slow_run, fast_run = json.loads(out)["run_id"], json.loads(fast.stdout)["run_id"]
    with psycopg.connect(db_url) as conn:
        by_day = dict(conn.execute(
            "SELECT start_time::date, array_agg(DISTINCT run_id) FROM ttft_reconcile.corrections GROUP BY 1"
        ).fetchall())
    # the slow worker wrote its whole slice; the fast one only the slice that was free
    assert by_day == {date(2026, 3, 10): [slow_run], date(2026, 3, 11): [fast_run]}, by_day
    assert _corrections(db_url) == (12, 12)


def test_sigterm_while_starting_is_one_line_and_exit_130(db_url: str) -> None:
    proc = spawn("run", "--database-url", db_url)
    time.sleep(0.05)  # Python is still importing the CLI
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip().count("\n") == 0 and "before any work" in err, err
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.runs").fetchone() == (0,)


def _killed_run(url: str, silent_for: timedelta) -> int:
    """The state a SIGKILLed backfill leaves: its run row `running`, its heartbeat stopped."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO ttft_reconcile.runs (mode, dry_run, window_since, window_until, policy, tolerance_ms,"
            " call_types, version, litellm_schema, host, worker, pid, status, started_at, heartbeat_at)"
            " VALUES ('backfill', false, '2026-03-10', '2026-03-12', 'first_chunk', 5, ARRAY['anthropic_messages'],"
            " 't', 'public', 'h', 'w', 1, 'running', now() - %s, now() - %s) RETURNING id",
            (silent_for, silent_for)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("silent_minutes", "force", "code"), [(1, False, 75), (1, True, 0), (20, False, 0)])
def test_rollback_waits_only_for_runs_that_look_alive(db_url: str, silent_minutes: int, force: bool,
                                                     code: int) -> None:
    _seed(db_url, 2)
    assert run("backfill", *WINDOW, "--database-url", db_url).returncode == 0
    other = _killed_run(db_url, timedelta(minutes=silent_minutes))
    result = run("rollback", *WINDOW, "--database-url", db_url, *(["--force"] if force else []))
    assert result.returncode == code, result.stderr
    if code == 75:
        assert f"run {other} is still writing" in result.stderr and "--force" in result.stderr
        assert _corrections(db_url) == (4, 4)
    else:
        with psycopg.connect(db_url) as conn:
            assert conn.execute("SELECT count(*) FROM ttft_reconcile.corrections WHERE status = 'applied'"
                                ).fetchone() == (0,)
