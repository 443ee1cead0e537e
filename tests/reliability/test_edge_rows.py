"""Odd rows and traces: each gets its documented outcome, and nothing is written wrongly.

Every case seeds one SpendLogs row (and its traces); the job runs once over all of them. A
case expecting `repaired` names the exact value written; every other case must leave its row
and the audit table untouched. The counts per outcome must match the cases exactly.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from tests.factories import BASE, SpendRow, broken_stream, insert_spend, insert_trace, ms
from tests.reliability.dataset import audit_agrees
from ttft_reconcile import job
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.settings import JobSettings

SINCE = datetime(2026, 3, 10, tzinfo=timezone.utc)
UNTIL = datetime(2026, 3, 11, tzinfo=timezone.utc)
Trace = dict[str, Any]


@dataclass
class Case:
    name: str
    row: SpendRow
    traces: list[Trace] = field(default_factory=list)
    outcome: str = "repaired"
    written: datetime | None = None  # the exact new value when repaired


def _id() -> str:
    return str(uuid.uuid4())


def _cases() -> list[Case]:
    cases: list[Case] = []
    t = BASE

    def at(seconds: int) -> datetime:
        return t + timedelta(seconds=seconds)

    def simple(name: str, seconds: int, first: datetime | None, expect: str, *, total_ms: float = 2000,
               written: datetime | None = None, **trace: Any) -> None:
        row = broken_stream(at(seconds), total_ms=total_ms)
        spec = {"request_start": row.start, "first_chunk": first, **trace}
        cases.append(Case(name, row, [{"litellm_call_id": row.request_id, **spec}], expect, written))

    # offsets
    simple("first chunk before startTime", 1, at(1) - ms(5000), "out_of_bounds")
    simple("first chunk 70 years late", 2, datetime(2096, 1, 1), "out_of_bounds")
    simple("first chunk in 1970", 3, datetime(1970, 1, 1), "out_of_bounds")
    simple("first chunk exactly at startTime", 4, at(4), "repaired", written=at(4))
    simple("first chunk 0.4 ms after endTime rounds onto endTime", 5, at(5) + ms(2000.4), "confirmed")
    row = broken_stream(at(6))
    row.end, row.cst = row.start - ms(500), row.start - ms(500)  # endTime before startTime
    cases.append(Case("negative duration row", row, [{"litellm_call_id": row.request_id,
                                                     "request_start": row.start, "first_chunk": row.start}],
                      "out_of_bounds"))
    # clocks and zones
    simple("capture host clock 1 s ahead, still inside", 7, at(7) + ms(1900), "repaired", written=at(7) + ms(1900),
           request_start=at(7) + ms(1000))
    simple("capture clock skewed past endTime", 8, at(8) + ms(2000) + timedelta(seconds=3), "out_of_bounds")
    local = at(9) + ms(300)
    simple("naive local time (UTC+05:30) stored as UTC", 9, local + timedelta(hours=5, minutes=30), "out_of_bounds")
    kolkata = timezone(timedelta(hours=5, minutes=30))
    simple("aware instant in +05:30 converts exactly", 10, (at(10) + ms(300.2)).replace(tzinfo=timezone.utc)
           .astimezone(kolkata), "repaired", written=at(10) + ms(300))
    st_johns = timezone(-timedelta(hours=3, minutes=30))
    simple("aware instant in -03:30 converts exactly", 11, (at(11) + ms(1234.5)).replace(tzinfo=timezone.utc)
           .astimezone(st_johns), "repaired", written=at(11) + ms(1235))
    # trace shapes
    simple("truncated trace: instants stay exact", 12, at(12) + ms(250), "repaired", written=at(12) + ms(250),
           chunk_count=5000)
    simple("no chunks at all (client went away)", 13, None, "no_first_token", outcome="client_disconnected",
           chunk_count=0)
    simple("no chunks, upstream error", 14, None, "no_first_token", outcome="upstream_error", chunk_count=0)
    # several streams for one call
    row = broken_stream(at(15), total_ms=5000)
    cases.append(Case("retry: failed attempt, then a completed one", row, [
        {"litellm_call_id": row.request_id, "stream_seq": 0, "outcome": "upstream_error",
         "request_start": row.start, "first_chunk": row.start + ms(100)},
        {"litellm_call_id": row.request_id, "stream_seq": 1, "request_start": row.start,
         "first_chunk": row.start + ms(1500)}], "repaired", row.start + ms(1500)))
    row = broken_stream(at(16), total_ms=5000)
    cases.append(Case("agentic rounds: the first completed stream", row, [
        {"litellm_call_id": row.request_id, "stream_seq": 1, "request_start": row.start,
         "first_chunk": row.start + ms(3000)},
        {"litellm_call_id": row.request_id, "stream_seq": 0, "request_start": row.start,
         "first_chunk": row.start + ms(400)}], "repaired", row.start + ms(400)))
    row = broken_stream(at(17), total_ms=5000)
    cases.append(Case("every attempt failed: the lowest stream_seq", row, [
        {"litellm_call_id": row.request_id, "stream_seq": 2, "outcome": "cancelled", "request_start": row.start,
         "first_chunk": row.start + ms(2000)},
        {"litellm_call_id": row.request_id, "stream_seq": 1, "outcome": "upstream_error",
         "request_start": row.start, "first_chunk": None, "chunk_count": 0}], "no_first_token"))
    # ids
    call = _id()
    row = broken_stream(at(18), request_id=call)
    cases.append(Case("exact id matches", row, [{"litellm_call_id": call, "request_start": row.start,
                                                 "first_chunk": row.start + ms(200)}],
                      "repaired", row.start + ms(200)))
    cases.append(Case("upper-case look-alike of a traced id", broken_stream(at(19), request_id=call.upper()),
                      [], "no_trace"))
    cases.append(Case("look-alike with a trailing space", broken_stream(at(20), request_id=call + " "),
                      [], "no_trace"))
    cases.append(Case("empty request id; traces with an empty call id and an empty response id",
                      broken_stream(at(21), request_id=""),
                      [{"litellm_call_id": "", "request_start": at(21), "first_chunk": at(21) + ms(100)},
                       {"litellm_call_id": _id(), "response_id": "", "request_start": at(21),
                        "first_chunk": at(21) + ms(300)}], "no_trace"))
    cases.append(Case("empty litellm_call_id column", broken_stream(at(25), litellm_call_id=""), [], "no_trace"))
    row = broken_stream(at(22), request_id=f"msg_{uuid.uuid4().hex[:20]}")
    cases.append(Case("two calls expose the same response id", row, [
        {"litellm_call_id": _id(), "response_id": row.request_id, "request_start": row.start,
         "first_chunk": row.start + ms(100)},
        {"litellm_call_id": _id(), "response_id": row.request_id, "request_start": row.start,
         "first_chunk": row.start + ms(900)}], "ambiguous"))
    row = broken_stream(at(24), request_id=f"msg_{uuid.uuid4().hex[:20]}")
    row.cst = None
    cases.append(Case("NULL completionStartTime, joined by response id", row, [
        {"litellm_call_id": _id(), "response_id": row.request_id, "request_start": row.start,
         "first_chunk": row.start + ms(700)}], "repaired", row.start + ms(700)))
    return cases


def _seed(url: str, cases: list[Case]) -> None:
    with psycopg.connect(url) as conn:
        insert_spend(conn, [c.row for c in cases])
        for case in cases:
            for trace in case.traces:
                spec = dict(trace)
                insert_trace(conn, spec.pop("litellm_call_id"), **spec)


def _settings(url: str) -> JobSettings:
    return JobSettings(database=parse_database_url(url), batch_size=7)


def _state(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with psycopg.connect(url) as conn:
        values: dict[str, Any] = dict(
            conn.execute('SELECT request_id, "completionStartTime" FROM "LiteLLM_SpendLogs"').fetchall())
        audit: dict[str, Any] = dict(
            conn.execute("SELECT request_id, new_completion_start_time FROM ttft_reconcile.corrections").fetchall())
        assert audit_agrees(conn) == []
    return values, audit


@pytest.mark.parametrize("server_zone", ["UTC", "Asia/Kolkata", "America/St_Johns"])
def test_each_odd_case_gets_its_outcome_and_nothing_is_written_wrongly(db_url: str, server_zone: str) -> None:
    cases = _cases()
    _seed(db_url, cases)
    with psycopg.connect(db_url, autocommit=True) as conn:  # the job's sessions inherit the zone
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None
        conn.execute(f"ALTER DATABASE \"{name[0]}\" SET timezone = '{server_zone}'")
    summary = job.backfill(_settings(db_url), SINCE, UNTIL)
    values, audit = _state(db_url)
    for case in cases:
        if case.outcome == "repaired":
            assert values[case.row.request_id] == case.written, case.name
            assert audit[case.row.request_id] == case.written, case.name
        else:
            assert values[case.row.request_id] == case.row.cst, case.name
            assert case.row.request_id not in audit, case.name
    expected = Counter(c.outcome for c in cases)
    assert {k: v for k, v in summary.outcomes.items() if v} == dict(expected)
    again = job.backfill(_settings(db_url), SINCE, UNTIL, restart=True)
    assert again.outcomes["repaired"] == 0 and _state(db_url) == (values, audit)


def test_rows_deleted_or_changed_between_read_and_write(db_url: str) -> None:
    """LiteLLM's retention and another writer act after the job read the batch, before it writes.

    The other transaction holds its row locks, so the job's statement reads the old values and then
    waits at its UPDATE; once the job's backend is seen waiting on a lock, the other side commits
    and Postgres re-checks the guard on the new row versions.
    """
    rows = [broken_stream(BASE + timedelta(seconds=i)) for i in range(6)]
    with psycopg.connect(db_url) as conn:
        insert_spend(conn, rows)
        for row in rows:
            insert_trace(conn, row.request_id, request_start=row.start, first_chunk=row.start + ms(100))
    deleted, changed, touched = rows[1], rows[2], rows[3]
    other = changed.start + ms(777)
    racer = psycopg.connect(db_url)
    racer.execute('DELETE FROM "LiteLLM_SpendLogs" WHERE request_id = %s', (deleted.request_id,))
    racer.execute('UPDATE "LiteLLM_SpendLogs" SET "completionStartTime" = %s WHERE request_id = %s',
                  (other, changed.request_id))
    racer.execute('UPDATE "LiteLLM_SpendLogs" SET spend = spend + 1 WHERE request_id = %s', (touched.request_id,))
    waited: list[bool] = []

    def commit_once_the_job_waits() -> None:
        with psycopg.connect(db_url, autocommit=True) as watcher:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                blocked = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND application_name LIKE 'ttft_reconcile%'").fetchone()
                if blocked and blocked[0]:
                    waited.append(True)
                    break
                time.sleep(0.05)
        racer.commit()
        racer.close()

    thread = threading.Thread(target=commit_once_the_job_waits)
    thread.start()
    try:
        summary = job.backfill(_settings(db_url), SINCE, UNTIL)
    finally:
        thread.join()
    assert waited == [True]
    # the batch writes each row at the address it read it from: a row any other writer changed
    # in the meantime (here its completionStartTime, or only its spend) is left alone
    assert summary.outcomes["changed"] == 3 and summary.outcomes["repaired"] == 3
    values, audit = _state(db_url)
    assert deleted.request_id not in values and deleted.request_id not in audit
    assert values[changed.request_id] == other and changed.request_id not in audit
    assert values[touched.request_id] == touched.end and touched.request_id not in audit
    # ... until the next run reads it again: still a candidate, and now repaired
    again = job.backfill(_settings(db_url), SINCE, UNTIL, restart=True)
    assert again.candidates == again.outcomes["repaired"] == 1  # the others are no longer candidates
    values, audit = _state(db_url)
    assert values[touched.request_id] == touched.start + ms(100) == audit[touched.request_id]
    assert values[changed.request_id] == other and changed.request_id not in audit


def test_a_rollup_refresh_that_fails_is_done_by_the_next_command(db_url: str) -> None:
    """The batches committed, then the ttft_daily refresh failed (here: another session holds the
    table past --lock-timeout). The days stay marked, so re-issuing the finished backfill (which has
    no slice left) still rebuilds them."""
    from ttft_reconcile.db import SessionLimits
    from ttft_reconcile.errors import ReconcileError

    rows = [broken_stream(BASE + timedelta(hours=i)) for i in range(4)]
    with psycopg.connect(db_url) as conn:
        insert_spend(conn, rows)
        for row in rows:
            insert_trace(conn, row.request_id, request_start=row.start, first_chunk=row.start + ms(100))
    impatient = JobSettings(database=parse_database_url(db_url),
                            limits=SessionLimits(lock_timeout=timedelta(seconds=1)))
    with psycopg.connect(db_url) as blocker:
        blocker.execute("LOCK TABLE ttft_reconcile.ttft_daily IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(ReconcileError, match="lock"):
            job.backfill(impatient, SINCE, UNTIL)
        blocker.rollback()
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.corrections").fetchone() == (4,)
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.ttft_daily").fetchone() == (0,)
        assert conn.execute("SELECT array_agg(day) FROM ttft_reconcile.rollup_pending").fetchone() == (
            [BASE.date()],)
    again = job.backfill(impatient, SINCE, UNTIL)
    assert again.candidates == 0 and "nothing to do" in again.message
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT sum(n_reconciled) FROM ttft_reconcile.ttft_daily").fetchone() == (4,)
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.rollup_pending").fetchone() == (0,)
