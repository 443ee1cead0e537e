"""The job's batch statement: scan, join, decide and write one keyset batch in one round trip.

This is the set-based twin of `classify.classify_batch` (the readable reference, which `explain`
uses); a test runs both over the same generated batches and requires the same outcome, new value
and evidence for every row. Instants: SpendLogs columns are naive UTC, trace columns timestamptz
(read `AT TIME ZONE 'UTC'`); new values are cast to timestamp(3), i.e. rounded as Postgres rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ttft_reconcile import outcomes as oc
from ttft_reconcile.db import SpendLogsShape
from ttft_reconcile.policies import POLICY_COLUMNS
from ttft_reconcile.queries import Position, S

# Traces are looked for with request_start_at within this margin of the batch's rows (a
# stream cannot start a day before its SpendLogs row, or end a day after it).
TRACE_JOIN_SLACK = timedelta(days=1)

_TRACE_COLUMNS = (
    "litellm_call_id", "stream_seq", "response_id", "request_start_at", "api_call_start_at",
    *POLICY_COLUMNS.values(), "chunk_count", "outcome",
)

# Join strategy names, as the evidence records them (sorted order = the order below).
_JOINS = (
    ("litellm_call_id column", "j_col"),
    ("request_id=litellm_call_id", "j_req"),
    ("request_id=response_id", "j_resp"),
)


@dataclass(frozen=True)
class BatchRow:
    """One scanned candidate and its final outcome (`changed` when the guarded write missed it)."""

    request_id: str
    start_time: datetime
    outcome: str


@dataclass(frozen=True)
class BatchResult:
    rows: list[BatchRow]

    @property
    def last(self) -> Position | None:
        return Position(self.rows[-1].start_time, self.rows[-1].request_id) if self.rows else None

    def counts(self) -> dict[str, int]:
        result = oc.empty_counts()
        for row in self.rows:
            result[row.outcome] += 1
        return result


def _iso(expr: str) -> str:
    """A naive timestamp as JSON, ISO 8601 with the fraction's trailing zeros trimmed (or null)."""
    return f"to_jsonb({expr})"


def _ms(later: str, earlier: str) -> str:
    """`later - earlier` in milliseconds, rounded to 3 places (NULL when either is NULL)."""
    return f"round((extract(epoch FROM ({later}) - ({earlier})) * 1000)::numeric, 3)::float8"


def _naive(column: str) -> str:
    """A trace instant as naive UTC; an infinite one (a broken writer) reads as NULL."""
    return f"CASE WHEN isfinite(t.{column}) THEN t.{column} AT TIME ZONE 'UTC' END"


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


