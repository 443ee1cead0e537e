"""Initial schema: stream traces, corrections, runs, checkpoints, backfill slices, leases, settings, rollup.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE ttft_reconcile.runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mode text NOT NULL CHECK (mode IN ('run', 'backfill', 'rollback')),
    dry_run boolean NOT NULL DEFAULT false,
    window_since timestamptz,
    window_until timestamptz,
    policy text,
    tolerance_ms double precision,
    call_types text[],
    candidates bigint NOT NULL DEFAULT 0,
    outcomes jsonb NOT NULL DEFAULT '{}'::jsonb,
    status text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
    error text,
    version text,
    litellm_schema text,
    host text,
    worker text,
    pid integer,
    backfill_id bigint,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz,
    finished_at timestamptz
);
COMMENT ON TABLE ttft_reconcile.runs IS 'One row per invocation of run, backfill (per worker) or rollback.';

-- One row per upstream stream, written by the capture inside the proxy, read by the job.
-- Range-partitioned by UTC day of request_start_at so pruning drops partitions (no DELETE,
-- no bloat). Postgres requires the partition key in the primary key, so the key is
-- (litellm_call_id, stream_seq, request_start_at); a trace is written once with one start.
CREATE TABLE ttft_reconcile.stream_traces (
    litellm_call_id text NOT NULL,
    stream_seq integer NOT NULL DEFAULT 0,
    response_id text,
    route text,
    call_type text,
    provider text,
    model text,
    litellm_version text,
    capture_version text,
    request_start_at timestamptz NOT NULL,
    api_call_start_at timestamptz,
    first_chunk_at timestamptz,
    first_event_at timestamptz,
    first_output_at timestamptz,
    first_visible_at timestamptz,
    last_chunk_at timestamptz,
    chunk_count integer NOT NULL DEFAULT 0,
    event_count integer NOT NULL DEFAULT 0,
    bytes_total bigint NOT NULL DEFAULT 0,
    outcome text NOT NULL
        CHECK (outcome IN ('completed', 'client_disconnected', 'upstream_error', 'cancelled')),
    stamped_by text,
    chunk_offsets_us bigint[],
    event_offsets_us bigint[],
    event_kinds text[],
    truncated boolean NOT NULL DEFAULT false,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (litellm_call_id, stream_seq, request_start_at)
) PARTITION BY RANGE (request_start_at);
CREATE TABLE ttft_reconcile.stream_traces_default PARTITION OF ttft_reconcile.stream_traces DEFAULT;
CREATE INDEX stream_traces_response_id ON ttft_reconcile.stream_traces (response_id)
    WHERE response_id IS NOT NULL;

-- Creates the day partitions [first_day, last_day] (UTC days) that do not exist yet, moving
-- any rows that already landed in the default partition. Returns how many it created.
CREATE FUNCTION ttft_reconcile.ensure_trace_partitions(first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    day date;
    part text;
    lo timestamptz;
    hi timestamptz;
    created integer := 0;
BEGIN
    FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        part := 'stream_traces_p' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass('ttft_reconcile.' || quote_ident(part)) IS NOT NULL;
        lo := day::timestamp AT TIME ZONE 'UTC';
        hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
        IF EXISTS (SELECT 1 FROM ttft_reconcile.stream_traces_default
                   WHERE request_start_at >= lo AND request_start_at < hi) THEN
            LOCK TABLE ttft_reconcile.stream_traces_default IN SHARE ROW EXCLUSIVE MODE;
            EXECUTE format('CREATE TABLE ttft_reconcile.%I (LIKE ttft_reconcile.stream_traces '
                           'INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            EXECUTE format('WITH moved AS (DELETE FROM ttft_reconcile.stream_traces_default '
                           'WHERE request_start_at >= %L AND request_start_at < %L RETURNING *) '
                           'INSERT INTO ttft_reconcile.%I SELECT * FROM moved', lo, hi, part);
            EXECUTE format('ALTER TABLE ttft_reconcile.stream_traces ATTACH PARTITION ttft_reconcile.%I '
                           'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        ELSE
            EXECUTE format('CREATE TABLE ttft_reconcile.%I PARTITION OF ttft_reconcile.stream_traces '
                           'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        END IF;
        created := created + 1;
    END LOOP;
    RETURN created;
END
$fn$;

-- The audit trail: one row per SpendLogs row the job changed. No foreign key to SpendLogs:
-- LiteLLM's retention deletes rows underneath us.
CREATE TABLE ttft_reconcile.corrections (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id text NOT NULL,
    start_time timestamp(3) without time zone NOT NULL,
    run_id bigint NOT NULL REFERENCES ttft_reconcile.runs (id),
    policy text NOT NULL,
    old_completion_start_time timestamp(3) without time zone,
    new_completion_start_time timestamp(3) without time zone NOT NULL,
    ttft_ms double precision NOT NULL,
    litellm_call_id text,
    stream_seq integer,
    call_type text,
    model_group text,
    evidence jsonb NOT NULL DEFAULT '{}'::jsonb,
    status text NOT NULL DEFAULT 'applied' CHECK (status IN ('applied', 'reverted')),
    reverted_by_run bigint REFERENCES ttft_reconcile.runs (id),
    applied_at timestamptz NOT NULL DEFAULT now(),
    reverted_at timestamptz
);
-- At most one live correction per SpendLogs row: a second writer fails instead of stacking.
CREATE UNIQUE INDEX corrections_one_applied
    ON ttft_reconcile.corrections (request_id, start_time) WHERE status = 'applied';
CREATE INDEX corrections_run_id ON ttft_reconcile.corrections (run_id);
CREATE INDEX corrections_start_time ON ttft_reconcile.corrections (start_time);

-- The incremental run's position per lane.
CREATE TABLE ttft_reconcile.checkpoints (
    lane text PRIMARY KEY,
    position_start_time timestamp(3) without time zone NOT NULL,
    position_request_id text NOT NULL DEFAULT '',
    run_id bigint REFERENCES ttft_reconcile.runs (id),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A backfill is a set of slices that any number of worker processes claim with SKIP LOCKED.
CREATE TABLE ttft_reconcile.backfills (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    window_since timestamptz NOT NULL,
    window_until timestamptz NOT NULL,
    policy text NOT NULL,
    tolerance_ms double precision NOT NULL,
    call_types text[] NOT NULL,
    slice_seconds integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (window_since, window_until, policy, tolerance_ms, call_types)
);
CREATE TABLE ttft_reconcile.backfill_slices (
    backfill_id bigint NOT NULL REFERENCES ttft_reconcile.backfills (id) ON DELETE CASCADE,
    slice_no integer NOT NULL,
    slice_since timestamptz NOT NULL,
    slice_until timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done')),
    worker text,
    run_id bigint REFERENCES ttft_reconcile.runs (id),
    claimed_at timestamptz,
    heartbeat_at timestamptz,
    position_start_time timestamp(3) without time zone,
    position_request_id text,
    rows_scanned bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (backfill_id, slice_no)
);

-- Lane leases: the lock that survives PgBouncer transaction pooling (advisory locks do not).
CREATE TABLE ttft_reconcile.leases (
    lane text PRIMARY KEY,
    holder text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- Small key/value settings the SQL dashboard objects read (call types, tolerance, LiteLLM schema).
CREATE TABLE ttft_reconcile.settings (
    key text PRIMARY KEY,
    value jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ttft_reconcile.settings (key, value) VALUES
    ('call_types', '["anthropic_messages", "aresponses", "pass_through_endpoint"]'::jsonb),
    ('tolerance_ms', '5'::jsonb),
    ('litellm_schema', '"public"'::jsonb);

-- Dashboard rollup, refreshed for the UTC days a run touched.
CREATE TABLE ttft_reconcile.ttft_daily (
    day date NOT NULL,
    model_group text NOT NULL,
    provider text NOT NULL,
    call_type text NOT NULL,
    n bigint NOT NULL,
    p50_ms double precision,
    p90_ms double precision,
    p95_ms double precision,
    p99_ms double precision,
    n_original bigint NOT NULL DEFAULT 0,
    n_reconciled bigint NOT NULL DEFAULT 0,
    n_unresolved bigint NOT NULL DEFAULT 0,
    refreshed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, model_group, provider, call_type)
);

SELECT ttft_reconcile.ensure_trace_partitions(
    ((now() AT TIME ZONE 'UTC')::date - 1), ((now() AT TIME ZONE 'UTC')::date + 7));
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS ttft_reconcile.ttft_daily;
DROP TABLE IF EXISTS ttft_reconcile.settings;
DROP TABLE IF EXISTS ttft_reconcile.leases;
DROP TABLE IF EXISTS ttft_reconcile.backfill_slices;
DROP TABLE IF EXISTS ttft_reconcile.backfills;
DROP TABLE IF EXISTS ttft_reconcile.checkpoints;
DROP TABLE IF EXISTS ttft_reconcile.corrections;
DROP FUNCTION IF EXISTS ttft_reconcile.ensure_trace_partitions(date, date);
DROP TABLE IF EXISTS ttft_reconcile.stream_traces;
DROP TABLE IF EXISTS ttft_reconcile.runs;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
