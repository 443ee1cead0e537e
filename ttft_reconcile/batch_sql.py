"""The job's batch statement: scan, join, decide and write one keyset batch in one round trip.

This is the set-based twin of `classify.classify_batch` (the readable reference, which `explain`
uses); a test runs both over the same generated batches and requires the same outcome, new value
and evidence for every row. Instants: SpendLogs columns are naive UTC, trace columns timestamptz
(read `AT TIME ZONE 'UTC'`); new values are cast to timestamp(3), i.e. rounded as Postgres rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ttft_reconcile import outcomes as oc
from ttft_reconcile.db import SpendLogsShape
from ttft_reconcile.joins import (
    JOIN_CALL_ID_COLUMN,
    JOIN_REQUEST_ID,
    JOIN_RESPONSE_ID,
    TRACE_JOIN_SLACK,
    TRACE_JOIN_SLACK_SQL,
)
from ttft_reconcile.policies import POLICY_COLUMNS
from ttft_reconcile.queries import Position, S

_TRACE_COLUMNS = (
    "litellm_call_id", "stream_seq", "response_id", "request_start_at", "api_call_start_at",
    *POLICY_COLUMNS.values(), "chunk_count", "outcome",
)

# Join strategy names, as the evidence records them (sorted order = the order below).
_JOINS = (
    (JOIN_CALL_ID_COLUMN, "j_col"),
    (JOIN_REQUEST_ID, "j_req"),
    (JOIN_RESPONSE_ID, "j_resp"),
)


@dataclass(frozen=True)
class BatchResult:
    """What one batch did: candidates scanned, outcomes (`changed` when the guarded write missed a
    `repaired` row), the keyset position of its last candidate and the UTC days its candidates lie in."""

    scanned: int
    outcomes: dict[str, int]
    last: Position | None
    days: frozenset[date]

    def counts(self) -> dict[str, int]:
        result = oc.empty_counts()
        result.update(self.outcomes)
        return result


def _iso(expr: str) -> str:
    """A naive timestamp as JSON, ISO 8601 with the fraction's trailing zeros trimmed (or null)."""
    return f"to_jsonb({expr})"


def _ms(later: str, earlier: str) -> str:
    """`later - earlier` in milliseconds, rounded to 3 places (NULL when either is NULL)."""
    return f"round((extract(epoch FROM ({later}) - ({earlier})) * 1000)::numeric, 3)::float8"


def _naive(column: str, alias: str = "t") -> str:
    """A trace instant as naive UTC; an infinite one (a broken writer) reads as NULL."""
    return f"CASE WHEN isfinite({alias}.{column}) THEN {alias}.{column} AT TIME ZONE 'UTC' END"


def _evidence() -> str:
    instants = ", ".join(f"'{p}', {_iso('d.i_' + p)}" for p in POLICY_COLUMNS)
    origins = []
    for origin, start in (("request_start", "d.request_start"), ("api_call_start", "d.api_call_start")):
        per_policy = ", ".join(f"'{p}', {_ms('d.i_' + p, start)}" for p in POLICY_COLUMNS)
        origins.append(f"'ttft_ms_from_{origin}', jsonb_build_object({per_policy})")
    joins = ", ".join(f"CASE WHEN d.{flag} IS NOT NULL THEN '{name}' END" for name, flag in _JOINS)
    return (
        "jsonb_build_object("
        f"'instants', jsonb_build_object({instants}),"
        f" 'join', to_jsonb(array_remove(ARRAY[{joins}]::text[], NULL)),"
        " 'litellm_call_id', d.trace_call_id, 'stream_seq', d.stream_seq, 'streams', d.streams,"
        " 'trace_outcome', d.trace_outcome, 'chunk_count', d.chunk_count,"
        f" 'request_start_at', {_iso('d.request_start')}, 'api_call_start_at', {_iso('d.api_call_start')},"
        f" {', '.join(origins)})"
    )