def _decided_sql(shape: SpendLogsShape, *, policy: str, keyset: bool) -> str:
    """CTEs ending in `decided`: one row per candidate with its outcome and, if repaired, the repair."""
    call_id = "litellm_call_id" if shape.has_litellm_call_id else "NULL::text"
    after = ' AND ("startTime", request_id) > (:after_start, :after_id)' if keyset else ""
    instants = ", ".join(f"{_naive(column)} AS i_{p}" for p, column in POLICY_COLUMNS.items())
    slack = f"interval '{int(TRACE_JOIN_SLACK.total_seconds())} seconds'"
    cols = ", ".join(f"t.{c}" for c in _TRACE_COLUMNS)
    trace_filter = (
        "t.request_start_at >= (SELECT lo FROM bounds) AND t.request_start_at < (SELECT hi FROM bounds)"
    )
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
        "), bounds AS ("
        f" SELECT (min(start_time) AT TIME ZONE 'UTC') - {slack} AS lo,"
        f" (max(end_time) AT TIME ZONE 'UTC') + {slack} AS hi FROM cand"
        "), tr AS MATERIALIZED ("
        # The three joins each reach stream_traces through an index; UNION removes a stream
        # that two of them found.
        f" SELECT {cols} FROM {S}.stream_traces t"
        " JOIN (SELECT DISTINCT request_id FROM cand) c ON t.litellm_call_id = c.request_id"
        f" WHERE {trace_filter}"
        f" UNION SELECT {cols} FROM {S}.stream_traces t"
        " JOIN (SELECT DISTINCT col_id FROM cand WHERE col_id IS NOT NULL) c ON t.litellm_call_id = c.col_id"
        f" WHERE {trace_filter}"
        f" UNION SELECT {cols} FROM {S}.stream_traces t"
        " JOIN (SELECT DISTINCT request_id FROM cand) c ON t.response_id = c.request_id"
        f" WHERE {trace_filter}"
        "), chosen AS ("
        # One stream per call: the lowest stream_seq that completed, else the lowest; ties go to
        # the earliest recording.
        " SELECT DISTINCT ON (litellm_call_id) *, count(*) OVER (PARTITION BY litellm_call_id) AS streams"
        " FROM tr ORDER BY litellm_call_id, outcome <> 'completed', stream_seq, request_start_at"
        "), by_response AS ("
        " SELECT response_id,"
        " CASE WHEN count(DISTINCT litellm_call_id) = 1 THEN min(litellm_call_id) ELSE '*' END AS target"
        " FROM tr WHERE response_id <> '' GROUP BY response_id"
        "), matched AS ("
        " SELECT c.*, c1.litellm_call_id AS j_req, c2.litellm_call_id AS j_col, r.target AS j_resp"
        " FROM cand c"
        " LEFT JOIN chosen c1 ON c1.litellm_call_id = c.request_id AND c.request_id <> ''"
        " LEFT JOIN chosen c2 ON c2.litellm_call_id = c.col_id AND c.col_id <> ''"
        " LEFT JOIN by_response r ON r.response_id = c.request_id"
        "), joined AS ("
        # How many different calls the three strategies point at ('*' counts as one more).
        " SELECT m.*, (m.j_req IS NOT NULL)::int + (m.j_col IS NOT NULL AND m.j_col IS DISTINCT FROM m.j_req)::int"
        " + (m.j_resp IS NOT NULL AND m.j_resp IS DISTINCT FROM m.j_req AND m.j_resp IS DISTINCT FROM m.j_col)::int"
        " AS n_targets,"
        " coalesce(m.j_req, m.j_col, m.j_resp) AS target FROM matched m"
        "), traced AS ("
        " SELECT j.*, t.litellm_call_id AS trace_call_id, t.stream_seq, t.streams, t.outcome AS trace_outcome,"
        f" t.chunk_count, {_naive('request_start_at')} AS request_start,"
        f" {_naive('api_call_start_at')} AS api_call_start, {instants}"
        " FROM joined j LEFT JOIN chosen t ON t.litellm_call_id = j.target AND j.n_targets = 1"
        " AND j.j_resp IS DISTINCT FROM '*'"
        "), ours AS ("
        " SELECT co.request_id, co.start_time, bool_or(co.status = 'applied') AS applied"
        f" FROM {S}.corrections co JOIN cand c ON co.request_id = c.request_id AND co.start_time = c.start_time"
        " GROUP BY 1, 2"
        "), valued AS ("
        f" SELECT tr2.*, CAST(tr2.i_{policy} AS timestamp(3)) AS new_cst, o.applied"
        " FROM traced tr2 LEFT JOIN ours o ON o.request_id = tr2.request_id AND o.start_time = tr2.start_time"
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

    A `repaired` row the guard refused (its value changed since it was read) comes back `changed`.
    """
    if policy not in POLICY_COLUMNS:
        raise ValueError(f"unknown policy {policy!r}")
    sql = _decided_sql(shape, policy=policy, keyset=after is not None)
    if write:
        touch = ", updated_at = CURRENT_TIMESTAMP" if shape.has_updated_at else ""
        sql += (
            ", updated AS ("
            f' UPDATE {shape.qualified} AS s SET "completionStartTime" = d.new_cst{touch}'
            f" FROM decided d WHERE d.outcome = '{oc.REPAIRED}'"
            ' AND s.request_id = d.request_id AND s."startTime" = d.start_time'
            ' AND s."completionStartTime" IS NOT DISTINCT FROM d.old_cst'
            ' RETURNING s.request_id, s."startTime" AS start_time'
            "), audited AS ("
            f" INSERT INTO {S}.corrections (request_id, start_time, run_id, policy, old_completion_start_time,"
            " new_completion_start_time, ttft_ms, litellm_call_id, stream_seq, call_type, model_group, evidence)"
            f" SELECT d.request_id, d.start_time, :run_id, :policy, d.old_cst, d.new_cst,"
            f" {_ms('d.new_cst', 'd.start_time')}, d.trace_call_id, d.stream_seq, d.call_type, d.model_group,"
            f" {_evidence()}"
            " FROM decided d JOIN updated u ON u.request_id = d.request_id AND u.start_time = d.start_time"
            " RETURNING request_id, start_time"
            ")"
            f" SELECT d.request_id, d.start_time, CASE WHEN d.outcome = '{oc.REPAIRED}' AND a.request_id IS NULL"
            f" THEN '{oc.CHANGED}' ELSE d.outcome END"
            " FROM decided d LEFT JOIN audited a ON a.request_id = d.request_id AND a.start_time = d.start_time"
            " ORDER BY d.start_time, d.request_id"
        )
    else:
        sql += " SELECT d.request_id, d.start_time, d.outcome FROM decided d ORDER BY d.start_time, d.request_id"
    params: dict[str, Any] = {
        "since": since,
        "until": until,
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
    rows = conn.execute(text(sql), params).all()
    return BatchResult([BatchRow(str(r[0]), r[1], str(r[2])) for r in rows])


def decide_sql_for_tests(shape: SpendLogsShape, policy: str) -> str:
    """The decision CTEs followed by a SELECT of every decided column (tests compare it with classify.py)."""
    return (
        _decided_sql(shape, policy=policy, keyset=False)
        + f" SELECT d.request_id, d.start_time, d.outcome, d.new_cst, d.trace_call_id, d.stream_seq,"
        f" {_ms('d.new_cst', 'd.start_time')} AS ttft_ms, {_evidence()} AS evidence"
        " FROM decided d ORDER BY d.start_time, d.request_id"
    )
