"""Pure classification: candidate rows + their traces → one outcome each, and the new values.

The readable reference of the job's semantics, used by `explain`; the job itself runs the same
decisions set-based in batch_sql.py, and a test holds the two to identical results. No I/O.
Instants from SpendLogs are naive UTC; trace instants are aware (timestamptz) and are
converted to naive UTC here. New values are rounded as Postgres rounds into timestamp(3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from ttft_reconcile import outcomes as oc
from ttft_reconcile.joins import JOIN_CALL_ID_COLUMN, JOIN_REQUEST_ID, JOIN_RESPONSE_ID, TRACE_JOIN_SLACK
from ttft_reconcile.policies import POLICY_COLUMNS
from ttft_reconcile.timeparse import round_to_millisecond, to_naive_utc

CONFIRM_WITHIN = timedelta(milliseconds=1)

# Positive evidence of a non-streaming request (no trace needed).
_NON_STREAM_BEDROCK = re.compile(r"/model/[^/]+/(invoke|converse)(\?|$)")
_NON_STREAM_VERTEX = re.compile(r":rawPredict(\?|$)")


@dataclass(frozen=True)
class Repair:
    """What a write would do: set completionStartTime from `old` to `new` (naive UTC, ms precision)."""

    request_id: str
    start_time: datetime
    old: datetime | None
    new: datetime
    ttft_ms: float
    litellm_call_id: str | None
    stream_seq: int | None
    call_type: str | None
    model_group: str | None
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """The outcome of one candidate; `repair` is set only for `repaired`."""

    request_id: str
    start_time: datetime
    outcome: str
    reason: str
    repair: Repair | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchDecisions:
    decisions: list[Decision]

    def counts(self) -> dict[str, int]:
        result = oc.empty_counts()
        for decision in self.decisions:
            result[decision.outcome] += 1
        return result

    @property
    def repairs(self) -> list[Repair]:
        return [d.repair for d in self.decisions if d.repair is not None]


def not_streaming_evidence(request_id: str, call_type: str, api_base: str | None) -> str | None:
    """Why this row is known not to be a stream, or None (positive evidence only)."""
    if call_type == "anthropic_messages" and request_id.startswith("chatcmpl-"):
        return "chatcmpl- id on a native anthropic_messages row (non-streaming in LiteLLM 1.82-1.100)"
    base = api_base or ""
    if _NON_STREAM_BEDROCK.search(base):
        return "non-streaming Bedrock URL in api_base"
    if _NON_STREAM_VERTEX.search(base):
        return "non-streaming Vertex AI URL (:rawPredict) in api_base"
    return None


def choose_stream(streams: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest stream_seq that completed, else the lowest stream_seq; `streams` counts them all.

    Ties (the same stream recorded twice with different request_start_at, which the primary key
    allows) go to the earliest recording, so the choice never depends on the order SQL returned.
    """
    best = min(streams, key=lambda t: (t["outcome"] != "completed", int(t["stream_seq"]),
                                       _naive(t["request_start_at"])))
    return {**best, "streams": len(streams)}


@dataclass(frozen=True)
class _Found:
    """What the three strategies found for one row: strategy -> call id ('*': several), and the streams."""

    targets: dict[str, str]
    streams: list[dict[str, Any]]


