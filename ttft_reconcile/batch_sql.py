"""The job's batch statements: one decides a keyset batch (scan, join, decide), one writes it.

This is the set-based twin of `classify.classify_batch` (the readable reference, which `explain`
uses); a test runs both over the same generated batches and requires the same outcome, new value
and evidence for every row. Instants: SpendLogs columns are naive UTC, trace columns timestamptz
(read `AT TIME ZONE 'UTC'`); new values are cast to timestamp(3), i.e. rounded as Postgres rounds.

The decide statement hands its repaired rows to the write statement through `batch_stage`, so the two
may run in one transaction (`run`) or on two connections, a backfill deciding the next batch
while the last one is written (`pipeline.DecideAhead`). The write's guard makes the gap safe.
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

# How the batch statement is planned (for its transaction; PLANNER_DEFAULTS restores the
# session's settings after it): every table is read through an index range (SpendLogs in keyset
# order, traces and corrections by start time, written rows by TID) and every join is a hash
# join. No statistics, however stale or missing, can then turn a batch into a scan of SpendLogs
# (a larger LIMIT made Postgres sort a parallel sequential scan) or a join into a nested loop.
_PLANNER = {"enable_nestloop": "off", "enable_mergejoin": "off", "enable_seqscan": "off",
            "enable_bitmapscan": "off", "max_parallel_workers_per_gather": "0",
            # a batch's hashes and materialized steps stay in memory (a few MB at 20,000 rows)
            "work_mem": "64MB"}
BATCH_PLAN_SETTINGS = "SELECT " + ", ".join(f"set_config('{k}', '{v}', true)" for k, v in _PLANNER.items())
PLANNER_DEFAULTS = ("SELECT set_config(name, reset_val, true) FROM pg_settings WHERE name IN ("
                    + ", ".join(f"'{k}'" for k in _PLANNER) + ")")

# The join strategies: (name in the evidence, key of the candidate, trace column it matches).
# The evidence lists the names in sorted order, which is the order here.
_STRATEGIES = (
    (JOIN_CALL_ID_COLUMN, "col", "col_id", "litellm_call_id"),
    (JOIN_REQUEST_ID, "req", "request_id", "litellm_call_id"),
    (JOIN_RESPONSE_ID, "resp", "request_id", "response_id"),
)
# What the audit row keeps of the chosen stream (corrections column <- `best` column).
_EVIDENCE_COLUMNS = (
    ("streams", "streams"), ("trace_outcome", "outcome"), ("chunk_count", "chunk_count"),
    ("request_start_at", "request_start"), ("api_call_start_at", "api_call_start"),
    *((column, column) for column in POLICY_COLUMNS.values()),
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


def _ms(later: str, earlier: str) -> str:
    """`later - earlier` in milliseconds, rounded to 3 places (NULL when either is NULL)."""
    return f"round((extract(epoch FROM ({later}) - ({earlier})) * 1000)::numeric, 3)::float8"


def _naive(column: str, alias: str = "t") -> str:
    """A trace instant as naive UTC; an infinite one (a broken writer) reads as NULL."""
    return f"CASE WHEN isfinite({alias}.{column}) THEN {alias}.{column} AT TIME ZONE 'UTC' END"


# Positive evidence that a SpendLogs row was no stream (`classify.not_streaming_evidence`), computed
# where the row is read so its api_base goes no further. The regular expressions run only where a
# cheap substring test says they may match.
_NON_STREAMING = (
    "((call_type = 'anthropic_messages' AND starts_with(request_id, 'chatcmpl-'))"
    " OR (strpos(api_base, '/model/') > 0 AND api_base ~ '/model/[^/]+/(invoke|converse)(\\?|$)')"
    " OR (strpos(api_base, '\\:rawPredict') > 0 AND api_base ~ '\\:rawPredict(\\?|$)'))"
)


def _candidates(shape: SpendLogsShape, *, keyset: bool) -> str:
    """The next :limit candidates in keyset order, with the physical address they were read at."""
    call_id = "litellm_call_id" if shape.has_litellm_call_id else "NULL::text"
    row_rel = ", tableoid AS row_rel" if shape.partitioned else ""
    after = ' AND ("startTime", request_id) > (:after_start, :after_id)' if keyset else ""
    return (
        f' SELECT ctid AS row_ctid, xmin AS row_xmin{row_rel}, request_id, call_type, "startTime" AS start_time,'
        ' "endTime" AS end_time, "completionStartTime" AS old_cst, model_group,'
        f" {call_id} AS col_id, {_NON_STREAMING} AS non_streaming"
        f" FROM {shape.qualified}"
        ' WHERE "startTime" >= :since AND "startTime" < :until' + after
        + " AND call_type = ANY(:call_types)"
        # |endTime - completionStartTime| <= tolerance, in integer timestamp arithmetic
        ' AND ("completionStartTime" IS NULL'
        " OR (\"completionStartTime\" >= \"endTime\" - :tolerance_ms * interval '1 millisecond'"
        " AND \"completionStartTime\" <= \"endTime\" + :tolerance_ms * interval '1 millisecond'))"
        ' ORDER BY "startTime", request_id LIMIT :limit'
    )


def _decided_sql(shape: SpendLogsShape, *, policy: str, keyset: bool) -> str:
    """CTEs ending in `decided`: one row per candidate with its outcome and, if repaired, the new
    value and which strategy's stream (`pick`) it came from; `best` holds those streams.

    The traces near the batch are read once, by a range scan of their start-time index, and
    hash-joined to the candidates (`BATCH_PLAN_SETTINGS`): the cost is linear in the batch and
    in the traces of its time span whatever the planner believes about row counts (a
    never-analyzed table, a fresh day partition), and no candidate pays for a probe of its own.
    """
    slack = f"interval '{TRACE_JOIN_SLACK_SQL}'"
    strategies = [s for s in _STRATEGIES if s[1] != "col" or shape.has_litellm_call_id]
    aliases = [alias for _, alias, _, _ in strategies]

    def hits(alias: str, key: str, column: str) -> str:
        # The streams one strategy finds for a candidate: those sharing the id and starting within
        # TRACE_JOIN_SLACK of its startTime. An empty id is no evidence and never joins; the
        # column strategy adds nothing when the column repeats the request id.
        extra = " AND c.col_id <> c.request_id" if alias == "col" else ""
        return (
            f" SELECT c.request_id AS rid, c.start_time AS rst, '{alias}' AS strategy, t.*"
            f" FROM cand c JOIN near t ON t.{column} = c.{key}"
            f" WHERE c.{key} <> ''{extra}"
            f" AND t.request_start >= c.start_time - {slack} AND t.request_start < c.start_time + {slack}"
        )

    def pick(alias: str) -> str:
        return (f" LEFT JOIN best {alias} ON {alias}.strategy = '{alias}'"
                f" AND {alias}.rid = c.request_id AND {alias}.rst = c.start_time")

    # Which call each strategy points at ('*': a response id shared by several calls). The
    # column strategy, when the column repeats the request id, points where the request id does.
    j_col = ("CASE WHEN c.col_id = c.request_id THEN req.litellm_call_id ELSE col.litellm_call_id END"
             if shape.has_litellm_call_id else "NULL::text")
    # The chosen stream: all of the call's streams when a call id matched, else the streams
    # carrying the response id.
    chosen = " ".join(f"WHEN {a}.litellm_call_id IS NOT NULL THEN '{a}'" for a in aliases)
    chosen_instant = " ".join(f"WHEN {a}.litellm_call_id IS NOT NULL THEN {a}.{POLICY_COLUMNS[policy]}"
                              for a in aliases)
    return (
        "WITH cand AS MATERIALIZED (" + _candidates(shape, keyset=keyset) + ")"
        ", span AS MATERIALIZED ("
        " SELECT min(start_time) AS first_start, max(start_time) AS last_start FROM cand"
        "), near AS MATERIALIZED ("
        # Every stream that may belong to a candidate, its instants as naive UTC. The window's
        # constant bounds drop the other day partitions when the statement is planned.
        " SELECT t.litellm_call_id, t.stream_seq, t.response_id, t.outcome, t.chunk_count,"
        f" t.request_start_at AT TIME ZONE 'UTC' AS request_start, {_naive('api_call_start_at')} AS api_call_start,"
        + ", ".join(f"{_naive(column)} AS {column}" for column in POLICY_COLUMNS.values())
        + f" FROM {S}.stream_traces t"
        " WHERE t.request_start_at >= :trace_lo AND t.request_start_at < :trace_hi"
        f" AND t.request_start_at >= ((SELECT first_start FROM span) AT TIME ZONE 'UTC') - {slack}"
        f" AND t.request_start_at < ((SELECT last_start FROM span) AT TIME ZONE 'UTC') + {slack}"
        "), best AS MATERIALIZED ("
        # Per candidate and strategy: how many streams, the calls they belong to, and the best
        # one: the lowest stream_seq that completed, else the lowest; ties to the earliest recording.
        " SELECT DISTINCT ON (h.rid, h.rst, h.strategy) h.*,"
        " count(*) OVER w AS streams, min(h.litellm_call_id) OVER w AS first_call,"
        " max(h.litellm_call_id) OVER w AS last_call"
        " FROM (" + " UNION ALL".join(hits(a, key, column) for _, a, key, column in strategies) + ") h"
        " WINDOW w AS (PARTITION BY h.rid, h.rst, h.strategy)"
        " ORDER BY h.rid, h.rst, h.strategy, h.outcome <> 'completed', h.stream_seq, h.request_start,"
        " h.litellm_call_id"
        "), joined AS ("
        # Which call each strategy points at, the chosen stream and the new value it gives.
        " SELECT c.row_ctid, c.row_xmin" + (", c.row_rel" if shape.partitioned else "") + ","
        " c.request_id, c.start_time, c.end_time, c.old_cst, c.call_type, c.non_streaming, c.model_group,"
        " req.litellm_call_id AS j_req,"
        + (f" {j_col} AS j_col," if shape.has_litellm_call_id else " NULL::text AS j_col,")
        + " CASE WHEN resp.first_call = resp.last_call THEN resp.first_call"
        " WHEN resp.first_call IS NOT NULL THEN '*' END AS j_resp,"
        f" CASE {chosen} END AS pick, CAST(CASE {chosen_instant} END AS timestamp(3)) AS new_cst"
        " FROM cand c" + "".join(pick(a) for a in aliases)
        + "), valued AS ("
        # How many different calls the strategies point at ('*' counts as one more), and whether
        # the row carries a correction of ours (applied) or only reverted ones.
        " SELECT j.*, (j.j_req IS NOT NULL)::int + (j.j_col IS NOT NULL AND j.j_col IS DISTINCT FROM j.j_req)::int"
        " + (j.j_resp IS NOT NULL AND j.j_resp IS DISTINCT FROM j.j_req AND j.j_resp IS DISTINCT FROM j.j_col)::int"
        " AS n_targets, o.applied, o.applied_cst"
        " FROM joined j"
        " LEFT JOIN (SELECT co.request_id, co.start_time, bool_or(co.status = 'applied') AS applied,"
        "  max(co.new_completion_start_time) FILTER (WHERE co.status = 'applied') AS applied_cst"
        f"  FROM {S}.corrections co WHERE co.start_time >= (SELECT first_start FROM span)"
        "  AND co.start_time <= (SELECT last_start FROM span) GROUP BY co.request_id, co.start_time) o"
        "  ON o.request_id = j.request_id AND o.start_time = j.start_time"
        "), decided AS MATERIALIZED ("
        " SELECT v.*, CASE"
        f" WHEN v.j_resp = '*' OR v.n_targets > 1 THEN '{oc.AMBIGUOUS}'"
        f" WHEN v.n_targets = 0 THEN CASE WHEN v.non_streaming THEN '{oc.NOT_STREAMING}' ELSE '{oc.NO_TRACE}' END"
        f" WHEN v.new_cst IS NULL THEN '{oc.NO_FIRST_TOKEN}'"
        f" WHEN v.new_cst < v.start_time OR v.new_cst > v.end_time THEN '{oc.OUT_OF_BOUNDS}'"
        f" WHEN :hold_rolled_back AND v.applied IS FALSE THEN '{oc.CHANGED}'"
        # our correction was overwritten since: the value is someone else's now
        f" WHEN v.applied IS TRUE AND v.old_cst IS DISTINCT FROM v.applied_cst THEN '{oc.CHANGED}'"
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


def _joined_by(row: str) -> str:
    """The names of the strategies that found a stream for `row`, sorted (NULLs left out)."""
    flags = {"col": "j_col", "req": "j_req", "resp": "j_resp"}
    names = ", ".join(f"CASE WHEN {row}.{flags[alias]} IS NOT NULL THEN '{name}' END"
                      for name, alias, _, _ in _STRATEGIES)
    return f"array_remove(ARRAY[{names}]::text[], NULL)"


def _chosen_stream(row: str) -> str:
    """A join of `row` (a `decided` row) to the stream its new value came from."""
    return f" JOIN best b ON b.strategy = {row}.pick AND b.rid = {row}.request_id AND b.rst = {row}.start_time"


# What the writer needs of a repaired row, staged in `batch_stage` (its column <- the value):
# where the row was read and which version, its guard values, the new value and the audit row's
# evidence (the corrections columns of the chosen stream).
_STAGED_ROW = (
    ("row_ctid", "d.row_ctid"), ("row_xmin", "d.row_xmin"), ("request_id", "d.request_id"),
    ("start_time", "d.start_time"), ("old_cst", "d.old_cst"), ("new_cst", "d.new_cst"),
    ("call_type", "d.call_type"), ("model_group", "d.model_group"),
    ("j_req", "d.j_req"), ("j_col", "d.j_col"), ("j_resp", "d.j_resp"),
    ("litellm_call_id", "b.litellm_call_id"), ("stream_seq", "b.stream_seq"),
    *((column, f"b.{source}") for column, source in _EVIDENCE_COLUMNS),
)


def _tally_sql(shape: SpendLogsShape, *, stage: bool) -> str:
    """The batch's one result row, from `decided`: candidates, outcome counts, the last candidate's
    keyset position, its candidates' UTC days and, when `stage`, the stage id its repaired rows
    were put in `batch_stage` under (NULL otherwise)."""
    counts = ", ".join(f"'{name}', count(*) FILTER (WHERE d.outcome = '{name}')" for name in oc.OUTCOMES)
    stage_id = "NULL::bigint"
    staging = ""
    if stage:
        rows = (*_STAGED_ROW, ("row_rel", "d.row_rel")) if shape.partitioned else _STAGED_ROW
        staging = (
            f", stage AS MATERIALIZED (SELECT nextval('{S}.batch_stage_id') AS id)"
            f", staged AS (INSERT INTO {S}.batch_stage (stage_id, " + ", ".join(c for c, _ in rows) + ")"
            " SELECT (SELECT id FROM stage), " + ", ".join(v for _, v in rows)
            + " FROM decided d" + _chosen_stream("d") + f" WHERE d.outcome = '{oc.REPAIRED}')"
        )
        stage_id = "(SELECT id FROM stage)"
    return staging + (
        f" SELECT count(*) AS scanned, jsonb_build_object({counts}) AS outcomes,"
        " max(d.start_time) AS last_start,"
        " max(d.request_id) FILTER (WHERE d.start_time = (SELECT last_start FROM span)) AS last_id,"
        f" array_agg(DISTINCT d.start_time::date) AS days, {stage_id} AS stage_id"
        " FROM decided d"
    )


def decide_statement(shape: SpendLogsShape, *, policy: str, keyset: bool, stage: bool) -> str:
    """The text of one batch's decision: read the next candidates, join their traces, decide each
    and, when `stage`, put the repaired rows in `batch_stage` for `write_statement`.

    Parameters: since, until, call_types, tolerance_ms, limit, hold_rolled_back, trace_lo/trace_hi
    (`trace_window`), and after_start/after_id when `keyset`. One row: (scanned, outcomes as
    {outcome: count}, last_start, last_id, days, stage_id). It writes nothing else. Run it under
    BATCH_PLAN_SETTINGS (`decide_batch` does).
    """
    if policy not in POLICY_COLUMNS:
        raise ValueError(f"unknown policy {policy!r}")
    return _decided_sql(shape, policy=policy, keyset=keyset) + _tally_sql(shape, stage=stage)


def write_statement(shape: SpendLogsShape) -> str:
    """The text of one batch's write: take the rows a decide statement staged (deleting them), apply
    the guarded UPDATE and insert their audit rows. Parameters: stage_id, run_id, policy. One row:
    (rows taken from the stage, rows written).

    Each row is reached at the physical address it was read from (a TID scan: no index probe, no
    join into the table) and written only if that address still holds the very version that was
    read (same xmin, request id, startTime and completionStartTime). A row updated in between has
    moved on: the guard holds, nothing is written to it, and it counts as `changed`.
    """
    touch = ", updated_at = CURRENT_TIMESTAMP" if shape.has_updated_at else ""
    # A TID is unique only within one partition of a partitioned SpendLogs; there the staged rows'
    # span also prunes the partitions the TIDs are looked up in.
    same_partition = (' AND s.tableoid = d.row_rel AND s."startTime" >= (SELECT first_start FROM span)'
                      ' AND s."startTime" <= (SELECT last_start FROM span)') if shape.partitioned else ""
    evidence = ", ".join(column for column, _ in _EVIDENCE_COLUMNS)
    return (
        f"WITH staged AS (DELETE FROM {S}.batch_stage WHERE stage_id = :stage_id RETURNING *)"
        ", span AS MATERIALIZED (SELECT min(start_time) AS first_start, max(start_time) AS last_start FROM staged)"
        ", updated AS ("
        f' UPDATE {shape.qualified} AS s SET "completionStartTime" = d.new_cst{touch}'
        " FROM staged d WHERE s.ctid = ANY (ARRAY(SELECT x.row_ctid FROM staged x))"
        f" AND s.ctid = d.row_ctid{same_partition} AND s.xmin = d.row_xmin"
        ' AND s.request_id = d.request_id AND s."startTime" = d.start_time'
        ' AND s."completionStartTime" IS NOT DISTINCT FROM d.old_cst'
        " RETURNING d.*"
        "), audited AS ("
        f" INSERT INTO {S}.corrections (request_id, start_time, run_id, policy, old_completion_start_time,"
        " new_completion_start_time, ttft_ms, litellm_call_id, stream_seq, call_type, model_group, joined_by,"
        f" {evidence})"
        f" SELECT u.request_id, u.start_time, :run_id, :policy, u.old_cst, u.new_cst,"
        f" {_ms('u.new_cst', 'u.start_time')}, u.litellm_call_id, u.stream_seq, u.call_type, u.model_group,"
        f" {_joined_by('u')}, " + ", ".join(f"u.{column}" for column, _ in _EVIDENCE_COLUMNS)
        + " FROM updated u RETURNING 1"
        ") SELECT (SELECT count(*) FROM staged), (SELECT count(*) FROM audited)"
    )


class StageLost(RuntimeError):
    """A decided batch's staged rows were gone when it was written (another command swept them as
    stale): its transaction must roll back and the batch be decided again."""


@dataclass(frozen=True)
class DecidedBatch:
    """One batch decided and not yet written: its candidates, outcomes, keyset end and UTC days (as
    `BatchResult`), and the stage id of its repaired rows in `batch_stage` (None when not staged)."""

    scanned: int
    outcomes: dict[str, int]
    last: Position | None
    days: frozenset[date]
    stage_id: int | None

    @property
    def repaired(self) -> int:
        return self.outcomes.get(oc.REPAIRED, 0)


def decide_batch(
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
    stage: bool,
) -> DecidedBatch:
    """Read the next `limit` candidates of [since, until) (naive UTC) after `after` and decide each.
    With `stage`, the repaired rows are put in `batch_stage` for `write_batch` (visible to other
    sessions once this transaction commits); nothing else is written."""
    sql = decide_statement(shape, policy=policy, keyset=after is not None, stage=stage)
    params: dict[str, Any] = {
        "since": since,
        "until": until,
        **trace_window(since, until),
        "call_types": list(call_types),
        "tolerance_ms": tolerance_ms,
        "limit": limit,
        "hold_rolled_back": hold_rolled_back,
    }
    if after is not None:
        params["after_start"] = after.start_time
        params["after_id"] = after.request_id
    conn.execute(text(BATCH_PLAN_SETTINGS))
    scanned, outcomes, last_start, last_id, days, stage_id = conn.execute(text(sql), params).one()
    conn.execute(text(PLANNER_DEFAULTS))
    found = {str(k): int(v) for k, v in (outcomes or {}).items() if v}
    last = Position(last_start, str(last_id)) if scanned else None
    return DecidedBatch(int(scanned), found, last, frozenset(days or ()), None if stage_id is None else int(stage_id))


def write_batch(conn: Connection, shape: SpendLogsShape, batch: DecidedBatch, *, run_id: int,
                policy: str) -> BatchResult:
    """Apply a staged batch's guarded UPDATE and audit rows; a `repaired` row the guard refused (it
    changed since it was read) counts as `changed` in the result. Raises StageLost, before anything
    of the batch is committed, when its staged rows are not all there."""
    if batch.stage_id is None:
        raise ValueError("the batch was decided without staging its repaired rows")
    conn.execute(text(BATCH_PLAN_SETTINGS))
    taken, written = conn.execute(text(write_statement(shape)),
                                  {"stage_id": batch.stage_id, "run_id": run_id, "policy": policy}).one()
    if int(taken) != batch.repaired:
        raise StageLost(f"{batch.repaired - int(taken)} of the {batch.repaired} staged row(s) of a decided batch"
                        f" (stage id {batch.stage_id}) were swept as stale before it was written")
    conn.execute(text(PLANNER_DEFAULTS))
    written = int(written)
    found = dict(batch.outcomes)
    # Every audit row is a repaired row the guarded UPDATE wrote; the rest changed under us.
    missed = batch.repaired - written
    if missed:
        found[oc.REPAIRED] -= missed
        found[oc.CHANGED] = found.get(oc.CHANGED, 0) + missed
    return BatchResult(batch.scanned, found, batch.last, batch.days)


def dry_result(batch: DecidedBatch) -> BatchResult:
    """A decided batch's result as a dry run reports it (nothing written)."""
    return BatchResult(batch.scanned, dict(batch.outcomes), batch.last, batch.days)


