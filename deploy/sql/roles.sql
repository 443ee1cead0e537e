-- Least-privilege roles for ttft_reconcile.
--
-- Run once per database, as a superuser (or as the owner of LiteLLM's tables and of the
-- ttft_reconcile schema), AFTER `ttft-reconcile migrate` and after the job's first run has
-- recorded where LiteLLM's tables live (ttft_reconcile.settings, key litellm_schema; the
-- migration's default is public). Safe to run again, e.g. after each migrate.
--
-- Three NOLOGIN group roles; give them to login roles of your own, for example:
--   CREATE ROLE ttft_job LOGIN PASSWORD '...' IN ROLE ttft_reconcile_job;
--   CREATE ROLE ttft_capture LOGIN PASSWORD '...' IN ROLE ttft_reconcile_capture;
--   CREATE ROLE grafana_ttft LOGIN PASSWORD '...' IN ROLE ttft_reconcile_dashboard;
--   ALTER ROLE ttft_job SET role = 'ttft_reconcile_job';  -- day partitions it creates are then
--                                                          -- owned by the group, not the login
--
-- ttft_reconcile_job        the batch job (run, backfill, rollback, report, explain, export,
--                           prune-traces, migrate). On LiteLLM's tables: SELECT on SpendLogs
--                           and UPDATE of "completionStartTime" and updated_at only. It owns
--                           the ttft_reconcile schema and its objects: creating and dropping
--                           day partitions of stream_traces needs ownership in Postgres.
-- ttft_reconcile_capture    the capture inside the proxy: INSERT on stream_traces, SELECT on
--                           alembic_version (its version check), nothing else anywhere.
-- ttft_reconcile_dashboard  Grafana's Postgres datasource: reads ttft_daily, corrections and
--                           settings, runs spend_logs_ttft(); on SpendLogs it may read only the
--                           scalar columns that function uses (no JSON column, no api_key).

DO $roles$
DECLARE
    v_litellm text := coalesce(
        (SELECT value #>> '{}' FROM ttft_reconcile.settings WHERE key = 'litellm_schema'), 'public');
    v_spend text;
    v_role text;
    v_obj record;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['ttft_reconcile_job', 'ttft_reconcile_capture', 'ttft_reconcile_dashboard']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        END IF;
    END LOOP;

    IF to_regclass(format('%I.%I', v_litellm, 'LiteLLM_SpendLogs')) IS NULL THEN
        RAISE EXCEPTION 'table %.LiteLLM_SpendLogs not found: set ttft_reconcile.settings litellm_schema first',
            v_litellm;
    END IF;
    v_spend := format('%I.%I', v_litellm, 'LiteLLM_SpendLogs');

    -- The job: our schema is its own; on LiteLLM's table it reads and rewrites two columns.
    EXECUTE 'ALTER SCHEMA ttft_reconcile OWNER TO ttft_reconcile_job';
    FOR v_obj IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'ttft_reconcile' AND c.relkind IN ('r', 'p', 'v', 'm')  -- partitions included
    LOOP
        EXECUTE format('ALTER TABLE ttft_reconcile.%I OWNER TO ttft_reconcile_job', v_obj.relname);
    END LOOP;
    FOR v_obj IN
        SELECT p.oid::regprocedure AS signature FROM pg_proc p
        WHERE p.pronamespace = 'ttft_reconcile'::regnamespace
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO ttft_reconcile_job', v_obj.signature);
    END LOOP;
    -- `migrate` starts with CREATE SCHEMA IF NOT EXISTS, which Postgres checks against the
    -- database's CREATE privilege even when the schema exists. It allows creating schemas only.
    EXECUTE format('GRANT CREATE ON DATABASE %I TO ttft_reconcile_job', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ttft_reconcile_job', v_litellm);
    EXECUTE format('GRANT SELECT ON %s TO ttft_reconcile_job', v_spend);
    EXECUTE format('GRANT UPDATE ("completionStartTime") ON %s TO ttft_reconcile_job', v_spend);
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = v_litellm AND table_name = 'LiteLLM_SpendLogs' AND column_name = 'updated_at')
    THEN
        EXECUTE format('GRANT UPDATE (updated_at) ON %s TO ttft_reconcile_job', v_spend);
    END IF;

    -- The capture: append traces, read the migration version; no SELECT on the traces themselves.
    GRANT USAGE ON SCHEMA ttft_reconcile TO ttft_reconcile_capture;
    GRANT INSERT ON ttft_reconcile.stream_traces TO ttft_reconcile_capture;
    GRANT SELECT ON ttft_reconcile.alembic_version TO ttft_reconcile_capture;

    -- The dashboard: our rollup and audit trail, and the SpendLogs columns spend_logs_ttft reads.
    GRANT USAGE ON SCHEMA ttft_reconcile TO ttft_reconcile_dashboard;
    GRANT SELECT ON ttft_reconcile.ttft_daily, ttft_reconcile.corrections, ttft_reconcile.settings,
        ttft_reconcile.runs TO ttft_reconcile_dashboard;
    GRANT EXECUTE ON FUNCTION ttft_reconcile.spend_logs_ttft(timestamptz, timestamptz),
        ttft_reconcile.spend_logs_ttft_sql(text), ttft_reconcile.ttft_daily_rows(timestamptz, timestamptz),
        ttft_reconcile.evidence(ttft_reconcile.corrections),
        ttft_reconcile.correction_evidence(text[], text, integer, bigint, text, integer,
                                           timestamp, timestamp, timestamp, timestamp, timestamp, timestamp)
        TO ttft_reconcile_dashboard;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ttft_reconcile_dashboard', v_litellm);
    EXECUTE format('GRANT SELECT (request_id, call_type, "startTime", "endTime", "completionStartTime", '
                   'model_group, custom_llm_provider) ON %s TO ttft_reconcile_dashboard', v_spend);
END
$roles$;
