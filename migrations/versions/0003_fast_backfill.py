"""Faster batches: a start-time index on the traces, typed evidence and no foreign keys on the
audit trail, and the daily rollup aggregated inside one statement per range of days.

- `stream_traces (request_start_at)`: a batch reads the traces of its own time span (an hour
  either side) with one range scan and hash-joins them to its candidates, instead of probing
  every day partition per candidate and per join strategy.
- `corrections`: the evidence is stored in typed columns; building it as JSON for every audit
  row cost more than the row's UPDATE. `ttft_reconcile.evidence(c)` renders the JSON on read,
  exactly as it was stored before. Rows written before this revision are converted; evidence
  already compacted stays in `legacy_evidence`.
- `corrections` loses its foreign keys to `runs`: each was a trigger call per audited row. The
  job writes the run row first, in its own transaction, and never deletes runs.
- `ttft_daily_rows(since, until)`: the rollup of [since, until) aggregated where the rows are
  read (spend_logs_ttft returns every row through a tuplestore first).
- `rollup_pending`: the UTC days whose `ttft_daily` rows must be rebuilt, marked in the batch
  transaction that changed them and cleared by the refresh that rebuilt them, so a job that
  dies between its last batch and its refresh leaves the work to the next one.
- Both dashboard functions plan their join to the corrections as a hash join. Right after a backfill the audit trail has
  no statistics yet; Postgres took a day's corrections for two rows and nested a loop over them
  for every SpendLogs row of the day (70 s for one day of 80,000 rows, instead of 0.3 s).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_POLICIES = ("first_chunk", "first_event", "first_output", "first_visible")
_EVIDENCE_ARGS = (
    "joined_by text[], litellm_call_id text, stream_seq integer, streams bigint, trace_outcome text,"
    " chunk_count integer, request_start_at timestamp, api_call_start_at timestamp,"
    " first_chunk_at timestamp, first_event_at timestamp, first_output_at timestamp, first_visible_at timestamp"
)


def _ms(later: str, earlier: str) -> str:
    return f"round((extract(epoch FROM {later} - {earlier}) * 1000)::numeric, 3)::float8"


def _per_policy(origin: str) -> str:
    return "jsonb_build_object(" + ", ".join(f"'{p}', {_ms(f'{p}_at', origin)}" for p in _POLICIES) + ")"


_INSTANTS_FROM_JSON = ",\n    ".join(
    f"{p}_at = (c.legacy_evidence -> 'instants' ->> '{p}')::timestamp" for p in _POLICIES)

UPGRADE = rf"""
CREATE INDEX stream_traces_request_start_at ON ttft_reconcile.stream_traces (request_start_at);