def _near(row: str) -> str:
    """Traces whose request_start_at lies within TRACE_JOIN_SLACK of the row's startTime. The
    constant bounds of the whole window (:trace_lo, :trace_hi) let the planner drop every other
    day partition up front instead of probing each one per candidate."""
    slack = f"interval '{TRACE_JOIN_SLACK_SQL}'"
    return (f"t.request_start_at >= :trace_lo AND t.request_start_at < :trace_hi"
            f" AND t.request_start_at >= ({row}.start_time AT TIME ZONE 'UTC') - {slack}"
            f" AND t.request_start_at < ({row}.start_time AT TIME ZONE 'UTC') + {slack}")


def _decided_sql(shape: SpendLogsShape, *, policy: str, keyset: bool) -> str:
    """CTEs ending in `decided`: one row per candidate with its outcome and, if repaired, the repair.

    Every lookup is a LATERAL probe of an index (stream_traces, corrections) per candidate; no two
    intermediate results are ever joined to each other, so the plan stays linear in the batch size
    whatever the planner believes about row counts (a never-analyzed table, a fresh partition).
    """
    call_id = "litellm_call_id" if shape.has_litellm_call_id else "NULL::text"
    after = ' AND ("startTime", request_id) > (:after_start, :after_id)' if keyset else ""
    cols = ", ".join(f"t.{c}" for c in _TRACE_COLUMNS)

    def streams(alias: str, condition: str) -> str:
        # The streams one strategy finds, best first: the lowest stream_seq that completed, else
        # the lowest; ties go to the earliest recording. How many, and the calls they belong to.
        return (
            f" LEFT JOIN LATERAL (SELECT {cols}, count(*) OVER () AS streams,"
            " min(t.litellm_call_id) OVER () AS first_call, max(t.litellm_call_id) OVER () AS last_call"
            f" FROM {S}.stream_traces t WHERE {condition} AND {_near('c')}"
            f" ORDER BY t.outcome <> 'completed', t.stream_seq, t.request_start_at LIMIT 1) {alias} ON true"
        )

    # The chosen stream: all of the call's streams when a call id matched, else the streams
    # carrying the response id (a response id alone may point at several calls: '*'). A schema
    # without SpendLogs' litellm_call_id column has no `col` strategy: no probe is planned for it.
    has_col = shape.has_litellm_call_id
    picked = ", ".join(
        f"CASE WHEN req.litellm_call_id IS NOT NULL THEN req.{c}"
        + (f" WHEN col.litellm_call_id IS NOT NULL THEN col.{c}" if has_col else "")
        + f" ELSE resp.{c} END AS s_{c}"
        for c in (*_TRACE_COLUMNS, "streams")
    )
    j_col = ("CASE WHEN c.col_id = c.request_id THEN req.litellm_call_id ELSE col.litellm_call_id END"
             if has_col else "NULL::text")
    col_probe = (streams("col", "c.col_id <> '' AND c.col_id <> c.request_id AND t.litellm_call_id = c.col_id")
                 if has_col else "")
    instants = ", ".join(f"{_naive('s_' + column, 'j')} AS i_{p}" for p, column in POLICY_COLUMNS.items())
    return (
        "WITH cand AS MATERIALIZED ("
        ' SELECT request_id, call_type, "startTime" AS start_time, "endTime" AS end_time,'
        f' "completionStartTime" AS old_cst, api_base, model_group, {call_id} AS col_id'
        f" FROM {shape.qualified}"
        ' WHERE "startTime" >= :since AND "startTime" < :until' + after
        + " AND call_type = ANY(:call_types)"
        ' AND ("completionStartTime" IS NULL'
        ' OR abs(extract(epoch FROM ("endTime" - "completionStartTime"))) * 1000 <= :tolerance_ms)'
        ' ORDER BY "startTime", request_id LIMIT :limit'
        "), joined AS MATERIALIZED ("
        # Which call each strategy points at; an empty id is no evidence and never joins.
        " SELECT c.*, req.litellm_call_id AS j_req,"
        f" {j_col} AS j_col,"
        " CASE WHEN resp.first_call = resp.last_call THEN resp.first_call"
        " WHEN resp.first_call IS NOT NULL THEN '*' END AS j_resp,"
        f" {picked}"
        " FROM cand c"
        + streams("req", "c.request_id <> '' AND t.litellm_call_id = c.request_id")
        + col_probe
        + streams("resp", "c.request_id <> '' AND t.response_id = c.request_id")
        + "), traced AS ("
        # How many different calls the three strategies point at ('*' counts as one more).
        " SELECT j.*, (j.j_req IS NOT NULL)::int + (j.j_col IS NOT NULL AND j.j_col IS DISTINCT FROM j.j_req)::int"
        " + (j.j_resp IS NOT NULL AND j.j_resp IS DISTINCT FROM j.j_req AND j.j_resp IS DISTINCT FROM j.j_col)::int"
        " AS n_targets, j.s_litellm_call_id AS trace_call_id, j.s_stream_seq AS stream_seq, j.s_streams AS streams,"
        " j.s_outcome AS trace_outcome, j.s_chunk_count AS chunk_count,"
        f" {_naive('s_request_start_at', 'j')} AS request_start,"
        f" {_naive('s_api_call_start_at', 'j')} AS api_call_start,"
        f" {instants}"
        " FROM joined j"
        "), valued AS ("
        f" SELECT r.*, CAST(r.i_{policy} AS timestamp(3)) AS new_cst, o.applied"
        " FROM traced r CROSS JOIN LATERAL (SELECT bool_or(co.status = 'applied') AS applied"
        f"  FROM {S}.corrections co WHERE r.n_targets = 1 AND r.j_resp IS DISTINCT FROM '*'"
        "  AND co.request_id = r.request_id AND co.start_time = r.start_time) o"
        "), decided AS ("
        " SELECT v.*, CASE"
        f" WHEN v.j_resp = '*' OR v.n_targets > 1 THEN '{oc.AMBIGUOUS}'"
        " WHEN v.n_targets = 0 THEN CASE"
        "   WHEN (v.call_type = 'anthropic_messages' AND starts_with(v.request_id, 'chatcmpl-'))"
        "     OR coalesce(v.api_base, '') ~ '/model/[^/]+/(invoke|converse)(\\?|$)'"
        f"     OR coalesce(v.api_base, '') ~ '\\:rawPredict(\\?|$)' THEN '{oc.NOT_STREAMING}'"
        f"   ELSE '{oc.NO_TRACE}' END"
        f" WHEN v.new_cst IS NULL THEN '{oc.NO_FIRST_TOKEN}'"
        f" WHEN v.new_cst < v.start_time OR v.new_cst > v.end_time THEN '{oc.OUT_OF_BOUNDS}'"
        f" WHEN :hold_rolled_back AND v.applied IS FALSE THEN '{oc.CHANGED}'"
        " WHEN v.applied IS TRUE OR (v.old_cst IS NOT NULL"
        f"   AND v.new_cst - v.old_cst BETWEEN interval '-1 millisecond' AND interval '1 millisecond')"
        f"   THEN '{oc.CONFIRMED}'"
        f" ELSE '{oc.REPAIRED}' END AS outcome"
        " FROM valued v"
        ")"
    )


