"""`explain REQUEST_ID`: one SpendLogs row, the traces each join finds (or why none), every
policy's instant, the corrections and their runs, and what the job does or did with the row.

SpendLogs instants are naive UTC; trace instants aware UTC; TTFTs in ms from "startTime".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ttft_reconcile import dashboard_queries as q
from ttft_reconcile import outcomes as oc
from ttft_reconcile.classify import Decision, classify_batch
from ttft_reconcile.db import inspect_spend_logs
from ttft_reconcile.joins import TRACE_JOIN_SLACK_SQL, TRACE_JOIN_SLACK_WORDS
from ttft_reconcile.policies import POLICY_COLUMNS
from ttft_reconcile.timeparse import to_aware_utc

JOIN_CALL_ID = "request_id = stream_traces.litellm_call_id"
JOIN_SPEND_CALL_ID = "SpendLogs.litellm_call_id = stream_traces.litellm_call_id"
JOIN_RESPONSE_ID = "request_id = stream_traces.response_id"
ROLLED_BACK = "rolled_back"  # verdict: repairable, but a rollback undid our correction and `run` respects it


@dataclass(frozen=True)
class SpendLogRow:
    request_id: str
    call_type: str
    start_time: datetime
    end_time: datetime
    completion_start_time: datetime | None
    model: str | None
    model_group: str | None
    provider: str | None
    api_base: str | None
    litellm_call_id: str | None

    @property
    def ttft_ms(self) -> float | None:
        if self.completion_start_time is None:
            return None
        return (self.completion_start_time - self.start_time).total_seconds() * 1000


@dataclass(frozen=True)
class TraceView:
    litellm_call_id: str
    stream_seq: int
    response_id: str | None
    route: str | None
    outcome: str
    request_start_at: datetime
    api_call_start_at: datetime | None
    chunk_count: int
    event_count: int
    truncated: bool
    litellm_version: str | None
    instants: dict[str, datetime | None]


@dataclass(frozen=True)
class JoinAttempt:
    strategy: str
    key: str | None
    traces: tuple[TraceView, ...]
    note: str = ""


@dataclass(frozen=True)
class CorrectionView:
    id: int
    run_id: int
    run_mode: str | None
    run_started_at: datetime | None
    policy: str
    old_completion_start_time: datetime | None
    new_completion_start_time: datetime
    ttft_ms: float
    status: str
    reverted_by_run: int | None
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Explanation:
    request_id: str
    row: SpendLogRow | None
    joins: tuple[JoinAttempt, ...]
    chosen: TraceView | None
    corrections: tuple[CorrectionView, ...]
    verdict: str
    reason: str
    instants_ms: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        def trace(t: TraceView) -> dict[str, Any]:
            return {
                "litellm_call_id": t.litellm_call_id, "stream_seq": t.stream_seq, "response_id": t.response_id,
                "route": t.route, "outcome": t.outcome, "request_start_at": iso(t.request_start_at),
                "api_call_start_at": iso(t.api_call_start_at), "chunk_count": t.chunk_count,
                "event_count": t.event_count, "truncated": t.truncated, "litellm_version": t.litellm_version,
                "instants": {k: iso(v) for k, v in t.instants.items()},
            }

        row = self.row
        return {
            "request_id": self.request_id,
            "verdict": self.verdict,
            "reason": self.reason,
            "row": None if row is None else {
                "call_type": row.call_type, "start_time": iso(row.start_time), "end_time": iso(row.end_time),
                "completion_start_time": iso(row.completion_start_time), "ttft_ms": row.ttft_ms,
                "model": row.model, "model_group": row.model_group, "provider": row.provider,
                "api_base": row.api_base, "litellm_call_id": row.litellm_call_id,
            },
            "joins": [
                {"strategy": j.strategy, "key": j.key, "note": j.note, "traces": [trace(t) for t in j.traces]}
                for j in self.joins
            ],
            "chosen_trace": None if self.chosen is None else trace(self.chosen),
            "ttft_ms_by_policy": self.instants_ms,
            "corrections": [
                {
                    "id": c.id, "run_id": c.run_id, "run_mode": c.run_mode, "run_started_at": iso(c.run_started_at),
                    "policy": c.policy, "old": iso(c.old_completion_start_time),
                    "new": iso(c.new_completion_start_time), "ttft_ms": c.ttft_ms, "status": c.status,
                    "reverted_by_run": c.reverted_by_run, "evidence": c.evidence,
                }
                for c in self.corrections
            ],
        }


def _trace(r: Any) -> TraceView:
    return TraceView(
        litellm_call_id=r.litellm_call_id, stream_seq=r.stream_seq, response_id=r.response_id, route=r.route,
        outcome=r.outcome, request_start_at=r.request_start_at, api_call_start_at=r.api_call_start_at,
        chunk_count=r.chunk_count, event_count=r.event_count, truncated=r.truncated,
        litellm_version=r.litellm_version,
        instants={policy: getattr(r, column) for policy, column in POLICY_COLUMNS.items()},
    )


def _traces(conn: Connection, sql: str, key: str, row: SpendLogRow) -> tuple[TraceView, ...]:
    """Traces under one strategy, in the job's window around the row (see joins.TRACE_JOIN_SLACK)."""
    params = {"key": key, "start": to_aware_utc(row.start_time),
              "slack": TRACE_JOIN_SLACK_SQL}
    return tuple(_trace(r) for r in conn.execute(text(sql), params).all())