CREATE TABLE ttft_reconcile.rollup_pending (
    day date PRIMARY KEY,
    marked_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ttft_reconcile.rollup_pending IS
    'UTC days whose ttft_daily rows must be rebuilt: marked by the batch that changed them,'
    ' cleared by the refresh that rebuilt them.';

ALTER TABLE ttft_reconcile.corrections
    DROP CONSTRAINT IF EXISTS corrections_run_id_fkey,
    DROP CONSTRAINT IF EXISTS corrections_reverted_by_run_fkey,
    ADD COLUMN joined_by text[],
    ADD COLUMN streams bigint,
    ADD COLUMN trace_outcome text,
    ADD COLUMN chunk_count integer,
    ADD COLUMN request_start_at timestamp without time zone,
    ADD COLUMN api_call_start_at timestamp without time zone,
    ADD COLUMN first_chunk_at timestamp without time zone,
    ADD COLUMN first_event_at timestamp without time zone,
    ADD COLUMN first_output_at timestamp without time zone,
    ADD COLUMN first_visible_at timestamp without time zone;
ALTER TABLE ttft_reconcile.corrections RENAME COLUMN evidence TO legacy_evidence;
ALTER TABLE ttft_reconcile.corrections ALTER COLUMN legacy_evidence DROP NOT NULL,
    ALTER COLUMN legacy_evidence DROP DEFAULT;
COMMENT ON TABLE ttft_reconcile.corrections IS
    'The audit trail: one row per SpendLogs row the job changed. Times are naive UTC; the chosen'
    ' stream''s evidence is in joined_by .. first_visible_at, as JSON through ttft_reconcile.evidence(c).';

-- The evidence JSON of one correction (instants as naive UTC ISO 8601, TTFT in ms from both
-- origins under every policy), as the job wrote it before this revision.
CREATE FUNCTION ttft_reconcile.correction_evidence({_EVIDENCE_ARGS})
RETURNS jsonb LANGUAGE sql STABLE AS $fn$
SELECT jsonb_build_object(
    'instants', jsonb_build_object({", ".join(f"'{p}', to_jsonb({p}_at)" for p in _POLICIES)}),
    'join', to_jsonb(joined_by),
    'litellm_call_id', litellm_call_id, 'stream_seq', stream_seq, 'streams', streams,
    'trace_outcome', trace_outcome, 'chunk_count', chunk_count,
    'request_start_at', to_jsonb(request_start_at), 'api_call_start_at', to_jsonb(api_call_start_at),
    'ttft_ms_from_request_start', {_per_policy("request_start_at")},
    'ttft_ms_from_api_call_start', {_per_policy("api_call_start_at")})
$fn$;

CREATE FUNCTION ttft_reconcile.evidence(c ttft_reconcile.corrections)
RETURNS jsonb LANGUAGE sql STABLE AS $fn$
SELECT coalesce(c.legacy_evidence,
                CASE WHEN c.joined_by IS NOT NULL THEN ttft_reconcile.correction_evidence(
                    c.joined_by, c.litellm_call_id, c.stream_seq, c.streams, c.trace_outcome, c.chunk_count,
                    c.request_start_at, c.api_call_start_at,
                    c.first_chunk_at, c.first_event_at, c.first_output_at, c.first_visible_at) END,
                '{{}}'::jsonb)
$fn$;
COMMENT ON FUNCTION ttft_reconcile.evidence(ttft_reconcile.corrections) IS
    'The evidence of a correction as JSON: SELECT ttft_reconcile.evidence(c) FROM ttft_reconcile.corrections c';

-- Earlier rows: full evidence JSON becomes typed columns (it renders back identically).
UPDATE ttft_reconcile.corrections c
SET joined_by = ARRAY(SELECT jsonb_array_elements_text(c.legacy_evidence -> 'join')),
    streams = (c.legacy_evidence ->> 'streams')::bigint,
    trace_outcome = c.legacy_evidence ->> 'trace_outcome',
    chunk_count = (c.legacy_evidence ->> 'chunk_count')::integer,
    request_start_at = (c.legacy_evidence ->> 'request_start_at')::timestamp,
    api_call_start_at = (c.legacy_evidence ->> 'api_call_start_at')::timestamp,
    {_INSTANTS_FROM_JSON},
    legacy_evidence = NULL
WHERE c.legacy_evidence ? 'instants' AND NOT c.legacy_evidence ? 'compacted'
  AND jsonb_typeof(c.legacy_evidence -> 'join') = 'array';

ALTER FUNCTION ttft_reconcile.spend_logs_ttft(timestamptz, timestamptz) SET enable_nestloop = off;
ALTER FUNCTION ttft_reconcile.spend_logs_ttft(timestamptz, timestamptz) SET enable_hashjoin = on;

-- ttft_daily's rows for [since, until): spend_logs_ttft's rows aggregated per UTC day, model
-- group, provider and call type in the same statement that reads them.
CREATE FUNCTION ttft_reconcile.ttft_daily_rows(since timestamptz, until timestamptz)
RETURNS TABLE (
    day date, model_group text, provider text, call_type text, n bigint,
    p50_ms double precision, p90_ms double precision, p95_ms double precision, p99_ms double precision,
    n_original bigint, n_reconciled bigint, n_unresolved bigint
)
LANGUAGE plpgsql STABLE SET enable_nestloop = off SET enable_hashjoin = on AS $fn$
DECLARE
    v_schema text;
    v_call_types text[];
    v_tolerance_ms double precision;
BEGIN
    SELECT coalesce((SELECT st.value #>> '{{}}' FROM ttft_reconcile.settings st
                     WHERE st.key = 'litellm_schema'), 'public')
      INTO v_schema;
    SELECT coalesce((SELECT array_agg(e) FROM ttft_reconcile.settings st,
                            jsonb_array_elements_text(st.value) e
                     WHERE st.key = 'call_types'),
                    ARRAY['anthropic_messages', 'aresponses', 'pass_through_endpoint'])
      INTO v_call_types;
    SELECT coalesce((SELECT (st.value #>> '{{}}')::double precision FROM ttft_reconcile.settings st
                     WHERE st.key = 'tolerance_ms'), 5)
      INTO v_tolerance_ms;
    RETURN QUERY EXECUTE
        'SELECT x.day, x.model_group, x.provider, x.call_type, x.n, x.q[1], x.q[2], x.q[3], x.q[4],'
        ' x.n_original, x.n_reconciled, x.n_unresolved FROM ('
        ' SELECT t.start_time::date AS day, t.model_group, t.provider, t.call_type, count(*) AS n,'
        ' percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY t.ttft_ms)'
        '   FILTER (WHERE t.source <> ''unresolved'') AS q,'
        ' count(*) FILTER (WHERE t.source = ''original'') AS n_original,'
        ' count(*) FILTER (WHERE t.source = ''reconciled'') AS n_reconciled,'
        ' count(*) FILTER (WHERE t.source = ''unresolved'') AS n_unresolved'
        ' FROM (' || ttft_reconcile.spend_logs_ttft_sql(v_schema) || ') AS t(request_id, start_time,'
        ' model_group, provider, call_type, ttft_ms, source, litellm_ttft_ms)'
        ' GROUP BY 1, 2, 3, 4) x'
        USING since AT TIME ZONE 'UTC', until AT TIME ZONE 'UTC',
              v_call_types, make_interval(secs => v_tolerance_ms / 1000.0);
END
$fn$;
"""

DOWNGRADE = rf"""
DROP FUNCTION IF EXISTS ttft_reconcile.ttft_daily_rows(timestamptz, timestamptz);
DROP TABLE IF EXISTS ttft_reconcile.rollup_pending;
ALTER FUNCTION ttft_reconcile.spend_logs_ttft(timestamptz, timestamptz) RESET ALL;
ALTER TABLE ttft_reconcile.corrections RENAME COLUMN legacy_evidence TO evidence;
UPDATE ttft_reconcile.corrections c
SET evidence = ttft_reconcile.correction_evidence(
        c.joined_by, c.litellm_call_id, c.stream_seq, c.streams, c.trace_outcome, c.chunk_count,
        c.request_start_at, c.api_call_start_at,
        c.first_chunk_at, c.first_event_at, c.first_output_at, c.first_visible_at)
WHERE c.evidence IS NULL AND c.joined_by IS NOT NULL;
UPDATE ttft_reconcile.corrections SET evidence = '{{}}'::jsonb WHERE evidence IS NULL;
DROP FUNCTION IF EXISTS ttft_reconcile.evidence(ttft_reconcile.corrections);
DROP FUNCTION IF EXISTS ttft_reconcile.correction_evidence({_EVIDENCE_ARGS});
ALTER TABLE ttft_reconcile.corrections
    ALTER COLUMN evidence SET DEFAULT '{{}}'::jsonb,
    ALTER COLUMN evidence SET NOT NULL,
    DROP COLUMN joined_by, DROP COLUMN streams, DROP COLUMN trace_outcome, DROP COLUMN chunk_count,
    DROP COLUMN request_start_at, DROP COLUMN api_call_start_at, DROP COLUMN first_chunk_at,
    DROP COLUMN first_event_at, DROP COLUMN first_output_at, DROP COLUMN first_visible_at,
    ADD CONSTRAINT corrections_run_id_fkey FOREIGN KEY (run_id) REFERENCES ttft_reconcile.runs (id),
    ADD CONSTRAINT corrections_reverted_by_run_fkey FOREIGN KEY (reverted_by_run) REFERENCES ttft_reconcile.runs (id);
COMMENT ON TABLE ttft_reconcile.corrections IS NULL;
DROP INDEX IF EXISTS ttft_reconcile.stream_traces_request_start_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
