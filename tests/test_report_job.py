"""The real job, then the report: repaired rows become `reconciled`, the rollup follows runs and rollbacks."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.publish_data import UTC, connect, spend_log, trace
from ttft_reconcile import job
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.export import iter_corrections
from ttft_reconcile.report import build_report
from ttft_reconcile.settings import JobSettings

SINCE = datetime(2026, 11, 10, tzinfo=UTC)
UNTIL = SINCE + timedelta(days=1)


def _daily(url: str) -> tuple[int, int, int, float | None]:
    with connect(url) as conn:
        return tuple(conn.execute(text(
            "SELECT n_original, n_reconciled, n_unresolved, p50_ms FROM ttft_reconcile.ttft_daily"
            " WHERE day = :d AND model_group = 'claude-sonnet'"), {"d": date(2026, 11, 10)}).one())


def test_backfill_then_report_then_rollback(old_db_url: str) -> None:
    with connect(old_db_url) as conn:
        for i, first_chunk in enumerate((300, 500, 700)):
            start = SINCE + timedelta(hours=5, seconds=i)
            spend_log(conn, f"call-{i}", start, ttft_ms=None, total_ms=3000)
            trace(conn, f"call-{i}", start, first_chunk_ms=first_chunk)
        spend_log(conn, "orig", SINCE + timedelta(hours=6), ttft_ms=900, total_ms=3000)
        spend_log(conn, "untraced", SINCE + timedelta(hours=7), ttft_ms=None, total_ms=3000)

    settings = JobSettings(database=parse_database_url(old_db_url))
    summary = job.backfill(settings, SINCE, UNTIL)
    assert summary.outcomes["repaired"] == 3 and summary.outcomes["no_trace"] == 1

    with connect(old_db_url) as conn:
        report = build_report(conn, SINCE, UNTIL)
        exported = list(iter_corrections(conn, SINCE, UNTIL))
    (row,) = report.rows
    assert (row.n_original, row.n_reconciled, row.n_unresolved) == (1, 3, 1)
    assert row.after.p50 == pytest.approx(600.0)  # 300, 500, 700, 900
    assert row.before.p50 == pytest.approx(3000.0)  # LiteLLM wrote total latency for the three
    assert sorted(r.ttft_ms for r in exported) == [300.0, 500.0, 700.0]
    assert all(r.ttft_ms_from_request_start is not None for r in exported)
    # The job refreshed the rollup for the day it touched.
    assert _daily(old_db_url) == (1, 3, 1, pytest.approx(600.0))

    job.rollback(settings, run_id=summary.run_id)
    with connect(old_db_url) as conn:
        after_rollback = build_report(conn, SINCE, UNTIL)
    (row,) = after_rollback.rows
    assert (row.n_original, row.n_reconciled, row.n_unresolved) == (1, 0, 4)
    assert _daily(old_db_url) == (1, 0, 4, pytest.approx(900.0))
