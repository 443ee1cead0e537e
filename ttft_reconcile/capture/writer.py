"""All SQL of the capture: the schema check and the batched trace insert (psycopg 3, no DDL)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from datetime import datetime

import psycopg

# Rows go to the parent table: the day partition (or the default one) takes them.
TRACE_COLUMNS: tuple[str, ...] = (
    "litellm_call_id", "stream_seq", "response_id", "route", "call_type", "provider", "model",
    "litellm_version", "capture_version", "request_start_at", "api_call_start_at", "first_chunk_at",
    "first_event_at", "first_output_at", "first_visible_at", "last_chunk_at", "chunk_count",
    "event_count", "bytes_total", "outcome", "stamped_by", "chunk_offsets_us", "event_offsets_us",
    "event_kinds", "truncated",
)
INSERT_SQL = (
    "INSERT INTO ttft_reconcile.stream_traces (" + ", ".join(TRACE_COLUMNS) + ") VALUES ("
    + ", ".join(["%s"] * len(TRACE_COLUMNS)) + ") ON CONFLICT DO NOTHING"
)
_VERSION_SQL = "SELECT version_num FROM ttft_reconcile.alembic_version"
_COLUMNS_SQL = (
    "SELECT column_name FROM information_schema.columns "
    "WHERE table_schema = 'ttft_reconcile' AND table_name = 'stream_traces'"
)
STATEMENT_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One stream_traces row; timestamps are timezone-aware UTC, offsets integer µs."""

    litellm_call_id: str
    stream_seq: int
    response_id: str | None
    route: str | None
    call_type: str | None
    provider: str | None
    model: str | None
    litellm_version: str | None
    capture_version: str
    request_start_at: datetime
    api_call_start_at: datetime | None
    first_chunk_at: datetime | None
    first_event_at: datetime | None
    first_output_at: datetime | None
    first_visible_at: datetime | None
    last_chunk_at: datetime | None
    chunk_count: int
    event_count: int
    bytes_total: int
    outcome: str
    stamped_by: str | None
    chunk_offsets_us: list[int]
    event_offsets_us: list[int]
    event_kinds: list[str]
    truncated: bool


assert tuple(f.name for f in fields(TraceRow)) == TRACE_COLUMNS


def schema_problem(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[str, str] | None:
    """None when our schema is migrated and has every column we write; else (reason, message)."""
    with conn.transaction():
        exists = conn.execute("SELECT to_regclass('ttft_reconcile.alembic_version')").fetchone()
        if exists is None or exists[0] is None:
            return "no_schema", "ttft_reconcile is not migrated on this database (run `ttft-reconcile migrate`)"
        version = conn.execute(_VERSION_SQL).fetchone()
        if version is None:
            return "no_schema", "ttft_reconcile.alembic_version is empty (run `ttft-reconcile migrate`)"
        have = {str(row[0]) for row in conn.execute(_COLUMNS_SQL).fetchall()}
    lacking = [name for name in TRACE_COLUMNS if name not in have]
    if lacking:
        return "schema_mismatch", (
            f"ttft_reconcile.stream_traces (revision {version[0]}) lacks columns {', '.join(lacking)}"
        )
    return None


def insert_traces(conn: psycopg.Connection[tuple[object, ...]], rows: Sequence[TraceRow]) -> int:
    """Insert `rows` in one transaction; returns how many were new (duplicates are skipped)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
        cur.executemany(INSERT_SQL, [astuple(row) for row in rows])
        return max(cur.rowcount, 0)
