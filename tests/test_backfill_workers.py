"""Backfill slices claimed by several real processes: every row once, nothing lost."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import psycopg

from tests.factories import broken_stream, insert_spend, insert_trace, ms
from ttft_reconcile import job
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.settings import JobSettings


def test_two_worker_processes_share_the_slices(db_url: str) -> None:
    rows = []
    with psycopg.connect(db_url) as conn:
        for day in range(4):
            for i in range(15):
                start = datetime(2026, 3, 1 + day, 1 + i)
                row = broken_stream(start, request_id=str(uuid.uuid4()))
                rows.append(row)
                insert_spend(conn, [row])
                insert_trace(conn, row.request_id, request_start=start, first_chunk=start + ms(250))
    settings = JobSettings(database=parse_database_url(db_url), batch_size=4, slice_size=timedelta(hours=12))
    summary = job.backfill(settings, datetime(2026, 3, 1, tzinfo=timezone.utc),
                           datetime(2026, 3, 5, tzinfo=timezone.utc), workers=2)
    assert summary.outcomes["repaired"] == 60
    assert len(summary.worker_run_ids) == 2
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT request_id) FROM ttft_reconcile.corrections"
                            ).fetchone() == (60, 60)
        slices = conn.execute("SELECT status, count(*), count(DISTINCT worker) FROM ttft_reconcile.backfill_slices"
                              " GROUP BY status").fetchall()
        assert slices[0][0] == "done" and slices[0][1] == 8 and len(slices) == 1
        workers_used = conn.execute("SELECT count(DISTINCT run_id) FROM ttft_reconcile.corrections").fetchone()
        assert workers_used is not None and 1 <= workers_used[0] <= 2
        finished = conn.execute("SELECT finished_at IS NOT NULL FROM ttft_reconcile.backfills").fetchone()
        assert finished == (True,)
    again = job.backfill(settings, datetime(2026, 3, 1, tzinfo=timezone.utc),
                         datetime(2026, 3, 5, tzinfo=timezone.utc), workers=2)
    assert again.candidates == 0
