"""A backfill decides its next batch on a second connection while the last one is written.

The decision and the write are two transactions now, so another writer may change a row in
between: the write's guard must refuse it. Decided batches that are never written (a stop, a
failure) must leave no staged rows behind, and an error met while deciding must fail the
command like any other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from tests.factories import broken_stream, cst_of, insert_spend, insert_trace, ms
from ttft_reconcile import batch_sql, job, pipeline
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.errors import Interrupted, ReconcileError
from ttft_reconcile.settings import JobSettings
from ttft_reconcile.signals import StopFlag

SINCE = datetime(2026, 3, 10, tzinfo=timezone.utc)
UNTIL = datetime(2026, 3, 11, tzinfo=timezone.utc)
ROWS = 12


def _settings(url: str, **kw: Any) -> JobSettings:
    return JobSettings(database=parse_database_url(url), batch_size=3, **kw)


def _seed(url: str) -> list[str]:
    """ROWS broken streams a minute apart, each with a trace 100 ms in; their request ids in order."""
    rows = [broken_stream(datetime(2026, 3, 10, 9, 0) + timedelta(minutes=i)) for i in range(ROWS)]
    with psycopg.connect(url) as conn:
        insert_spend(conn, rows)
        for row in rows:
            insert_trace(conn, row.request_id, request_start=row.start, first_chunk=row.start + ms(100))
    return [row.request_id for row in rows]


def _staged_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM ttft_reconcile.batch_stage").fetchone()
    assert row is not None
    return int(row[0])


def _audit_rows(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM ttft_reconcile.corrections").fetchall()}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, int]]]:
    """Every decide and write of the job: (what, thread name, batch's first request id count)."""
    seen: list[tuple[str, str, int]] = []
    decide, write = batch_sql.decide_batch, batch_sql.write_batch

    def decide_spy(*args: Any, **kw: Any) -> batch_sql.DecidedBatch:
        batch = decide(*args, **kw)
        seen.append(("decide", threading.current_thread().name, batch.scanned))
        return batch

    def write_spy(*args: Any, **kw: Any) -> batch_sql.BatchResult:
        seen.append(("write", threading.current_thread().name, args[2].scanned))
        return write(*args, **kw)

    monkeypatch.setattr(batch_sql, "decide_batch", decide_spy)
    monkeypatch.setattr(batch_sql, "write_batch", write_spy)
    yield seen


def _before_write(monkeypatch: pytest.MonkeyPatch, action: Callable[[int], None]) -> None:
    """Call `action(n)` before the job's n-th write (1-based), on the writing thread."""
    write = batch_sql.write_batch
    count = [0]

    def hooked(*args: Any, **kw: Any) -> batch_sql.BatchResult:
        count[0] += 1
        action(count[0])
        return write(*args, **kw)

    monkeypatch.setattr(batch_sql, "write_batch", hooked)


def test_batches_are_decided_ahead_on_their_own_thread_and_all_written(
        db_url: str, calls: list[tuple[str, str, int]]) -> None:
    ids = _seed(db_url)
    done = job.backfill(_settings(db_url), SINCE, UNTIL)
    assert done.outcomes["repaired"] == ROWS and done.candidates == ROWS
    decided = [c for c in calls if c[0] == "decide"]
    written = [c for c in calls if c[0] == "write"]
    assert {c[1] for c in decided} == {pipeline.THREAD_NAME}
    assert {c[1] for c in written} == {"MainThread"}
    # 12 rows in batches of 3: four full batches, then the empty one that ends the slice
    assert [c[2] for c in decided] == [3, 3, 3, 3, 0]
    assert [c[2] for c in written] == [3, 3, 3, 3]
    assert _audit_rows(db_url) == set(ids)
    assert _staged_rows(db_url) == 0
    with psycopg.connect(db_url) as conn:
        assert all(cst_of(conn, rid) is not None for rid in ids)


def test_an_incremental_run_decides_and_writes_in_one_transaction(
        db_url: str, calls: list[tuple[str, str, int]]) -> None:
    _seed(db_url)
    done = job.run_incremental(_settings(db_url, initial_window=timedelta(days=1), settle=timedelta(0)),
                               now=datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc))
    assert done.outcomes["repaired"] == ROWS
    assert {c[1] for c in calls} == {"MainThread"}
    assert _staged_rows(db_url) == 0