def trace_window(since: datetime, until: datetime) -> dict[str, datetime]:
    """The statement's trace bounds for candidates with startTime in [since, until) (naive UTC)."""
    return {"trace_lo": (since - TRACE_JOIN_SLACK).replace(tzinfo=timezone.utc),
            "trace_hi": (until + TRACE_JOIN_SLACK).replace(tzinfo=timezone.utc)}


def _tally_sql(written: str) -> str:
    """The batch's one result row: candidates, outcome counts, rows audited (`written`), the last
    candidate's keyset position and its candidates' UTC days. Scalar subqueries only, so no
    intermediate result is joined to another and Python receives one row, not one per candidate."""
    return (
        " SELECT (SELECT count(*) FROM decided) AS scanned,"
        " (SELECT jsonb_object_agg(x.outcome, x.n) FROM"
        "  (SELECT outcome, count(*) AS n FROM decided GROUP BY outcome) x) AS outcomes,"
        f" {written} AS written,"
        " (SELECT start_time FROM decided ORDER BY start_time DESC, request_id DESC LIMIT 1) AS last_start,"
        " (SELECT request_id FROM decided ORDER BY start_time DESC, request_id DESC LIMIT 1) AS last_id,"
        " (SELECT array_agg(DISTINCT start_time::date) FROM decided) AS days"
    )


