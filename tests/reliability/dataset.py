"""A seeded, LiteLLM-shaped data set with every outcome, and the row-by-row comparisons.

SpendLogs instants are naive UTC (timestamp(3)); trace instants are written as aware UTC.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from tests.factories import spend_columns
from ttft_reconcile.timeparse import round_to_millisecond

WINDOW_START = datetime(2026, 3, 10)
WINDOW_DAYS = 3
CALL_ID_COLUMN_SQL = (
    "SELECT 1 FROM information_schema.columns WHERE table_name = 'LiteLLM_SpendLogs'"
    " AND column_name = 'litellm_call_id'"
)


def utc(naive: datetime) -> datetime:
    return naive.replace(tzinfo=timezone.utc)


@dataclass
class Seeded:
    """What was seeded: rows per intended outcome (first_chunk policy)."""

    rows: int
    intended: dict[str, int]


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def seed(conn: psycopg.Connection[Any], n: int, *, seed_value: int, start: datetime = WINDOW_START,
         span: timedelta = timedelta(days=WINDOW_DAYS)) -> Seeded:
    """Insert `n` SpendLogs rows (and their traces) spread over [start, start + span)."""
    rng = random.Random(seed_value)
    new_era = conn.execute(CALL_ID_COLUMN_SQL).fetchone() is not None
    spend: list[dict[str, Any]] = []
    traces: list[tuple[Any, ...]] = []
    intended: dict[str, int] = {}
    kinds = [("repaired", 60), ("confirmed", 8), ("no_trace", 8), ("not_streaming", 5), ("out_of_bounds", 5),
             ("ambiguous", 4), ("no_first_token", 5), ("healthy", 5)]
    names, weights = zip(*kinds, strict=True)
    step = span / n
    for i in range(n):
        kind = rng.choices(names, weights)[0]
        intended[kind] = intended.get(kind, 0) + 1
        t0 = round_to_millisecond(start + step * i + timedelta(milliseconds=rng.randrange(0, 900)))
        total = timedelta(milliseconds=rng.randrange(200, 20_000))
        end = t0 + total
        cst: datetime | None = end if rng.random() < 0.8 else end - timedelta(milliseconds=1)
        if rng.random() < 0.05:
            cst = None
        call = _uid(rng)
        # which id the SpendLogs row carries: the call id, a msg_ id plus the call-id column, a bare msg_ id
        join = rng.choice(["call", "column", "response"] if new_era else ["call", "response"])
        request_id = call if join == "call" else f"msg_{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}"
        call_column = call if join == "column" else None
        response_id = None if join == "call" else request_id
        first = t0 + total * rng.uniform(0.01, 0.9)
        if kind == "not_streaming":
            request_id, call_column = f"chatcmpl-{_uid(rng)}", None
        elif kind == "healthy":
            cst = round_to_millisecond(t0 + total * 0.3)
        elif kind == "confirmed":
            first, cst = end - timedelta(microseconds=rng.randrange(0, 900)), end
        elif kind == "out_of_bounds":
            first = end + timedelta(seconds=rng.choice([3, 3600, 7200]))
        spend.append({"request_id": request_id, "start": t0, "end": end, "cst": cst, "call_id": call_column})
        if kind in ("no_trace", "not_streaming", "healthy"):
            continue
        chunk: datetime | None = None if kind == "no_first_token" else first
        traces.append((call, 0, response_id, utc(t0 - timedelta(milliseconds=3)), utc(chunk) if chunk else None,
                       rng.randrange(1, 400) if chunk else 0, "completed" if chunk else "client_disconnected"))
        if kind == "ambiguous":  # another call's stream exposes this row's id as its response id
            traces.append((_uid(rng), 0, request_id, utc(t0), utc(t0 + total * 0.5), 5, "completed"))
    _insert(conn, spend, traces, new_era)
    return Seeded(rows=n, intended=intended)


def _insert(conn: psycopg.Connection[Any], spend: list[dict[str, Any]], traces: list[tuple[Any, ...]],
            new_era: bool) -> None:
    call_col = ', "litellm_call_id"' if new_era else ""
    call_ph = ", %s" if new_era else ""
    with conn.cursor() as cur:
        cur.executemany(
            'INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens,'
            ' completion_tokens, "startTime", "endTime", "completionStartTime", model, model_group,'
            f' custom_llm_provider, api_base, metadata, request_duration_ms{call_col})'
            " VALUES (%s, 'anthropic_messages', 'hashed-key', 0.001, 120, 100, 20, %s, %s, %s,"
            " 'claude-sonnet-4-5', 'claude-sonnet', 'anthropic', 'http://127.0.0.1:18765/v1/messages',"
            f" '{{\"status\": \"success\"}}', %s{call_ph})",
            [
                (r["request_id"], r["start"], r["end"], r["cst"], int((r["end"] - r["start"]).total_seconds() * 1000),
                 *((r["call_id"],) if new_era else ()))
                for r in spend
            ],
        )
        cur.executemany(
            "INSERT INTO ttft_reconcile.stream_traces (litellm_call_id, stream_seq, response_id, route, call_type,"
            " provider, model, litellm_version, capture_version, request_start_at, api_call_start_at,"
            " first_chunk_at, first_event_at, last_chunk_at, chunk_count, event_count, bytes_total, outcome)"
            " VALUES (%s, %s, %s, '/v1/messages', 'anthropic_messages', 'anthropic', 'claude-sonnet-4-5',"
            " '1.82.3', 'test', %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(c, s, rid, rs, rs, fc, fc, fc, n, n, n * 100, oc) for (c, s, rid, rs, fc, n, oc) in traces],
        )
    conn.commit()


def spend_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Every SpendLogs column but updated_at, as text, ordered by (request_id, startTime)."""
    columns = sorted(spend_columns(conn) - {"updated_at"})
    select = ", ".join(f'"{c}"::text' for c in columns)
    return conn.execute(f'SELECT {select} FROM "LiteLLM_SpendLogs" ORDER BY request_id, "startTime"').fetchall()


