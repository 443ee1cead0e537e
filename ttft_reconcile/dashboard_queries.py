"""All SQL of the publish area: rollup, quantiles, report, explain, export, prune.

Instants passed in are aware UTC datetimes (bound as timestamptz); SpendLogs and
corrections hold naive UTC `timestamp(3)`. Every read of SpendLogs names its columns:
the JSON columns (metadata, messages, response, proxy_server_request) are never read.
"""

from __future__ import annotations

from typing import Final

QUANTILES: Final[tuple[float, ...]] = (0.5, 0.9, 0.95, 0.99)

# --- settings ---------------------------------------------------------------------------

UPSERT_SETTING: Final = """
INSERT INTO ttft_reconcile.settings (key, value, updated_at)
VALUES (:key, CAST(:value AS jsonb), now())
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at
WHERE ttft_reconcile.settings.value IS DISTINCT FROM EXCLUDED.value
"""

SELECT_SETTINGS: Final = "SELECT key, value FROM ttft_reconcile.settings"

# --- ttft_daily -------------------------------------------------------------------------

# Concurrent refreshes (backfill workers, a run next to a backfill) take turns: without this,
# two DELETE + INSERT of the same day collide on the primary key.
# How a rebuild of at most MAX_DAYS_PER_REFRESH days reads SpendLogs: through the startTime index
# (a bitmap heap scan of the days' pages), never by a sequential scan. On a table a few days
# long Postgres preferred reading all of it for each day; a table months long must cost a day's
# pages, whatever the statistics say. The percentiles' sort stays in memory. ROLLUP_PLAN_RESET
# restores the session's values for the rest of the transaction.
_ROLLUP_PLANNER = {"enable_seqscan": "off", "work_mem": "64MB"}
ROLLUP_PLAN: Final = "SELECT " + ", ".join(f"set_config('{k}', '{v}', true)" for k, v in _ROLLUP_PLANNER.items())
ROLLUP_PLAN_RESET: Final = ("SELECT set_config(name, reset_val, true) FROM pg_settings WHERE name IN ("
                            + ", ".join(f"'{k}'" for k in _ROLLUP_PLANNER) + ")")
LOCK_DAILY: Final = "SELECT pg_advisory_xact_lock(hashtextextended('ttft_reconcile.ttft_daily', 0))"
# Days a batch changed wait here until a refresh rebuilt them. The refresh clears its days
# first: a batch marking one of them meanwhile waits for the refresh to commit, and marks it anew.
MARK_PENDING: Final = """
INSERT INTO ttft_reconcile.rollup_pending (day) SELECT unnest(CAST(:days AS date[]))
ON CONFLICT (day) DO UPDATE SET marked_at = now()
"""
CLEAR_PENDING: Final = "DELETE FROM ttft_reconcile.rollup_pending WHERE day >= :first_day AND day <= :last_day"
# Pending days a command refreshes besides its own: those in its window, and those whose marker
# has not refreshed them for a while (it died). A day whose mark is locked is skipped: a refresh
# under way holds it (and its result will hold every change: a batch that changes the day must
# mark it, and waits for that refresh to commit), or a batch still open does (its job refreshes
# the day after it commits). Waiting here for every such day ran into --lock-timeout; the closing
# refresh waits only for its own window's (PENDING_DAYS_WAIT) and warns when that times out.
PENDING_DAYS: Final = """
SELECT day FROM ttft_reconcile.rollup_pending
WHERE (day >= CAST(:first_day AS date) AND day <= CAST(:last_day AS date))
   OR marked_at < now() - CAST(:stale AS interval)
FOR UPDATE SKIP LOCKED
"""
# The pending days of a command's own window that the first pass skipped, waited for (up to
# lock_timeout): a refresh under way that commits has cleared them (they are then not returned),
# one that fails or whose job was killed leaves them for this command.
PENDING_DAYS_WAIT: Final = """
SELECT day FROM ttft_reconcile.rollup_pending
WHERE day >= CAST(:first_day AS date) AND day <= CAST(:last_day AS date)
FOR UPDATE
"""
DELETE_DAILY: Final = "DELETE FROM ttft_reconcile.ttft_daily WHERE day >= :first_day AND day <= :last_day"

# The UTC days [first_day, last_day], read and aggregated in one statement (migration 0003).
INSERT_DAILY: Final = """
INSERT INTO ttft_reconcile.ttft_daily
    (day, model_group, provider, call_type, n, p50_ms, p90_ms, p95_ms, p99_ms,
     n_original, n_reconciled, n_unresolved, refreshed_at)
SELECT r.day, r.model_group, r.provider, r.call_type, r.n, r.p50_ms, r.p90_ms, r.p95_ms, r.p99_ms,
       r.n_original, r.n_reconciled, r.n_unresolved, now()
FROM ttft_reconcile.ttft_daily_rows(CAST(:first_day AS date)::timestamp AT TIME ZONE 'UTC',
                                    (CAST(:last_day AS date) + 1)::timestamp AT TIME ZONE 'UTC') AS r
"""