class _TraceIndex:
    """The loaded traces by call id and by response id (empty ids are no evidence and never join)."""

    def __init__(self, traces: pd.DataFrame) -> None:
        self.by_call: dict[str, list[dict[str, Any]]] = {}
        self.by_response: dict[str, list[dict[str, Any]]] = {}
        columns = list(traces.columns)
        for values in traces.itertuples(index=False, name=None):
            trace = dict(zip(columns, values, strict=True))
            if _naive(trace["request_start_at"]) is None:
                continue  # an infinite start (a broken writer) lies in no window
            call_id, response_id = trace["litellm_call_id"], trace["response_id"]
            if isinstance(call_id, str) and call_id:
                self.by_call.setdefault(call_id, []).append(trace)
            if isinstance(response_id, str) and response_id:
                self.by_response.setdefault(response_id, []).append(trace)

    def find(self, request_id: str, column: object, start: datetime) -> _Found:
        """The row's joins, each limited to traces starting within TRACE_JOIN_SLACK of `start` (naive UTC)."""
        lo, hi = start - TRACE_JOIN_SLACK, start + TRACE_JOIN_SLACK

        def near(traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [t for t in traces if lo <= _naive(t["request_start_at"]) < hi]  # type: ignore[operator]

        by_request = near(self.by_call.get(request_id, [])) if request_id else []
        by_column = near(self.by_call.get(column, [])) if isinstance(column, str) and column else []
        by_response = near(self.by_response.get(request_id, [])) if request_id else []
        targets: dict[str, str] = {}
        if by_request:
            targets[JOIN_REQUEST_ID] = request_id
        if by_column:
            targets[JOIN_CALL_ID_COLUMN] = str(column)
        calls = {t["litellm_call_id"] for t in by_response}
        if calls:
            targets[JOIN_RESPONSE_ID] = calls.pop() if len(calls) == 1 else "*"
        # A call id finds all of the call's streams; a response id only the streams carrying it.
        return _Found(targets, by_request or by_column or by_response)


def _ms(delta: timedelta) -> float:
    return round(delta.total_seconds() * 1000.0, 3)


def _naive(value: Any) -> datetime | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    assert isinstance(value, datetime)
    return to_naive_utc(value)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 as Postgres writes a timestamp into JSON: the fraction's trailing zeros trimmed."""
    if value is None:
        return None
    written = value.isoformat()
    return written.rstrip("0") if "." in written else written


def _evidence(trace: Mapping[str, Any], join: list[str]) -> dict[str, Any]:
    instants = {policy: _naive(trace[column]) for policy, column in POLICY_COLUMNS.items()}
    request_start = _naive(trace["request_start_at"])
    api_start = _naive(trace["api_call_start_at"])
    evidence: dict[str, Any] = {
        "instants": {k: _iso(v) for k, v in instants.items()},
        "join": join,
        "litellm_call_id": trace["litellm_call_id"],
        "stream_seq": int(trace["stream_seq"]),
        "streams": int(trace["streams"]),
        "trace_outcome": trace["outcome"],
        "chunk_count": int(trace["chunk_count"]),
        "request_start_at": _iso(request_start),
        "api_call_start_at": _iso(api_start),
    }
    for origin, start in (("request_start", request_start), ("api_call_start", api_start)):
        evidence[f"ttft_ms_from_{origin}"] = {
            policy: (_ms(instant - start) if instant and start else None) for policy, instant in instants.items()
        }
    return evidence


def classify_batch(
    candidates: pd.DataFrame,
    traces: pd.DataFrame,
    *,
    policy: str,
    already_ours: Mapping[tuple[str, datetime], datetime] | None = None,
    rolled_back: Iterable[tuple[str, datetime]] = (),
) -> BatchDecisions:
    """Decide every candidate. Exactly one outcome each. `already_ours` maps the rows that have an
    applied correction to the value it wrote; `changed` is otherwise decided later, by the write."""
    column = POLICY_COLUMNS[policy]
    index = _TraceIndex(traces)
    ours = dict(already_ours or {})
    reverted = set(rolled_back)
    decisions: list[Decision] = []
    for row in candidates.itertuples(index=False):
        request_id = str(row.request_id)
        start = _naive(row.start_time)
        end = _naive(row.end_time)
        old = _naive(row.completion_start_time)
        assert start is not None and end is not None

        def decide(outcome: str, reason: str, **kw: Any) -> None:
            decisions.append(Decision(request_id, start, outcome, reason, **kw))  # noqa: B023

        found = index.find(request_id, row.litellm_call_id, start)
        targets = set(found.targets.values())
        if "*" in targets or len(targets) > 1:
            decide(oc.AMBIGUOUS, "join strategies disagree: "
                   + ", ".join(f"{k} -> {v}" for k, v in found.targets.items()))
            continue
        if not targets:
            why = not_streaming_evidence(request_id, str(row.call_type), _text(row.api_base))
            if why:
                decide(oc.NOT_STREAMING, why)
            else:
                decide(oc.NO_TRACE, "no stream trace matches this row")
            continue
        trace = choose_stream(found.streams)
        evidence = _evidence(trace, sorted(found.targets))
        instant = _naive(trace[column])
        if instant is None:
            decide(oc.NO_FIRST_TOKEN, f"the stream never had a {policy} instant", evidence=evidence)
            continue
        new = round_to_millisecond(instant)
        if new < start or new > end:
            decide(oc.OUT_OF_BOUNDS, f"{policy} instant {new.isoformat()} outside [startTime, endTime]",
                   evidence=evidence)
            continue
        if (request_id, start) in reverted and (request_id, start) not in ours:
            decide(oc.CHANGED, "its correction was rolled back; `run` leaves it alone (a backfill re-applies it)",
                   evidence=evidence)
            continue
        if (request_id, start) in ours and old != ours[(request_id, start)]:
            decide(oc.CHANGED, "its correction was overwritten since (the stored value is no longer ours);"
                   " left alone", evidence=evidence)
            continue
        if (old is not None and abs(new - old) <= CONFIRM_WITHIN) or (request_id, start) in ours:
            decide(oc.CONFIRMED, "the stored value already agrees with the trace (or is our correction)",
                   evidence=evidence)
            continue
        repair = Repair(
            request_id=request_id,
            start_time=start,
            old=old,
            new=new,
            ttft_ms=_ms(new - start),
            litellm_call_id=str(trace["litellm_call_id"]),
            stream_seq=int(trace["stream_seq"]),
            call_type=str(row.call_type),
            model_group=_text(row.model_group),
            evidence=evidence,
        )
        decide(oc.REPAIRED, f"{policy} from the trace", repair=repair, evidence=evidence)
    return BatchDecisions(decisions)