def drop_staged(conn: Connection, stage_ids: list[int]) -> int:
    """Delete staged rows of batches that will not be written (the command stopped); returns rows."""
    if not stage_ids:
        return 0
    return conn.execute(text(f"DELETE FROM {S}.batch_stage WHERE stage_id = ANY(:ids)"),
                        {"ids": stage_ids}).rowcount or 0


def drop_stale_staged(conn: Connection, older_than_s: float) -> int:
    """Delete staged rows older than `older_than_s` seconds (left by a killed command); returns rows."""
    return conn.execute(text(f"DELETE FROM {S}.batch_stage WHERE staged_at < now() - make_interval(secs => :age)"),
                        {"age": older_than_s}).rowcount or 0


def evidence_sql(row: str, chosen: str) -> str:
    """The evidence JSON of decided row `row` from its chosen stream `chosen` (NULL when none), as
    `ttft_reconcile.evidence()` renders an audit row's."""
    values = ", ".join(f"{chosen}.{column}" for _, column in _EVIDENCE_COLUMNS)
    return (f"CASE WHEN {chosen}.rid IS NOT NULL THEN {S}.correction_evidence({_joined_by(row)},"
            f" {chosen}.litellm_call_id, {chosen}.stream_seq, {values}) END")


def decide_sql_for_tests(shape: SpendLogsShape, policy: str) -> str:
    """The decision CTEs followed by a SELECT of every decided column (tests compare it with classify.py)."""
    return (
        _decided_sql(shape, policy=policy, keyset=False)
        + " SELECT d.request_id, d.start_time, d.outcome, d.new_cst, b.litellm_call_id AS trace_call_id,"
        f" b.stream_seq, {_ms('d.new_cst', 'd.start_time')} AS ttft_ms, {evidence_sql('d', 'b')} AS evidence"
        " FROM decided d" + _chosen_stream("d").replace(" JOIN", " LEFT JOIN", 1)
        + " ORDER BY d.start_time, d.request_id"
    )
