"""deploy/sql/roles.sql: the job, the capture and the dashboard each can do their work and no more."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from sqlalchemy import text

from tests.publish_data import UTC, connect, spend_log, trace
from ttft_reconcile import job
from ttft_reconcile.capture.writer import TraceRow, insert_traces, schema_problem
from ttft_reconcile.dashboard import refresh_ttft_daily, window_quantiles
from ttft_reconcile.db import make_engine
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.migrate import upgrade
from ttft_reconcile.settings import JobSettings

ROLES_SQL = Path(__file__).resolve().parent.parent / "deploy" / "sql" / "roles.sql"
SINCE = datetime(2026, 11, 10, tzinfo=UTC)
UNTIL = SINCE + timedelta(days=1)


def _as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


@pytest.fixture
def logins(db_url: str) -> Iterator[dict[str, str]]:
    """roles.sql applied twice (idempotent), and one login role per group role."""
    suffix = uuid.uuid4().hex[:8]
    names = {kind: f"ttft_test_{kind}_{suffix}" for kind in ("job", "capture", "dashboard")}
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(ROLES_SQL.read_text())
        conn.execute(ROLES_SQL.read_text())
        for kind, name in names.items():
            conn.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE ttft_reconcile_{kind}')
            # As roles.sql advises: act as the group role, so what the job creates the group owns.
            conn.execute(f'ALTER ROLE "{name}" SET role = \'ttft_reconcile_{kind}\'')
    try:
        yield {kind: _as_user(db_url, name) for kind, name in names.items()}
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
                conn.execute(f'DROP OWNED BY "{name}"')
                conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def _seed(db_url: str) -> None:
    with connect(db_url) as conn:
        spend_log(conn, "call-ok", SINCE + timedelta(hours=2), ttft_ms=None)
        trace(conn, "call-ok", SINCE + timedelta(hours=2), first_chunk_ms=300)


def _denied(url: str, sql: str) -> None:
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(sql)


def test_job_role_runs_the_job_and_the_maintenance(db_url: str, logins: dict[str, str]) -> None:
    _seed(db_url)
    settings = JobSettings(database=parse_database_url(logins["job"]))
    summary = job.backfill(settings, SINCE, UNTIL)
    assert summary.outcomes["repaired"] == 1
    with connect(logins["job"]) as conn:
        assert conn.execute(text(
            "SELECT source FROM ttft_reconcile.spend_logs_ttft(:s, :u)"), {"s": SINCE, "u": UNTIL}).scalar() == \
            "reconciled"
        assert refresh_ttft_daily(conn, [SINCE.date()]) == 1
        conn.execute(text("SELECT ttft_reconcile.ensure_trace_partitions(DATE '2026-10-01', DATE '2026-10-02')"))
    with connect(logins["job"]) as conn:
        conn.execute(text("DROP TABLE ttft_reconcile.stream_traces_p20261001"))
    rollback = job.rollback(settings, run_id=summary.run_id)
    assert rollback.outcomes["reverted"] == 1
    with psycopg.connect(db_url) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'stream_traces_p20261002'").fetchone()
    assert owner == ("ttft_reconcile_job",)


def test_job_role_can_run_migrate(db_url: str, logins: dict[str, str]) -> None:
    engine = make_engine(parse_database_url(logins["job"]))
    try:
        state = upgrade(engine)
    finally:
        engine.dispose()
    assert state.up_to_date


def test_job_role_cannot_touch_other_columns_or_ddl(db_url: str, logins: dict[str, str]) -> None:
    _seed(db_url)
    url = logins["job"]
    _denied(url, 'UPDATE "LiteLLM_SpendLogs" SET spend = 0')
    _denied(url, 'UPDATE "LiteLLM_SpendLogs" SET "endTime" = "startTime"')
    _denied(url, 'DELETE FROM "LiteLLM_SpendLogs"')
    _denied(url, 'INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, "startTime", "endTime")'
                 " VALUES ('x', 'x', now(), now())")
    _denied(url, 'TRUNCATE "LiteLLM_SpendLogs"')
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute('CREATE INDEX ttft_nope ON "LiteLLM_SpendLogs" (model)')
    _denied(url, 'SELECT * FROM "LiteLLM_VerificationToken"')


def test_capture_role_appends_traces_only(db_url: str, logins: dict[str, str]) -> None:
    url = logins["capture"]
    now = datetime.now(timezone.utc)
    row = TraceRow(
        litellm_call_id="cap-1", stream_seq=0, response_id="msg_1", route="/v1/messages",
        call_type="anthropic_messages", provider="anthropic", model="claude", litellm_version="1.82.3",
        capture_version="0.1.0", request_start_at=now, api_call_start_at=now, first_chunk_at=now,
        first_event_at=now, first_output_at=now, first_visible_at=now, last_chunk_at=now, chunk_count=1,
        event_count=1, bytes_total=10, outcome="completed", stamped_by=None, chunk_offsets_us=[0],
        event_offsets_us=[0], event_kinds=["visible"], truncated=False,
    )
    with psycopg.connect(url) as conn:
        assert schema_problem(conn) is None
        assert insert_traces(conn, [row]) == 1
        assert insert_traces(conn, [row]) == 0  # ON CONFLICT DO NOTHING needs no more than INSERT
    with connect(db_url) as conn:
        assert conn.execute(text("SELECT count(*) FROM ttft_reconcile.stream_traces")).scalar() == 1
    _denied(url, "SELECT * FROM ttft_reconcile.stream_traces")
    _denied(url, "DELETE FROM ttft_reconcile.stream_traces")
    _denied(url, "INSERT INTO ttft_reconcile.settings (key, value) VALUES ('x', '1')")
    _denied(url, 'SELECT request_id FROM "LiteLLM_SpendLogs"')
    _denied(url, 'UPDATE "LiteLLM_SpendLogs" SET "completionStartTime" = NULL')


def test_dashboard_role_reads_the_function_but_no_json_column(db_url: str, logins: dict[str, str]) -> None:
    _seed(db_url)
    url = logins["dashboard"]
    with connect(url) as conn:
        rows = conn.execute(text("SELECT source FROM ttft_reconcile.spend_logs_ttft(:s, :u)"),
                            {"s": SINCE, "u": UNTIL}).all()
        assert [r.source for r in rows] == ["unresolved"]
        assert window_quantiles(conn, SINCE, UNTIL) == {}
        conn.execute(text("SELECT * FROM ttft_reconcile.ttft_daily"))
    _denied(url, 'SELECT metadata FROM "LiteLLM_SpendLogs"')
    _denied(url, 'SELECT * FROM "LiteLLM_SpendLogs"')
    _denied(url, 'SELECT api_key FROM "LiteLLM_SpendLogs"')
    _denied(url, "DELETE FROM ttft_reconcile.ttft_daily")
    _denied(url, "SELECT * FROM ttft_reconcile.stream_traces")
