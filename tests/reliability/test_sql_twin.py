"""The job decides set-based in SQL (batch_sql.py); classify.py is the readable reference that
`explain` uses. On generated batches in a real database both must reach the same outcome, new
value, chosen stream and evidence for every row."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.reliability.test_properties import CANDIDATE_COLUMNS, TRACE_COLUMNS, batches
from ttft_reconcile import batch_sql
from ttft_reconcile.classify import classify_batch
from ttft_reconcile.db import inspect_spend_logs, make_engine
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.policies import POLICIES

SINCE, UNTIL = datetime(2026, 3, 10), datetime(2026, 3, 11)


def _insert(conn: psycopg.Connection[Any], candidates: list[dict[str, Any]], found: list[dict[str, Any]]) -> None:
    conn.execute('TRUNCATE "LiteLLM_SpendLogs", ttft_reconcile.stream_traces, ttft_reconcile.corrections,'
                 " ttft_reconcile.backfill_slices, ttft_reconcile.backfills, ttft_reconcile.runs CASCADE")
    for row in candidates:
        conn.execute(
            'INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, "startTime", "endTime",'
            ' "completionStartTime", api_base, model_group, custom_llm_provider, litellm_call_id)'
            " VALUES (%s, %s, 'k', %s, %s, %s, %s, %s, %s, %s)",
            (row["request_id"], row["call_type"], row["start_time"], row["end_time"], row["completion_start_time"],
             row["api_base"], row["model_group"], row["provider"], row["litellm_call_id"]))
    for trace in found:
        conn.execute(f"INSERT INTO ttft_reconcile.stream_traces ({', '.join(TRACE_COLUMNS)})"
                     f" VALUES ({', '.join(['%s'] * len(TRACE_COLUMNS))})", [trace[c] for c in TRACE_COLUMNS])


def _loaded(candidates: pd.DataFrame, found: list[dict[str, Any]]) -> pd.DataFrame:
    """The traces the job reaches: joined by call id (either column) or response id, within a day."""
    call_ids = set(candidates["request_id"]) | set(candidates["litellm_call_id"].dropna())
    response_ids = set(candidates["request_id"])
    lo = candidates["start_time"].min().to_pydatetime().replace(tzinfo=timezone.utc) - timedelta(days=1)
    hi = candidates["end_time"].max().to_pydatetime().replace(tzinfo=timezone.utc) + timedelta(days=1)
    kept = [t for t in found if lo <= t["request_start_at"] < hi
            and (t["litellm_call_id"] in call_ids or t["response_id"] in response_ids)]
    return pd.DataFrame([tuple(t[c] for c in TRACE_COLUMNS) for t in kept], columns=list(TRACE_COLUMNS))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches(), policy=st.sampled_from(POLICIES))
def test_sql_and_python_decide_alike(db_url: str, batch: tuple[list[dict[str, Any]], list[dict[str, Any]]],
                                     policy: str) -> None:
    candidates, found = batch
    with psycopg.connect(db_url) as conn:
        _insert(conn, candidates, found)
        conn.commit()
        # read the rows back: the database rounds to timestamp(3) and both sides see the same values
        stored = conn.execute(
            'SELECT request_id, call_type, "startTime", "endTime", "completionStartTime", api_base, model_group,'
            ' custom_llm_provider, litellm_call_id FROM "LiteLLM_SpendLogs" ORDER BY "startTime", request_id'
        ).fetchall()
    frame = pd.DataFrame([tuple(r) for r in stored], columns=list(CANDIDATE_COLUMNS))
    reference = classify_batch(frame, _loaded(frame, found), policy=policy).decisions

    engine = make_engine(parse_database_url(db_url))
    try:
        with engine.connect() as conn:
            shape = inspect_spend_logs(conn, "public")
            rows = conn.execute(text(batch_sql.decide_sql_for_tests(shape, policy)), {
                "since": SINCE, "until": UNTIL, "call_types": list(frame["call_type"].unique()),
                "tolerance_ms": 5.0, "limit": 100, "hold_rolled_back": False,
                **batch_sql.trace_window(SINCE, UNTIL)}).all()
    finally:
        engine.dispose()
    assert [(r.request_id, r.start_time) for r in rows] == [(d.request_id, d.start_time) for d in reference]
    for row, decision in zip(rows, reference, strict=True):
        assert row.outcome == decision.outcome, (decision.reason, row)
        if decision.repair is None:
            continue
        repair = decision.repair
        assert (row.new_cst, row.trace_call_id, row.stream_seq) == (repair.new, repair.litellm_call_id,
                                                                     repair.stream_seq)
        assert row.ttft_ms == repair.ttft_ms
        assert row.evidence == json.loads(json.dumps(repair.evidence))