def correction_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """The audit rows that matter: (request_id, start_time, old, new, status, policy, ttft_ms), ordered."""
    return conn.execute(
        "SELECT request_id, start_time, old_completion_start_time, new_completion_start_time, status, policy,"
        " ttft_ms FROM ttft_reconcile.corrections ORDER BY request_id, start_time, id"
    ).fetchall()


def audit_agrees(conn: psycopg.Connection[Any]) -> list[str]:
    """Problems where SpendLogs and the audit trail disagree (empty when consistent)."""
    problems = []
    dup = conn.execute(
        "SELECT request_id, count(*) FROM ttft_reconcile.corrections WHERE status = 'applied'"
        " GROUP BY request_id, start_time HAVING count(*) > 1"
    ).fetchall()
    problems += [f"corrected twice: {r[0]} ({r[1]} applied corrections)" for r in dup]
    wrong = conn.execute(
        'SELECT c.request_id FROM ttft_reconcile.corrections c JOIN "LiteLLM_SpendLogs" s'
        ' ON s.request_id = c.request_id AND s."startTime" = c.start_time'
        " WHERE c.status = 'applied' AND s.\"completionStartTime\" IS DISTINCT FROM c.new_completion_start_time"
    ).fetchall()
    problems += [f"applied correction not in SpendLogs: {r[0]}" for r in wrong]
    bounds = conn.execute(
        'SELECT c.request_id FROM ttft_reconcile.corrections c JOIN "LiteLLM_SpendLogs" s'
        ' ON s.request_id = c.request_id AND s."startTime" = c.start_time'
        ' WHERE c.new_completion_start_time < s."startTime" OR c.new_completion_start_time > s."endTime"'
    ).fetchall()
    problems += [f"correction out of bounds: {r[0]}" for r in bounds]
    return problems


def job_backends(conn: psycopg.Connection[Any], database: str) -> list[dict[str, Any]]:
    """Client backends on `database` other than ours, with their transaction state."""
    rows = conn.execute(
        "SELECT pid, state, application_name, xact_start IS NOT NULL, left(query, 60), wait_event_type,"
        " EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.relation = '\"LiteLLM_SpendLogs\"'::regclass"
        "  AND l.mode = 'RowExclusiveLock')"
        " FROM pg_stat_activity a WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        (database,),
    ).fetchall()
    keys = ("pid", "state", "application_name", "in_xact", "query", "wait", "updated_spend_logs")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def mid_transaction(backends: list[dict[str, Any]]) -> bool:
    """A job transaction is open and not committing: killing now must roll it back.

    Call only on a database the job has to itself: every other client backend is the job's.
    """
    return any(
        b["in_xact"] and b["state"] in ("idle in transaction", "active")
        and not str(b["query"]).upper().startswith("COMMIT")
        for b in backends
    )