def batch_statement(shape: SpendLogsShape, *, policy: str, keyset: bool, write: bool) -> str:
    """The text of one batch: decide every candidate and, when `write`, the guarded UPDATE and audit.

    Parameters: since, until, call_types, tolerance_ms, limit, hold_rolled_back, run_id, policy,
    trace_lo/trace_hi (`trace_window`), and after_start/after_id when `keyset`. One row:
    (scanned, outcomes as {outcome: count}, written, last_start, last_id, days).
    """
    if policy not in POLICY_COLUMNS:
        raise ValueError(f"unknown policy {policy!r}")
    sql = _decided_sql(shape, policy=policy, keyset=keyset)
    if not write:
        return sql + _tally_sql("0")
    touch = ", updated_at = CURRENT_TIMESTAMP" if shape.has_updated_at else ""
    # The UPDATE returns the decided rows it wrote, so the audit INSERT reads them directly.
    return sql + (
        ", updated AS ("
        f' UPDATE {shape.qualified} AS s SET "completionStartTime" = d.new_cst{touch}'
        f" FROM decided d WHERE d.outcome = '{oc.REPAIRED}'"
        ' AND s.request_id = d.request_id AND s."startTime" = d.start_time'
        ' AND s."completionStartTime" IS NOT DISTINCT FROM d.old_cst'
        " RETURNING d.*"
        "), audited AS ("
        f" INSERT INTO {S}.corrections (request_id, start_time, run_id, policy, old_completion_start_time,"
        " new_completion_start_time, ttft_ms, litellm_call_id, stream_seq, call_type, model_group, evidence)"
        f" SELECT d.request_id, d.start_time, :run_id, :policy, d.old_cst, d.new_cst,"
        f" {_ms('d.new_cst', 'd.start_time')}, d.trace_call_id, d.stream_seq, d.call_type, d.model_group,"
        f" {_evidence()}"
        " FROM updated d"
        " RETURNING 1"
        ")"
    ) + _tally_sql("(SELECT count(*) FROM audited)")


def reconcile_batch(
    conn: Connection,
    shape: SpendLogsShape,
    *,
    since: datetime,
    until: datetime,
    after: Position | None,
    call_types: list[str] | tuple[str, ...],
    tolerance_ms: float,
    limit: int,
    policy: str,
    hold_rolled_back: bool,
    run_id: int,
    write: bool,
) -> BatchResult:
    """Scan the next `limit` candidates of [since, until) (naive UTC) after `after`, decide each,
    and (when `write`) apply the guarded UPDATE and its audit rows, all in one statement.

    A `repaired` row the guard refused (its value changed since it was read) counts as `changed`.
    """
    sql = batch_statement(shape, policy=policy, keyset=after is not None, write=write)
    params: dict[str, Any] = {
        "since": since,
        "until": until,
        **trace_window(since, until),
        "call_types": list(call_types),
        "tolerance_ms": tolerance_ms,
        "limit": limit,
        "hold_rolled_back": hold_rolled_back,
        "run_id": run_id,
        "policy": policy,
    }
    if after is not None:
        params["after_start"] = after.start_time
        params["after_id"] = after.request_id
    scanned, outcomes, written, last_start, last_id, days = conn.execute(text(sql), params).one()
    found = {str(k): int(v) for k, v in (outcomes or {}).items()}
    if write:
        # Every audit row is a repaired row the guarded UPDATE wrote; the rest changed under us.
        missed = found.get(oc.REPAIRED, 0) - int(written)
        if missed:
            found[oc.REPAIRED] -= missed
            found[oc.CHANGED] = found.get(oc.CHANGED, 0) + missed
    last = Position(last_start, str(last_id)) if scanned else None
    return BatchResult(int(scanned), found, last, frozenset(days or ()))


def decide_sql_for_tests(shape: SpendLogsShape, policy: str) -> str:
    """The decision CTEs followed by a SELECT of every decided column (tests compare it with classify.py)."""
    return (
        _decided_sql(shape, policy=policy, keyset=False)
        + f" SELECT d.request_id, d.start_time, d.outcome, d.new_cst, d.trace_call_id, d.stream_seq,"
        f" {_ms('d.new_cst', 'd.start_time')} AS ttft_ms, {_evidence()} AS evidence"
        " FROM decided d ORDER BY d.start_time, d.request_id"
    )
