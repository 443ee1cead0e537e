"""SIGKILL at seeded points of the incremental `run` and of `rollback`; the re-run finishes the work."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from tests import services
from tests.reliability.conftest import Clone
from tests.reliability.dataset import Seeded, audit_agrees, correction_rows, seed, spend_rows
from tests.reliability.procs import AUDIT_SQL, count, freeze_inspect_kill, observer, run, spawn, wait_for

KILLS = 6


def _seed_recent(url: str) -> None:
    start = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=20)
    with psycopg.connect(url) as conn:
        seed(conn, 500, seed_value=41, start=start, span=timedelta(hours=19))


def _kill_at(url: str, args: list[str], sql: str, goals: list[int], rng: random.Random) -> int:
    """Kill `ttft-reconcile ARGS` once `sql` reaches each goal; returns how many kills were mid-transaction."""
    mid = 0
    with observer(url) as conn:
        for goal in goals:
            proc = spawn(*args)
            target = max(goal, count(conn, sql) + 1)
            wait_for(lambda target=target: count(conn, sql) >= target, timeout=60, proc=proc)  # type: ignore[misc]
            time.sleep(rng.uniform(0, 0.03))
            assert proc.poll() is None, "the command finished before its kill point"
            record = freeze_inspect_kill(proc, conn, services.database_name(url), sql)
            mid += record.mid_transaction
            if record.mid_transaction:
                assert record.committed_after == record.committed_before
            assert audit_agrees(conn) == []
    return mid


@pytest.mark.slow
def test_incremental_run_killed_then_rerun_matches_an_uninterrupted_run(
    seeded: Callable[[int, int], tuple[Seeded, Clone]], pg_admin_url: str,
) -> None:
    _, clone = seeded(1, 40)
    template = clone()
    _seed_recent(template)
    name = services.database_name(template)
    reference, url = (services.with_database(pg_admin_url, services.clone_database(pg_admin_url, name))
                      for _ in range(2))
    try:
        args = ["run", "--batch-size", "10", "--database-url"]
        assert run(*args, reference).returncode == 0
        with psycopg.connect(reference) as conn:
            expected = spend_rows(conn), correction_rows(conn)
        rng = random.Random(42)
        mid = _kill_at(url, [*args, url], AUDIT_SQL,
                       sorted(rng.sample(range(1, len(expected[1]) * 2 // 3), KILLS)), rng)
        again = run(*args, url)
        assert again.returncode == 0, again.stderr  # the lane's advisory lock died with the killed session
        with psycopg.connect(url) as conn:
            assert (spend_rows(conn), correction_rows(conn)) == expected
    finally:
        for made in (reference, url):
            services.drop_database(pg_admin_url, services.database_name(made))
    print(f"\nrun: {KILLS} kills, {mid} mid-transaction; {len(expected[1])} corrections compared")


@pytest.mark.slow
def test_rollback_killed_then_rerun_restores_every_row_exactly(
    seeded: Callable[[int, int], tuple[Seeded, Clone]],
) -> None:
    _, clone = seeded(600, 43)
    original, url = clone(), clone()
    done = run("backfill", "--since", "2026-03-10", "--until", "2026-03-13", "--json", "--database-url", url)
    assert done.returncode == 0, done.stderr
    run_id = str(json.loads(done.stdout)["run_id"])
    reverted = "SELECT count(*) FROM ttft_reconcile.corrections WHERE status = 'reverted'"
    with psycopg.connect(url) as conn:
        total = count(conn, AUDIT_SQL)
    rng = random.Random(44)
    args = ["rollback", "--run-id", run_id, "--batch-size", "10", "--database-url", url]
    mid = _kill_at(url, args, reverted, sorted(rng.sample(range(1, total * 2 // 3), KILLS)), rng)
    again = run(*args, "--json")
    assert again.returncode == 0, again.stderr
    with psycopg.connect(url) as conn, psycopg.connect(original) as ref:
        assert spend_rows(conn) == spend_rows(ref)
        statuses = conn.execute("SELECT status, count(*), count(reverted_by_run) FROM ttft_reconcile.corrections"
                                " GROUP BY status").fetchall()
        assert statuses == [("reverted", total, total)]
    print(f"\nrollback: {KILLS} kills, {mid} mid-transaction; {total} corrections restored")
