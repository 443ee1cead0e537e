"""Two processes in the `run` lane, directly and behind a real PgBouncer in transaction pooling mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy import text

from tests import services
from tests.reliability.cluster import PgBouncer
from tests.reliability.conftest import Clone
from tests.reliability.dataset import Seeded, audit_agrees, job_backends, seed
from tests.reliability.procs import AUDIT_SQL, count, observer, run, spawn, wait_for
from ttft_reconcile.db import make_engine
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.lanes import lane_key

SLOW = ["--batch-size", "10", "--max-rows-per-second", "100"]


def _seed_recent(url: str, n: int = 400) -> None:
    """Rows inside a first `run`'s window: [now - 24h, now - settle)."""
    start = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=20)
    with psycopg.connect(url) as conn:
        seed(conn, n, seed_value=5, start=start, span=timedelta(hours=19))


def _start_first(url: str) -> subprocess.Popen[str]:
    """Start a slow `run` and return once it committed its first batch (it holds the lane)."""
    first = spawn("run", "--database-url", url, *SLOW, "--json")
    with observer(url) as conn:
        assert wait_for(lambda: count(conn, AUDIT_SQL) > 0, timeout=60, proc=first), first.communicate()
    return first


@pytest.mark.slow
def test_second_run_in_the_lane_exits_75_and_nothing_is_corrected_twice(
    seeded: Callable[[int, int], tuple[Seeded, Clone]],
) -> None:
    _, clone = seeded(1, 1)
    url = clone()
    _seed_recent(url)
    first = _start_first(url)
    second = run("run", "--database-url", url)
    assert first.poll() is None, "the first run ended before the second started"
    assert second.returncode == 75, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "held by another process" in lines[0] and "ttft_reconcile" in lines[0]
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    with observer(url) as conn:
        assert audit_agrees(conn) == []
        assert count(conn, AUDIT_SQL) == json.loads(out)["outcomes"]["repaired"]


def _kill_between_transactions(proc: subprocess.Popen[str], conn: psycopg.Connection[object], database: str) -> None:
    """SIGKILL while the pooled server session is idle (killed mid-transaction, PgBouncer would
    close that server session and the lock would go with it)."""
    for _ in range(500):
        os.kill(proc.pid, signal.SIGSTOP)
        if not any(b["in_xact"] for b in job_backends(conn, database)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.003)
    raise AssertionError("the job never paused between transactions")


@pytest.mark.slow
def test_advisory_lock_behind_transaction_pooler_excludes_nobody_and_leaks(
    seeded: Callable[[int, int], tuple[Seeded, Clone]], bouncer: PgBouncer,
) -> None:
    """Documented hazard: a session advisory lock lives on whichever server connection ran it."""
    _, clone = seeded(1, 2)
    direct = clone()
    _seed_recent(direct)
    pooled = bouncer.url(services.database_name(direct))
    first = _start_first(pooled)
    second = run("run", "--database-url", pooled, "--json")
    assert first.poll() is None, first.communicate()
    # NOT excluded: the pooler ran the second pg_try_advisory_lock on the same server session,
    # which already held the lock, and Postgres granted it again (session locks are re-entrant).
    assert second.returncode == 0, second.stderr
    # the lock now belongs to the pooled server session, not to the first process: kill that
    # process and the lock stays behind, so a run that bypasses the pooler is shut out (exit 75)
    with observer(direct) as conn:
        _kill_between_transactions(first, conn, services.database_name(direct))
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND ((classid::bigint << 32) | objid::bigint) = %s", (lane_key("run"),)).fetchone()
        assert held == (1,), "the lane's advisory lock should have leaked onto the pooled server session"
        shut_out = run("run", "--database-url", direct)
        assert shut_out.returncode == 75, shut_out.stderr
        # guarded writes still kept every row to one correction
        assert audit_agrees(conn) == []


