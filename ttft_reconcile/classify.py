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
from ttft_reconcile.policies import POLICY_COLUMNS
from ttft_reconcile.timeparse import round_to_millisecond, to_naive_utc

CONFIRM_WITHIN = timedelta(milliseconds=1)
JOIN_REQUEST_ID = "request_id=litellm_call_id"
JOIN_CALL_ID_COLUMN = "litellm_call_id column"
JOIN_RESPONSE_ID = "request_id=response_id"

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


def choose_streams(traces: pd.DataFrame) -> pd.DataFrame:
    """One trace per call: the lowest stream_seq that completed, else the lowest stream_seq.

    Ties (the same stream recorded twice with different request_start_at, which the primary key
    allows) go to the earliest recording, so the choice never depends on the order SQL returned.
    """
    if traces.empty:
        return traces.assign(streams=pd.Series(dtype="int64"))
    ordered = traces.assign(_failed=traces["outcome"] != "completed").sort_values(
        ["litellm_call_id", "_failed", "stream_seq", "request_start_at"], kind="stable"
    )
    counts = traces.groupby("litellm_call_id").size().rename("streams")
    chosen = ordered.drop_duplicates("litellm_call_id", keep="first").drop(columns="_failed")
    return chosen.join(counts, on="litellm_call_id")


def _match_call_ids(candidates: pd.DataFrame, traces: pd.DataFrame) -> list[dict[str, str]]:
    """Per candidate: join strategy → the call id it points at ('*' when it points at several).

    An empty id is no evidence: it never joins (it would pair unrelated rows and streams).
    Plain Python over column lists: per-row pandas lookups cost more than the whole batch's SQL.
    """
    call_ids: set[str] = set(traces["litellm_call_id"].tolist()) - {""} if not traces.empty else set()
    by_response: dict[str, set[str]] = {}
    if not traces.empty:
        for response_id, call_id in zip(traces["response_id"].tolist(), traces["litellm_call_id"].tolist(),
                                        strict=True):
            if isinstance(response_id, str) and response_id:
                by_response.setdefault(response_id, set()).add(call_id)
    matches: list[dict[str, str]] = []
    for request_id, column in zip(candidates["request_id"].tolist(), candidates["litellm_call_id"].tolist(),
                                  strict=True):
        found: dict[str, str] = {}
        if request_id in call_ids:
            found[JOIN_REQUEST_ID] = request_id
        if isinstance(column, str) and column in call_ids:
            found[JOIN_CALL_ID_COLUMN] = column
        responders = by_response.get(request_id)
        if responders:
            found[JOIN_RESPONSE_ID] = next(iter(responders)) if len(responders) == 1 else "*"
        matches.append(found)
    return matches


def _records_by_call(chosen: pd.DataFrame) -> dict[str, dict[str, Any]]:
    columns = list(chosen.columns)
    position = columns.index("litellm_call_id")
    return {row[position]: dict(zip(columns, row, strict=True)) for row in chosen.itertuples(index=False, name=None)}


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
    already_ours: Iterable[tuple[str, datetime]] = (),
    rolled_back: Iterable[tuple[str, datetime]] = (),
) -> BatchDecisions:
    """Decide every candidate. Exactly one outcome each; `changed` is decided later, by the write."""
    column = POLICY_COLUMNS[policy]
    chosen = _records_by_call(choose_streams(traces)) if not traces.empty else None
    matches = _match_call_ids(candidates, traces) if len(candidates) else []
    ours = set(already_ours)
    reverted = set(rolled_back)
    decisions: list[Decision] = []
    for position, row in enumerate(candidates.itertuples(index=False)):
        request_id = str(row.request_id)
        start = _naive(row.start_time)
        end = _naive(row.end_time)
        old = _naive(row.completion_start_time)
        assert start is not None and end is not None

        def decide(outcome: str, reason: str, **kw: Any) -> None:
            decisions.append(Decision(request_id, start, outcome, reason, **kw))  # noqa: B023

        found = matches[position]
        targets = set(found.values())
        if "*" in targets or len(targets) > 1:
            decide(oc.AMBIGUOUS, "join strategies disagree: " + ", ".join(f"{k} -> {v}" for k, v in found.items()))
            continue
        if not targets:
            why = not_streaming_evidence(request_id, str(row.call_type), _text(row.api_base))
            if why:
                decide(oc.NOT_STREAMING, why)
            else:
                decide(oc.NO_TRACE, "no stream trace matches this row")
            continue
        assert chosen is not None
        trace = chosen[targets.pop()]
        evidence = _evidence(trace, sorted(found))
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