def find_joins(conn: Connection, row: SpendLogRow, has_call_id_column: bool) -> tuple[JoinAttempt, ...]:
    """Run the three join strategies for one row, in the job's order."""
    joins = [JoinAttempt(JOIN_CALL_ID, row.request_id,
                         _traces(conn, q.EXPLAIN_TRACES_BY_CALL_ID, row.request_id, row))]
    if not has_call_id_column:
        joins.append(JoinAttempt(JOIN_SPEND_CALL_ID, None, (), "this SpendLogs has no litellm_call_id column"))
    elif row.litellm_call_id is None:
        joins.append(JoinAttempt(JOIN_SPEND_CALL_ID, None, (), "the row's litellm_call_id is NULL"))
    else:
        joins.append(JoinAttempt(JOIN_SPEND_CALL_ID, row.litellm_call_id,
                                 _traces(conn, q.EXPLAIN_TRACES_BY_CALL_ID, row.litellm_call_id, row)))
    joins.append(JoinAttempt(JOIN_RESPONSE_ID, row.request_id,
                             _traces(conn, q.EXPLAIN_TRACES_BY_RESPONSE_ID, row.request_id, row)))
    return tuple(joins)


def choose_trace(traces: Sequence[TraceView]) -> TraceView | None:
    """The call's lowest-stream_seq completed stream, else its lowest stream_seq."""
    if not traces:
        return None
    ordered = sorted(traces, key=lambda t: t.stream_seq)
    return next((t for t in ordered if t.outcome == "completed"), ordered[0])


def _instants_ms(row: SpendLogRow, trace: TraceView | None) -> dict[str, float | None]:
    if trace is None:
        return {}
    start = to_aware_utc(row.start_time)
    return {
        policy: None if at is None else (at - start).total_seconds() * 1000 for policy, at in trace.instants.items()
    }


def _verdict(
    row: SpendLogRow,
    joins: Sequence[JoinAttempt],
    corrections: Sequence[CorrectionView],
    *,
    call_types: Sequence[str],
    tolerance_ms: float,
    policy: str,
    earliest_trace: datetime | None,
) -> tuple[str, str, TraceView | None]:
    """(verdict, reason, trace used). Candidates go through the job's own classifier."""
    live = next((c for c in corrections if c.status == "applied"
                 and c.new_completion_start_time == row.completion_start_time), None)
    if live is not None:
        return ("reconciled",
                f"run {live.run_id} set completionStartTime {live.old_completion_start_time} -> "
                f"{live.new_completion_start_time} under policy {live.policy} (TTFT {live.ttft_ms:.0f} ms)", None)
    overwritten = next((c for c in corrections if c.status == "applied"), None)
    if overwritten is not None:
        return (oc.CHANGED,
                f"run {overwritten.run_id} set completionStartTime {overwritten.old_completion_start_time} -> "
                f"{overwritten.new_completion_start_time}, but the stored value is now {row.completion_start_time}:"
                " someone else changed it since, so the job leaves it alone and rollback would too", None)
    if row.call_type not in call_types:
        configured = ", ".join(call_types)
        return "not_candidate", f"call_type {row.call_type} is not in the configured set ({configured})", None
    cst, end = row.completion_start_time, row.end_time
    if cst is not None and abs(end - cst) > timedelta(milliseconds=tolerance_ms):
        return ("original", f"LiteLLM recorded a first token {row.ttft_ms:.0f} ms after startTime, "
                f"{(end - cst).total_seconds() * 1000:.0f} ms before endTime: not a candidate", None)
    traces = _unique_traces(joins)
    decision = _job_decision(row, traces, policy)
    chosen = choose_trace([t for t in traces if t.litellm_call_id == decision.evidence.get("litellm_call_id")])
    if decision.outcome == oc.NO_TRACE:
        if earliest_trace is None:
            why = "no trace has been recorded at all: is the capture installed in the proxy?"
        elif earliest_trace > to_aware_utc(row.start_time):
            why = (f"the earliest trace is from {earliest_trace.isoformat()}, after this row: rows from before "
                   "the capture was installed cannot be repaired")
        else:
            why = (f"no trace within {TRACE_JOIN_SLACK_WORDS} of startTime under any join: a non-streaming request,"
                   " a path the capture does not hook, or a trace that was dropped or pruned")
        return oc.NO_TRACE, why, None
    if decision.outcome == oc.REPAIRED and decision.repair is not None:
        repair = decision.repair
        undone = next((c for c in corrections if c.status == "reverted"), None)
        if undone is not None:
            # `run` never re-applies a rolled-back correction; a backfill over the row's day does.
            return (ROLLED_BACK, f"run {undone.run_id}'s correction was rolled back by run {undone.reverted_by_run}:"
                    " `run` leaves the row alone; a backfill over its day (`backfill --restart` if that window"
                    f" was backfilled before) sets completionStartTime to {repair.new.isoformat()}"
                    f" (TTFT {repair.ttft_ms:.0f} ms, {policy})", chosen)
        return ("repairable", f"a run whose window holds startTime, or a backfill, sets completionStartTime to"
                f" {repair.new.isoformat()} (TTFT {repair.ttft_ms:.0f} ms, {policy})", chosen)
    return decision.outcome, decision.reason, chosen


