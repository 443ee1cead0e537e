"""Rows the way LiteLLM, the capture and the job write them, for the publish-area tests.

SpendLogs instants are naive UTC `timestamp(3)`; fallback rows carry completionStartTime =
endTime (or 1 ms below, 1.82.3's floor-vs-round). Corrections and runs are written directly:
these tests do not wait for the job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from ttft_reconcile.db import make_engine
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.policies import POLICY_COLUMNS
from ttft_reconcile.timeparse import round_to_millisecond

UTC = timezone.utc
MS = timedelta(milliseconds=1)


def engine_for(url: str) -> Engine:
    return make_engine(parse_database_url(url))


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """One committed transaction on a fresh engine."""
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def has_call_id_column(conn: Connection) -> bool:
    return bool(
        conn.execute(
            text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = 'public'"
                " AND table_name = 'LiteLLM_SpendLogs' AND column_name = 'litellm_call_id'"
            )
        ).scalar()
    )


def spend_log(
    conn: Connection,
    request_id: str,
    start: datetime,
    *,
    ttft_ms: float | None,
    total_ms: float = 2000.0,
    call_type: str = "anthropic_messages",
    model_group: str = "claude-sonnet",
    provider: str = "anthropic",
    litellm_call_id: str | None = None,
    fallback_floor: bool = False,
    api_base: str = "http://127.0.0.1:18765/v1/messages",
) -> dict[str, Any]:
    """Insert one SpendLogs row. ttft_ms=None writes LiteLLM's fallback (cst = endTime)."""
    start_naive = start.astimezone(UTC).replace(tzinfo=None) if start.tzinfo else start
    end = start_naive + timedelta(milliseconds=total_ms)
    if ttft_ms is None:
        cst: datetime | None = end - MS if fallback_floor else end
    else:
        cst = start_naive + timedelta(milliseconds=ttft_ms)
    # Stored as timestamp(3): keep the rounded values so later guards compare equal.
    row: dict[str, Any] = {
        "request_id": request_id,
        "call_type": call_type,
        "start": round_to_millisecond(start_naive),
        "end": round_to_millisecond(end),
        "cst": None if cst is None else round_to_millisecond(cst),
        "model": f"{provider}/{model_group}",
        "model_group": model_group,
        "provider": provider,
        "api_base": api_base,
        "metadata": json.dumps({"user_api_key": "sk-hash", "status": "success"}),
    }
    columns = (
        'request_id, call_type, "startTime", "endTime", "completionStartTime", model, model_group,'
        " custom_llm_provider, api_base, metadata"
    )
    values = ":request_id, :call_type, :start, :end, :cst, :model, :model_group, :provider, :api_base," \
        " CAST(:metadata AS jsonb)"
    if litellm_call_id is not None and has_call_id_column(conn):
        columns += ", litellm_call_id"
        values += ", :litellm_call_id"
        row["litellm_call_id"] = litellm_call_id
    conn.execute(text(f'INSERT INTO public."LiteLLM_SpendLogs" ({columns}) VALUES ({values})'), row)
    return row


def run_row(conn: Connection, mode: str = "run", policy: str = "first_chunk") -> int:
    return int(
        conn.execute(
            text(
                "INSERT INTO ttft_reconcile.runs (mode, policy, status, finished_at)"
                " VALUES (:mode, :policy, 'succeeded', now()) RETURNING id"
            ),
            {"mode": mode, "policy": policy},
        ).scalar_one()
    )


