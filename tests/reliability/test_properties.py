"""Property-based tests: for any row and traces the outcome is defined, a written value lies in
["startTime", "endTime"], and a re-run is a no-op. classify.py is pure and is tested directly;
a smaller DB-backed property runs the real job on few examples."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.dataset import audit_agrees, correction_rows, spend_rows
from ttft_reconcile import job
from ttft_reconcile import outcomes as oc
from ttft_reconcile.classify import classify_batch
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.policies import POLICIES
from ttft_reconcile.settings import JobSettings

CANDIDATE_COLUMNS = ("request_id", "call_type", "start_time", "end_time", "completion_start_time", "api_base",
                     "model_group", "provider", "litellm_call_id")
TRACE_COLUMNS = ("litellm_call_id", "stream_seq", "response_id", "request_start_at", "api_call_start_at",
                 "first_chunk_at", "first_event_at", "first_output_at", "first_visible_at", "last_chunk_at",
                 "chunk_count", "outcome")
BASE = datetime(2026, 3, 10, 12)
IDS = ["a", "b", "msg_a", "chatcmpl-a", "", "A"]
ZONES = [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
CALL_TYPES = ["anthropic_messages", "aresponses", "pass_through_endpoint"]
BASES = [None, "http://127.0.0.1/v1/messages", "https://bedrock-runtime.x.amazonaws.com/model/m/invoke",
         "https://x-aiplatform.googleapis.com/v1/m:rawPredict"]

micros = st.integers(min_value=-10_000_000, max_value=70_000_000)


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    start = BASE + timedelta(milliseconds=draw(st.integers(0, 10_000)))
    end = start + timedelta(milliseconds=draw(st.integers(-50, 60_000)))
    cst = draw(st.sampled_from([None, end, end - timedelta(milliseconds=1), end + timedelta(milliseconds=3)]))
    return {
        "request_id": draw(st.sampled_from(IDS)), "call_type": draw(st.sampled_from(CALL_TYPES)),
        "start_time": start, "end_time": end, "completion_start_time": cst,
        "api_base": draw(st.sampled_from(BASES)), "model_group": "g", "provider": "anthropic",
        "litellm_call_id": draw(st.sampled_from([None, *IDS])),
    }


@st.composite
def traces(draw: st.DrawFn, start: datetime) -> dict[str, Any]:
    zone = draw(st.sampled_from(ZONES))

    def instant() -> datetime | None:
        offset = draw(st.none() | micros)
        return None if offset is None else (start + timedelta(microseconds=offset)).replace(
            tzinfo=timezone.utc).astimezone(zone)

    first = instant()
    return {
        "litellm_call_id": draw(st.sampled_from(IDS)), "stream_seq": draw(st.integers(0, 3)),
        "response_id": draw(st.sampled_from([None, *IDS])),
        "request_start_at": (start + timedelta(milliseconds=draw(st.sampled_from([0, 5])))).replace(
            tzinfo=timezone.utc),
        "api_call_start_at": None,
        "first_chunk_at": first, "first_event_at": instant(), "first_output_at": instant(),
        "first_visible_at": instant(), "last_chunk_at": first, "chunk_count": 0 if first is None else 3,
        "outcome": draw(st.sampled_from(["completed", "client_disconnected", "upstream_error", "cancelled"])),
    }


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    candidates = draw(st.lists(rows(), min_size=1, max_size=6, unique_by=lambda r: r["request_id"]))
    found = draw(st.lists(traces(candidates[0]["start_time"]), max_size=6,
                          unique_by=lambda t: (t["litellm_call_id"], t["stream_seq"], t["request_start_at"])))
    return candidates, found


def _frames(candidates: list[dict[str, Any]], found: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (pd.DataFrame([tuple(r[c] for c in CANDIDATE_COLUMNS) for r in candidates], columns=list(CANDIDATE_COLUMNS)),
            pd.DataFrame([tuple(t[c] for c in TRACE_COLUMNS) for t in found], columns=list(TRACE_COLUMNS)))


@settings(max_examples=150, deadline=None)
@given(batch=batches(), policy=st.sampled_from(POLICIES), reverse=st.booleans())
def test_classify_is_total_bounded_idempotent_and_order_free(
    batch: tuple[list[dict[str, Any]], list[dict[str, Any]]], policy: str, reverse: bool
) -> None:
    candidates, found = batch
    frame, trace_frame = _frames(candidates, found)
    decided = classify_batch(frame, trace_frame, policy=policy)
    assert [d.request_id for d in decided.decisions] == [r["request_id"] for r in candidates]
    assert sum(decided.counts().values()) == len(candidates)
    by_id = {r["request_id"]: r for r in candidates}
    for decision in decided.decisions:
        assert decision.outcome in oc.OUTCOMES and decision.outcome != oc.CHANGED
        assert (decision.repair is not None) == (decision.outcome == oc.REPAIRED)
        if decision.repair is not None:
            row = by_id[decision.request_id]
            assert row["start_time"] <= decision.repair.new <= row["end_time"]
            assert decision.repair.new.microsecond % 1000 == 0
            assert decision.repair.old == row["completion_start_time"]
    # the traces' order (SQL gives none) does not change any decision
    shuffled = classify_batch(frame, trace_frame.iloc[::-1 if reverse else 1], policy=policy)
    assert [(d.outcome, d.repair and d.repair.new) for d in shuffled.decisions] == \
        [(d.outcome, d.repair and d.repair.new) for d in decided.decisions]
    # re-run after the writes: nothing left to repair, with or without knowing the rows are ours
    written = {r.request_id: r.new for r in decided.repairs}
    after = [{**r, "completion_start_time": written.get(r["request_id"], r["completion_start_time"])}
             for r in candidates]
    frame_after, _ = _frames(after, found)
    for ours in ({}, {(r.request_id, r.start_time): r.new for r in decided.repairs}):
        again = classify_batch(frame_after, trace_frame, policy=policy, already_ours=ours)
        assert again.repairs == [] and again.counts()[oc.CHANGED] == 0
    # a correction overwritten since is someone else's value now: left alone, counted changed
    if decided.repairs:
        first = decided.repairs[0]
        overwritten = classify_batch(frame, trace_frame, policy=policy,
                                     already_ours={(first.request_id, first.start_time): first.new})
        assert overwritten.counts()[oc.CHANGED] == 1
        assert first.request_id not in {r.request_id for r in overwritten.repairs}


def _reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute('TRUNCATE "LiteLLM_SpendLogs", ttft_reconcile.stream_traces, ttft_reconcile.corrections,'
                 " ttft_reconcile.backfill_slices, ttft_reconcile.backfills, ttft_reconcile.runs CASCADE")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches(), policy=st.sampled_from(POLICIES))
def test_job_writes_only_bounded_values_and_a_rerun_is_a_noop(
    db_url: str, batch: tuple[list[dict[str, Any]], list[dict[str, Any]]], policy: str
) -> None:
    candidates, found = batch
    with psycopg.connect(db_url) as conn:
        _reset(conn)
        for row in candidates:
            conn.execute(
                'INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, "startTime", "endTime",'
                ' "completionStartTime", api_base, model_group, custom_llm_provider, litellm_call_id)'
                " VALUES (%s, %s, 'k', %s, %s, %s, %s, %s, %s, %s)",
                (row["request_id"], row["call_type"], row["start_time"], row["end_time"],
                 row["completion_start_time"], row["api_base"], row["model_group"], row["provider"],
                 row["litellm_call_id"]))
        for trace in found:
            conn.execute(
                f"INSERT INTO ttft_reconcile.stream_traces ({', '.join(TRACE_COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(TRACE_COLUMNS))})", [trace[c] for c in TRACE_COLUMNS])
        conn.commit()
    settings_ = JobSettings(database=parse_database_url(db_url), policy=policy, batch_size=2)
    window = (datetime(2026, 3, 10, tzinfo=timezone.utc), datetime(2026, 3, 11, tzinfo=timezone.utc))
    first = job.backfill(settings_, *window)
    assert sum(first.outcomes.values()) == first.candidates
    with psycopg.connect(db_url) as conn:
        assert audit_agrees(conn) == []  # includes: every written value lies in [startTime, endTime]
        before = spend_rows(conn), correction_rows(conn)
    again = job.backfill(settings_, *window, restart=True)
    assert again.outcomes[oc.REPAIRED] == 0
    with psycopg.connect(db_url) as conn:
        assert (spend_rows(conn), correction_rows(conn)) == before


def test_a_stream_recorded_twice_is_chosen_the_same_whatever_the_sql_order() -> None:
    """The primary key (call, seq, request_start_at) lets one stream be recorded twice."""
    start = BASE
    candidate = {"request_id": "a", "call_type": "anthropic_messages", "start_time": start,
                 "end_time": start + timedelta(seconds=5), "completion_start_time": start + timedelta(seconds=5),
                 "api_base": None, "model_group": "g", "provider": "anthropic", "litellm_call_id": None}

    def recording(late_ms: int, first_s: int) -> dict[str, Any]:
        first = (start + timedelta(seconds=first_s)).replace(tzinfo=timezone.utc)
        return {"litellm_call_id": "a", "stream_seq": 0, "response_id": None,
                "request_start_at": (start + timedelta(milliseconds=late_ms)).replace(tzinfo=timezone.utc),
                "api_call_start_at": None, "first_chunk_at": first, "first_event_at": first,
                "first_output_at": None, "first_visible_at": None, "last_chunk_at": first, "chunk_count": 3,
                "outcome": "completed"}

    frame, found = _frames([candidate], [recording(0, 1), recording(5, 2)])
    chosen = {classify_batch(frame, order, policy="first_chunk").repairs[0].new for order in (found, found[::-1])}
    assert chosen == {start + timedelta(seconds=1)}  # the earliest recording, both ways