def _unique_traces(joins: Sequence[JoinAttempt]) -> list[TraceView]:
    seen: dict[tuple[str, int, datetime | None], TraceView] = {}
    for join in joins:
        for t in join.traces:
            seen.setdefault((t.litellm_call_id, t.stream_seq, t.request_start_at), t)
    return list(seen.values())


def _job_decision(row: SpendLogRow, traces: Sequence[TraceView], policy: str) -> Decision:
    """The batch job's own classifier on this one candidate and the traces the joins found."""
    candidates = pd.DataFrame([{
        "request_id": row.request_id, "start_time": row.start_time, "end_time": row.end_time,
        "completion_start_time": row.completion_start_time, "call_type": row.call_type,
        "api_base": row.api_base, "litellm_call_id": row.litellm_call_id, "model_group": row.model_group,
    }])
    frame = pd.DataFrame([{
        "litellm_call_id": t.litellm_call_id, "stream_seq": t.stream_seq, "response_id": t.response_id,
        "outcome": t.outcome, "request_start_at": t.request_start_at, "api_call_start_at": t.api_call_start_at,
        "chunk_count": t.chunk_count,
        **{POLICY_COLUMNS[name]: at for name, at in t.instants.items()},
    } for t in traces], columns=[
        "litellm_call_id", "stream_seq", "response_id", "outcome", "request_start_at", "api_call_start_at",
        "chunk_count", *POLICY_COLUMNS.values(),
    ])
    return classify_batch(candidates, frame, policy=policy).decisions[0]


def explain(
    conn: Connection,
    request_id: str,
    *,
    litellm_schema: str = "public",
    call_types: Sequence[str] = ("anthropic_messages", "aresponses", "pass_through_endpoint"),
    tolerance_ms: float = 5.0,
    policy: str = "first_chunk",
) -> Explanation:
    """Everything known about one SpendLogs row; the verdict uses the given job settings."""
    shape = inspect_spend_logs(conn, litellm_schema)
    corrections = tuple(
        CorrectionView(
            id=c.id, run_id=c.run_id, run_mode=c.run_mode, run_started_at=c.run_started_at, policy=c.policy,
            old_completion_start_time=c.old_completion_start_time,
            new_completion_start_time=c.new_completion_start_time, ttft_ms=c.ttft_ms, status=c.status,
            reverted_by_run=c.reverted_by_run, evidence=dict(c.evidence or {}),
        )
        for c in conn.execute(text(q.EXPLAIN_CORRECTIONS), {"request_id": request_id}).all()
    )
    found = conn.execute(
        text(q.explain_spend_log(shape.schema, shape.has_litellm_call_id)),
        {"request_id": request_id},
    ).first()
    if found is None:
        note = f"; {len(corrections)} correction(s) remain in the audit trail" if corrections else ""
        return Explanation(request_id, None, (), None, corrections, "not_found",
                           "no SpendLogs row has this request_id (LiteLLM writes rows 10-600 s late, and its "
                           f"retention deletes old ones){note}")
    row = SpendLogRow(**found._mapping)
    joins = find_joins(conn, row, shape.has_litellm_call_id)
    earliest = conn.execute(text(q.EXPLAIN_EARLIEST_TRACE)).scalar()
    verdict, reason, chosen = _verdict(row, joins, corrections, call_types=call_types, tolerance_ms=tolerance_ms,
                                       policy=policy, earliest_trace=earliest)
    if chosen is None:
        chosen = choose_trace([t for j in joins for t in j.traces])
    return Explanation(request_id, row, joins, chosen, corrections, verdict, reason, _instants_ms(row, chosen))