# --- window quantiles (metrics) ---------------------------------------------------------

# Model groups ranked by resolved rows; those past :cap fold into 'other'.
WINDOW_QUANTILES: Final = """
WITH resolved AS (
    SELECT CASE WHEN t.model_group = '' THEN 'unknown' ELSE t.model_group END AS model_group, t.ttft_ms
    FROM ttft_reconcile.spend_logs_ttft(:since, :until) AS t
    WHERE t.source <> 'unresolved' AND t.ttft_ms IS NOT NULL
), ranked AS (
    SELECT model_group, row_number() OVER (ORDER BY count(*) DESC, model_group) AS rank
    FROM resolved GROUP BY model_group
)
SELECT CASE WHEN r.rank <= :cap THEN r.model_group ELSE 'other' END AS label,
       percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY x.ttft_ms) AS q
FROM resolved x JOIN ranked r USING (model_group)
GROUP BY 1
ORDER BY 1
"""

# --- report -----------------------------------------------------------------------------

# Per UTC day and model group. "before" = what LiteLLM wrote, "after" = current best; both over
# the same rows (original + reconciled), so the two distributions compare like for like.
REPORT_ROWS: Final = """
SELECT date_trunc('day', t.start_time)::date AS day,
       t.model_group,
       count(*) AS n,
       count(*) FILTER (WHERE t.source = 'original') AS n_original,
       count(*) FILTER (WHERE t.source = 'reconciled') AS n_reconciled,
       count(*) FILTER (WHERE t.source = 'unresolved') AS n_unresolved,
       percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY t.litellm_ttft_ms)
           FILTER (WHERE t.source <> 'unresolved') AS before_q,
       percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY t.ttft_ms)
           FILTER (WHERE t.source <> 'unresolved') AS after_q
FROM ttft_reconcile.spend_logs_ttft(:since, :until) AS t
GROUP BY 1, 2
ORDER BY 1, 2
"""

# Histogram of before/after TTFT (ms) over fixed edges; bucket 0 is below the first edge,
# bucket len(edges) at or above the last one.
REPORT_HISTOGRAM: Final = """
SELECT b.bucket, sum(b.before_n)::bigint AS before_n, sum(b.after_n)::bigint AS after_n
FROM ttft_reconcile.spend_logs_ttft(:since, :until) AS t
CROSS JOIN LATERAL (
    VALUES (width_bucket(t.litellm_ttft_ms, CAST(:edges AS double precision[])), 1, 0),
           (width_bucket(t.ttft_ms, CAST(:edges AS double precision[])), 0, 1)
) AS b(bucket, before_n, after_n)
WHERE t.source <> 'unresolved' AND b.bucket IS NOT NULL
GROUP BY b.bucket
ORDER BY b.bucket
"""

# --- explain ----------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """A Postgres identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def explain_spend_log(schema: str, has_call_id: bool) -> str:
    """The SpendLogs row of one request id (scalar columns only)."""
    schema_sql = quote_ident(schema)
    call_id = "s.litellm_call_id" if has_call_id else "NULL::text"
    return f"""
SELECT s.request_id, s.call_type, s."startTime" AS start_time, s."endTime" AS end_time,
       s."completionStartTime" AS completion_start_time, s.model, s.model_group,
       s.custom_llm_provider AS provider, s.api_base, {call_id} AS litellm_call_id
FROM {schema_sql}."LiteLLM_SpendLogs" s
WHERE s.request_id = :request_id
"""


EXPLAIN_TRACE_COLUMNS: Final = """
t.litellm_call_id, t.stream_seq, t.response_id, t.route, t.call_type, t.provider, t.model,
t.litellm_version, t.capture_version, t.request_start_at, t.api_call_start_at, t.first_chunk_at,
t.first_event_at, t.first_output_at, t.first_visible_at, t.last_chunk_at, t.chunk_count,
t.event_count, t.outcome, t.truncated
"""

# Traces near the row's start (partition pruning): request_start_at within the join slack of "startTime".
EXPLAIN_TRACES_BY_CALL_ID: Final = f"""
SELECT {EXPLAIN_TRACE_COLUMNS} FROM ttft_reconcile.stream_traces t
WHERE t.litellm_call_id = :key
  AND t.request_start_at >= :start - CAST(:slack AS interval) AND t.request_start_at < :start + CAST(:slack AS interval)
ORDER BY t.stream_seq
"""