@pytest.mark.slow
@pytest.mark.parametrize("how", [["?pgbouncer=true"], ["", "--lock-mode", "lease"]], ids=["pgbouncer=true", "lease"])
def test_lease_row_excludes_the_second_process_behind_the_pooler(
    seeded: Callable[[int, int], tuple[Seeded, Clone]], bouncer: PgBouncer, how: list[str],
) -> None:
    _, clone = seeded(1, 3)
    direct = clone()
    _seed_recent(direct)
    pooled = bouncer.url(services.database_name(direct)) + how[0]
    first = spawn("run", "--database-url", pooled, *how[1:], *SLOW, "--json")
    with observer(direct) as conn:
        assert wait_for(lambda: count(conn, AUDIT_SQL) > 0, timeout=60, proc=first), first.communicate()
        second = run("run", "--database-url", pooled, *how[1:])
        assert first.poll() is None
        assert second.returncode == 75, second.stderr
        assert "is leased by" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        assert audit_agrees(conn) == []
        assert count(conn, AUDIT_SQL) == json.loads(out)["outcomes"]["repaired"]
        assert count(conn, "SELECT count(*) FROM ttft_reconcile.leases") == 0, "the lease was not released"
        assert count(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


def _prepared_after_repeats(url: str) -> tuple[object, int]:
    """psycopg's prepare_threshold on our engine, and the server's prepared statements after 8 repeats."""
    engine = make_engine(parse_database_url(url))
    try:
        with engine.begin() as conn:  # one transaction: one server session even behind the pooler
            threshold = conn.connection.dbapi_connection.prepare_threshold  # type: ignore[union-attr]
            for _ in range(8):
                conn.execute(text("SELECT count(*) FROM ttft_reconcile.runs WHERE id > :n"), {"n": 0})
            prepared = conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one()
        return threshold, int(prepared)
    finally:
        engine.dispose()


def test_prepared_statements_are_off_with_or_without_the_pooler_flag(db_url: str, bouncer: PgBouncer) -> None:
    """The job keeps its connections for its whole life: a statement psycopg prepared on one pooled
    server session is missing (or already there) on the next, so it prepares none, flag or not."""
    pooled = bouncer.url(services.database_name(db_url))
    assert _prepared_after_repeats(pooled + "?pgbouncer=true") == (None, 0)
    assert _prepared_after_repeats(pooled) == (None, 0)
    assert _prepared_after_repeats(db_url) == (None, 0)


def test_backfill_through_the_pooler_matches_a_direct_one(
    seeded: Callable[[int, int], tuple[Seeded, Clone]], bouncer: PgBouncer,
) -> None:
    _, clone = seeded(300, 4)
    direct, other = clone(), clone()
    window = ["--since", "2026-03-10", "--until", "2026-03-13", "--batch-size", "20", "--json"]
    pooled = run("backfill", *window, "--database-url", bouncer.url(services.database_name(other)) + "?pgbouncer=true")
    plain = run("backfill", *window, "--database-url", direct)
    assert pooled.returncode == 0 and plain.returncode == 0, (pooled.stderr, plain.stderr)
    assert json.loads(pooled.stdout)["outcomes"] == json.loads(plain.stdout)["outcomes"]


def test_a_lost_lane_lock_stops_the_run_before_its_next_batch(
    seeded: Callable[[int, int], tuple[Seeded, Clone]],
) -> None:
    """The advisory lock lives on its own idle session; when that session ends (an administrator,
    idle_session_timeout, a pooler) the lock goes with it. The run must notice before it writes
    another batch, instead of working on unguarded next to a second run."""
    _, clone = seeded(1, 1)
    url = clone()
    _seed_recent(url)
    first = _start_first(url)
    key = lane_key("run")
    with observer(url) as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            " AND ((l.classid::bigint << 32) | l.objid::bigint) = %s", (key,)).fetchall()
        assert ended == [(True,)]
        _, err = first.communicate(timeout=60)
        assert first.returncode == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "lost the lock on lane 'run'" in lines[0] and "committed" in lines[0], err
        # every batch it wrote is whole; the lane is free for the next run, which finishes the work
        assert audit_agrees(conn) == []
        second = run("run", "--database-url", url, "--json")
        assert second.returncode == 0, second.stderr
        assert audit_agrees(conn) == []
