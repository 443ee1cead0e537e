"""Rows shaped as LiteLLM writes them, and trace rows per the stream_traces contract.

SpendLogs timestamps are naive UTC at millisecond precision (timestamp(3)); a streaming
fallback row has completionStartTime = endTime (or 1 ms below, the 1.82.3 floor/round quirk).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from ttft_reconcile.timeparse import round_to_millisecond

BASE = datetime(2026, 3, 10, 12, 0, 0)


def ms(n: float) -> timedelta:
    return timedelta(milliseconds=n)


@dataclass
class SpendRow:
    request_id: str
    start: datetime
    end: datetime
    cst: datetime | None
    call_type: str = "anthropic_messages"
    api_base: str = "http://127.0.0.1:18765/v1/messages"
    model: str = "claude-sonnet-4-5-20250929"
    model_group: str = "claude-sonnet"
    provider: str = "anthropic"
    litellm_call_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def broken_stream(start: datetime = BASE, *, total_ms: float = 1500, request_id: str | None = None,
                  one_ms_below: bool = False, **kw: Any) -> SpendRow:
    """A fallback row: completionStartTime = endTime (or 1 ms below)."""
    end = start + ms(total_ms)
    cst = end - ms(1) if one_ms_below else end
    return SpendRow(request_id or str(uuid.uuid4()), start, end, cst, **kw)


def spend_columns(conn: psycopg.Connection[Any], schema: str = "public") -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
        " AND table_name = 'LiteLLM_SpendLogs'",
        (schema,),
    ).fetchall()
    return {r[0] for r in rows}


def insert_spend(conn: psycopg.Connection[Any], rows: list[SpendRow], schema: str = "public") -> None:
    has_call_id = "litellm_call_id" in spend_columns(conn, schema)
    for row in rows:
        values: dict[str, Any] = {
            "request_id": row.request_id,
            "call_type": row.call_type,
            "api_key": "hashed-key",
            "spend": 0.001,
            "total_tokens": 120,
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "startTime": row.start,
            "endTime": row.end,
            "completionStartTime": row.cst,
            "model": row.model,
            "model_group": row.model_group,
            "custom_llm_provider": row.provider,
            "api_base": row.api_base,
            "metadata": '{"user_api_key": "hashed-key", "status": "success"}',
            "request_duration_ms": int((row.end - row.start).total_seconds() * 1000),
            **row.extra,
        }
        if has_call_id:
            values["litellm_call_id"] = row.litellm_call_id
        columns = ", ".join(f'"{c}"' for c in values)
        placeholders = ", ".join(["%s"] * len(values))
        conn.execute(
            f'INSERT INTO "{schema}"."LiteLLM_SpendLogs" ({columns}) VALUES ({placeholders})',
            list(values.values()),
        )
    conn.commit()


def utc(naive: datetime) -> datetime:
    return naive.replace(tzinfo=timezone.utc)


def insert_trace(
    conn: psycopg.Connection[Any],
    litellm_call_id: str,
    *,
    request_start: datetime,
    first_chunk: datetime | None,
    first_event: datetime | None = None,
    first_output: datetime | None = None,
    first_visible: datetime | None = None,
    stream_seq: int = 0,
    response_id: str | None = None,
    outcome: str = "completed",
    chunk_count: int = 10,
    api_call_start: datetime | None = None,
) -> None:
    """Instants are naive UTC (converted to timestamptz here) unless already aware."""

    def aware(value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value if value.tzinfo else utc(value)

    conn.execute(
        "INSERT INTO ttft_reconcile.stream_traces (litellm_call_id, stream_seq, response_id, route, call_type,"
        " provider, model, litellm_version, capture_version, request_start_at, api_call_start_at, first_chunk_at,"
        " first_event_at, first_output_at, first_visible_at, last_chunk_at, chunk_count, event_count,"
        " bytes_total, outcome) VALUES (%s, %s, %s, '/v1/messages', 'anthropic_messages', 'anthropic',"
        " 'claude-sonnet-4-5', '1.82.3', 'test', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            litellm_call_id, stream_seq, response_id, aware(request_start),
            aware(api_call_start or request_start), aware(first_chunk), aware(first_event or first_chunk),
            aware(first_output), aware(first_visible), aware(first_chunk), chunk_count, chunk_count,
            chunk_count * 100, outcome,
        ),
    )
    conn.commit()


def snapshot(conn: psycopg.Connection[Any], schema: str = "public") -> list[tuple[Any, ...]]:
    """Every SpendLogs column but updated_at, row by row, ordered."""
    columns = sorted(spend_columns(conn, schema) - {"updated_at"})
    select = ", ".join(f'"{c}"::text' for c in columns)
    return conn.execute(
        f'SELECT {select} FROM "{schema}"."LiteLLM_SpendLogs" ORDER BY request_id, "startTime"'
    ).fetchall()


def cst_of(conn: psycopg.Connection[Any], request_id: str, schema: str = "public") -> datetime | None:
    row = conn.execute(
        f'SELECT "completionStartTime" FROM "{schema}"."LiteLLM_SpendLogs" WHERE request_id = %s', (request_id,)
    ).fetchone()
    assert row is not None
    value: datetime | None = row[0]
    return value


def expected_ms(instant: datetime) -> datetime:
    return round_to_millisecond(instant)