def correct(
    conn: Connection,
    row: dict[str, Any],
    run_id: int,
    *,
    ttft_ms: float,
    policy: str = "first_chunk",
    litellm_call_id: str | None = None,
    api_call_offset_ms: float = 200.0,
    apply: bool = True,
) -> int:
    """Write a correction the way the job does: audit row + guarded UPDATE of SpendLogs."""
    new = round_to_millisecond(row["start"] + timedelta(milliseconds=ttft_ms))
    request_start = row["start"] - timedelta(milliseconds=150)
    instants = {name: None for name in POLICY_COLUMNS.values()}
    instants[POLICY_COLUMNS[policy]] = row["start"] + timedelta(milliseconds=ttft_ms)
    correction_id = int(
        conn.execute(
            text(
                "INSERT INTO ttft_reconcile.corrections (request_id, start_time, run_id, policy,"
                " old_completion_start_time, new_completion_start_time, ttft_ms, litellm_call_id, stream_seq,"
                " call_type, model_group, joined_by, streams, trace_outcome, chunk_count, request_start_at,"
                " api_call_start_at, first_chunk_at, first_event_at, first_output_at, first_visible_at)"
                " VALUES (:rid, :start, :run, :policy, :old, :new, :ttft, :cid, 0, :ct, :mg,"
                " ARRAY['request_id=litellm_call_id'], 1, 'completed', 22, :rs, :acs,"
                " :first_chunk_at, :first_event_at, :first_output_at, :first_visible_at)"
                " RETURNING id"
            ),
            {
                "rid": row["request_id"], "start": row["start"], "run": run_id, "policy": policy,
                "old": row["cst"], "new": new, "ttft": ttft_ms, "cid": litellm_call_id or row["request_id"],
                "ct": row["call_type"], "mg": row["model_group"], "rs": request_start,
                "acs": request_start + timedelta(milliseconds=api_call_offset_ms), **instants,
            },
        ).scalar_one()
    )
    if apply:
        conn.execute(
            text(
                'UPDATE public."LiteLLM_SpendLogs" SET "completionStartTime" = :new'
                ' WHERE request_id = :rid AND "startTime" = :start'
                ' AND "completionStartTime" IS NOT DISTINCT FROM :old'
            ),
            {"new": new, "rid": row["request_id"], "start": row["start"], "old": row["cst"]},
        )
    return correction_id


def trace(
    conn: Connection,
    litellm_call_id: str,
    request_start: datetime,
    *,
    stream_seq: int = 0,
    response_id: str | None = None,
    first_chunk_ms: float | None = 300.0,
    outcome: str = "completed",
    call_type: str = "anthropic_messages",
) -> None:
    """Insert one stream_traces row as the capture does (aware UTC instants)."""
    start = request_start if request_start.tzinfo else request_start.replace(tzinfo=UTC)

    def at(offset_ms: float | None) -> datetime | None:
        return None if offset_ms is None else start + timedelta(milliseconds=offset_ms)

    conn.execute(
        text(
            "INSERT INTO ttft_reconcile.stream_traces (litellm_call_id, stream_seq, response_id, route, call_type,"
            " provider, model, litellm_version, capture_version, request_start_at, api_call_start_at,"
            " first_chunk_at, first_event_at, first_output_at, first_visible_at, last_chunk_at, chunk_count,"
            " event_count, bytes_total, outcome, chunk_offsets_us, event_offsets_us, event_kinds)"
            " VALUES (:cid, :seq, :rid, '/v1/messages', :ct, 'anthropic', 'claude-sonnet', '1.82.3', '0.1.0',"
            " :start, :api, :fc, :fe, :fo, :fv, :last, 22, 25, 5400, :outcome, :co, :eo, :ek)"
            " ON CONFLICT DO NOTHING"
        ),
        {
            "cid": litellm_call_id, "seq": stream_seq, "rid": response_id, "ct": call_type, "start": start,
            "api": at(5.0), "fc": at(first_chunk_ms), "fe": at(None if first_chunk_ms is None else first_chunk_ms),
            "fo": at(None if first_chunk_ms is None else first_chunk_ms + 300),
            "fv": at(None if first_chunk_ms is None else first_chunk_ms + 300),
            "last": at(1500.0), "outcome": outcome,
            "co": [0, 1000, 300000], "eo": [0, 1000, 300000, 350000],
            "ek": ["framing", "ping", "framing", "visible"],
        },
    )