EXPLAIN_TRACES_BY_RESPONSE_ID: Final = f"""
SELECT {EXPLAIN_TRACE_COLUMNS} FROM ttft_reconcile.stream_traces t
WHERE t.response_id = :key
  AND t.request_start_at >= :start - CAST(:slack AS interval) AND t.request_start_at < :start + CAST(:slack AS interval)
ORDER BY t.litellm_call_id, t.stream_seq
"""

EXPLAIN_EARLIEST_TRACE: Final = "SELECT min(request_start_at) FROM ttft_reconcile.stream_traces"

EXPLAIN_CORRECTIONS: Final = """
SELECT c.id, c.run_id, c.policy, c.old_completion_start_time, c.new_completion_start_time, c.ttft_ms,
       c.status, c.reverted_by_run, c.applied_at, c.reverted_at, ttft_reconcile.evidence(c) AS evidence,
       r.mode AS run_mode, r.started_at AS run_started_at, r.status AS run_status
FROM ttft_reconcile.corrections c
LEFT JOIN ttft_reconcile.runs r ON r.id = c.run_id
WHERE c.request_id = :request_id
ORDER BY c.id
"""

# --- export -----------------------------------------------------------------------------

# The evidence holds each origin's TTFT per policy ({policy: ms}); a plain number (evidence
# written by hand before schema 0003) is accepted too.
ORIGIN_MS: Final = """CASE jsonb_typeof(e.evidence -> '{key}')
           WHEN 'object' THEN CAST(e.evidence -> '{key}' ->> c.policy AS double precision)
           WHEN 'number' THEN CAST(e.evidence ->> '{key}' AS double precision) END"""

EXPORT_CORRECTIONS: Final = f"""
SELECT c.request_id, c.litellm_call_id, c.start_time, c.old_completion_start_time,
       c.new_completion_start_time, c.ttft_ms,
       {ORIGIN_MS.format(key="ttft_ms_from_request_start")} AS ttft_ms_from_request_start,
       {ORIGIN_MS.format(key="ttft_ms_from_api_call_start")} AS ttft_ms_from_api_call_start,
       c.policy, c.model_group, c.call_type, c.run_id, c.status
FROM ttft_reconcile.corrections c
CROSS JOIN LATERAL (SELECT ttft_reconcile.evidence(c) AS evidence) e
WHERE c.start_time >= CAST(:since AS timestamptz) AT TIME ZONE 'UTC'
  AND c.start_time < CAST(:until AS timestamptz) AT TIME ZONE 'UTC'
  AND (c.status = 'applied' OR :include_reverted)
ORDER BY c.start_time, c.request_id, c.id
"""

# --- prune ------------------------------------------------------------------------------

LIST_TRACE_PARTITIONS: Final = """
SELECT c.relname
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
JOIN pg_namespace n ON n.oid = p.relnamespace
WHERE n.nspname = 'ttft_reconcile' AND p.relname = 'stream_traces'
ORDER BY c.relname
"""

PARTITION_ROWS: Final = "SELECT count(*) FROM ttft_reconcile.{part}"

COUNT_DEFAULT_OLDER: Final = """
SELECT count(*) FROM ttft_reconcile.stream_traces_default WHERE request_start_at < :cutoff
"""

DELETE_DEFAULT_OLDER: Final = """
DELETE FROM ttft_reconcile.stream_traces_default WHERE request_start_at < :cutoff
"""

# Evidence JSON of rows written before schema 0003 (newer rows keep theirs in typed columns,
# ~100 bytes): keeps the small scalar keys (both TTFT origins, the join), drops the rest.
COMPACT_EVIDENCE: Final = """
WITH batch AS (
    SELECT id FROM ttft_reconcile.corrections
    WHERE start_time < CAST(:cutoff AS timestamptz) AT TIME ZONE 'UTC'
      AND legacy_evidence IS NOT NULL AND NOT (legacy_evidence ? 'compacted')
    ORDER BY start_time
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE ttft_reconcile.corrections c
SET legacy_evidence = jsonb_strip_nulls(jsonb_build_object(
        'compacted', true,
        'join', c.legacy_evidence -> 'join',
        'ttft_ms_from_request_start', c.legacy_evidence -> 'ttft_ms_from_request_start',
        'ttft_ms_from_api_call_start', c.legacy_evidence -> 'ttft_ms_from_api_call_start'))
FROM batch WHERE c.id = batch.id
"""

COUNT_COMPACTABLE: Final = """
SELECT count(*) FROM ttft_reconcile.corrections
WHERE start_time < CAST(:cutoff AS timestamptz) AT TIME ZONE 'UTC'
  AND legacy_evidence IS NOT NULL AND NOT (legacy_evidence ? 'compacted')
"""

ENSURE_PARTITIONS: Final = "SELECT ttft_reconcile.ensure_trace_partitions(:first_day, :last_day)"