@pytest.mark.parametrize("change", ["completionStartTime", "spend"])
def test_a_row_changed_after_its_batch_was_decided_is_left_alone(
        db_url: str, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """Another writer updates a decided row before its batch is written: the guard refuses it
    whichever column changed (the row's version is not the one decided on), it counts as
    `changed`, keeps the other writer's value and gets no audit row."""
    ids = _seed(db_url)
    victim = ids[4]  # in the second batch, decided while the first one was being written
    other_value = datetime(2026, 3, 10, 9, 4, 0, 700000)

    def other_writer(n: int) -> None:
        if n == 2:
            with psycopg.connect(db_url) as conn:
                column = f'"{change}"'
                value = other_value if change == "completionStartTime" else 0.25
                conn.execute(f'UPDATE "LiteLLM_SpendLogs" SET {column} = %s WHERE request_id = %s', (value, victim))

    _before_write(monkeypatch, other_writer)
    done = job.backfill(_settings(db_url), SINCE, UNTIL)
    assert done.outcomes["changed"] == 1 and done.outcomes["repaired"] == ROWS - 1
    assert _audit_rows(db_url) == set(ids) - {victim}
    with psycopg.connect(db_url) as conn:
        row = conn.execute('SELECT "completionStartTime", "endTime", spend FROM "LiteLLM_SpendLogs"'
                           " WHERE request_id = %s", (victim,)).fetchone()
    assert row is not None
    if change == "completionStartTime":
        assert row[0] == other_value
    else:
        assert row[0] == row[1] and row[2] == 0.25  # still broken, as the other writer left it
    assert _staged_rows(db_url) == 0
    # the next backfill (restarted) repairs it from its new version
    again = job.backfill(_settings(db_url), SINCE, UNTIL, restart=True)
    assert again.outcomes["repaired"] == (0 if change == "completionStartTime" else 1)


def test_a_stopped_backfill_leaves_no_staged_rows(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop after the first write: the batches decided ahead are never written, their staged
    rows are deleted, and the re-issued backfill does them."""
    ids = _seed(db_url)
    stop = StopFlag()
    staged_while_stopping: list[int] = []

    def stop_after_first(n: int) -> None:
        if n == 1:
            stop.request("SIGTERM")
            # the decider ran ahead: more than this batch's rows wait in the stage
            deadline = datetime.now() + timedelta(seconds=10)
            while _staged_rows(db_url) <= 3 and datetime.now() < deadline:
                pass
            staged_while_stopping.append(_staged_rows(db_url))

    _before_write(monkeypatch, stop_after_first)
    with pytest.raises(Interrupted, match="after committing batch 1"):
        job.backfill(_settings(db_url), SINCE, UNTIL, stop=stop)
    assert staged_while_stopping and staged_while_stopping[0] > 3
    assert _staged_rows(db_url) == 0
    assert len(_audit_rows(db_url)) == 3
    monkeypatch.undo()
    rest = job.backfill(_settings(db_url), SINCE, UNTIL)
    assert rest.outcomes["repaired"] == ROWS - 3
    assert _audit_rows(db_url) == set(ids)


@pytest.mark.parametrize("command", ["backfill", "run"])
def test_staged_rows_of_a_killed_command_are_swept_after_an_hour(db_url: str, command: str) -> None:
    _seed(db_url)
    with psycopg.connect(db_url) as conn:
        for stage_id, age in ((1001, "2 hours"), (1002, "5 minutes")):  # a killed command's, a live one's
            conn.execute(
                "INSERT INTO ttft_reconcile.batch_stage (stage_id, staged_at, row_ctid, row_xmin, request_id,"
                " start_time, new_cst) VALUES (%s, now() - %s::interval, '(0,1)', '1', 'x', now(), now())",
                (stage_id, age))
    if command == "backfill":
        job.backfill(_settings(db_url), SINCE, UNTIL)
    else:  # the cron `run`, which a deployment keeps running after its one backfill
        job.run_incremental(_settings(db_url, initial_window=timedelta(hours=1), settle=timedelta(0)),
                            now=datetime(2026, 3, 10, 8, 0, tzinfo=timezone.utc))
    with psycopg.connect(db_url) as conn:
        left = [r[0] for r in conn.execute("SELECT stage_id FROM ttft_reconcile.batch_stage").fetchall()]
    assert left == [1002]


def test_an_error_while_deciding_ahead_fails_the_backfill_after_its_committed_batches(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _seed(db_url)
    decide = batch_sql.decide_batch
    count = [0]

    def failing(*args: Any, **kw: Any) -> batch_sql.DecidedBatch:
        count[0] += 1
        if count[0] == 3:
            raise sa_exc.OperationalError("decide", {}, Exception("server closed the connection unexpectedly"))
        return decide(*args, **kw)

    monkeypatch.setattr(batch_sql, "decide_batch", failing)
    with pytest.raises(ReconcileError):
        job.backfill(_settings(db_url), SINCE, UNTIL)
    assert len(_audit_rows(db_url)) == 6  # the two batches decided before the error were written
    assert _staged_rows(db_url) == 0
    with psycopg.connect(db_url) as conn:
        status = conn.execute("SELECT status FROM ttft_reconcile.runs ORDER BY id DESC LIMIT 1").fetchone()
    assert status == ("failed",)
    monkeypatch.undo()
    assert job.backfill(_settings(db_url), SINCE, UNTIL).outcomes["repaired"] == ROWS - 6
    assert _audit_rows(db_url) == set(ids)


def test_a_batch_whose_staged_rows_were_swept_is_decided_again_not_lost(
        db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Another command deletes a live backfill's staged rows (as if they were stale) between the
    decision and the write: nothing of that batch is written, it is decided again and every row
    is repaired, none counted `changed`."""
    ids = _seed(db_url)

    def sweep(n: int) -> None:
        if n == 2:
            with psycopg.connect(db_url) as conn:
                conn.execute("DELETE FROM ttft_reconcile.batch_stage")

    _before_write(monkeypatch, sweep)
    done = job.backfill(_settings(db_url), SINCE, UNTIL)
    assert done.outcomes["repaired"] == ROWS and not done.outcomes.get("changed")
    assert _audit_rows(db_url) == set(ids)
    assert _staged_rows(db_url) == 0
    assert "were swept as stale before it was written; deciding it again" in caplog.text
    with psycopg.connect(db_url) as conn:
        assert all(cst_of(conn, rid) is not None for rid in ids)


def test_a_throttled_backfill_decides_in_turn(db_url: str, calls: list[tuple[str, str, int]]) -> None:
    _seed(db_url)
    done = job.backfill(_settings(db_url, max_rows_per_second=1000), SINCE, UNTIL)
    assert done.outcomes["repaired"] == ROWS
    assert {c[1] for c in calls} == {"MainThread"}
