"""Dashboard data source: spend_logs_ttft(since, until), a set-returning function over SpendLogs.

A view over LiteLLM's table would block LiteLLM's own `ALTER COLUMN ... TYPE` migrations
("cannot alter type of a column used by a view"); a plpgsql body is not dependency-tracked.
The query is dynamic SQL so LiteLLM's schema name comes from `ttft_reconcile.settings`. No `%`
in the SQL (quote_ident rather than format): `migrate --sql` output must stay runnable as is.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- The query behind spend_logs_ttft, with LiteLLM's schema filled in. Parameters:
-- $1, $2 the window [since, until) as naive UTC (SpendLogs' convention), $3 the call types,
-- $4 the tolerance as an interval. Kept separate so tests can EXPLAIN the exact text.
-- It reads only scalar columns of SpendLogs (never metadata, messages, response, ...); the casts
-- keep the result type fixed when LiteLLM changes a column's type.
CREATE FUNCTION ttft_reconcile.spend_logs_ttft_sql(litellm_schema text)
RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
SELECT $q$
SELECT s.request_id::text,
       s."startTime"::timestamp(3),
       coalesce(s.model_group::text, ''),
       coalesce(s.custom_llm_provider::text, ''),
       s.call_type::text,
       CASE WHEN k.source = 'unresolved' THEN NULL
            ELSE extract(epoch FROM s."completionStartTime" - s."startTime")::double precision * 1000 END,
       k.source,
       extract(epoch FROM coalesce(c.old_completion_start_time, s."completionStartTime")
                          - s."startTime")::double precision * 1000
FROM $q$ || quote_ident(litellm_schema) || $q$."LiteLLM_SpendLogs" s
LEFT JOIN ttft_reconcile.corrections c
       ON c.status = 'applied' AND c.request_id = s.request_id AND c.start_time = s."startTime"
      AND c.start_time >= $1 AND c.start_time < $2
      AND c.new_completion_start_time = s."completionStartTime"
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN c.id IS NOT NULL THEN 'reconciled'
        WHEN s."completionStartTime" < s."endTime" - $4
             AND s."completionStartTime" >= s."startTime" THEN 'original'
        ELSE 'unresolved'
    END AS source
) k
WHERE s."startTime" >= $1 AND s."startTime" < $2 AND s.call_type = ANY ($3)
$q$
$fn$;

-- One row per SpendLogs row of the configured call types whose "startTime" is in [since, until).
-- ttft_ms: best TTFT in ms from "startTime" (NULL when unresolved); source: original (LiteLLM
-- recorded a first token earlier than "endTime" beyond the tolerance), reconciled (our applied
-- correction is still the stored value), unresolved (NULL, or still within the tolerance of
-- "endTime": a non-stream or an untraced stream). litellm_ttft_ms: what LiteLLM wrote (the old
-- value for reconciled rows).
CREATE FUNCTION ttft_reconcile.spend_logs_ttft(since timestamptz, until timestamptz)
RETURNS TABLE (
    request_id text,
    start_time timestamp(3) without time zone,
    model_group text,
    provider text,
    call_type text,
    ttft_ms double precision,
    source text,
    litellm_ttft_ms double precision
)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_schema text;
    v_call_types text[];
    v_tolerance_ms double precision;
BEGIN
    SELECT coalesce((SELECT st.value #>> '{}' FROM ttft_reconcile.settings st
                     WHERE st.key = 'litellm_schema'), 'public')
      INTO v_schema;
    SELECT coalesce((SELECT array_agg(e) FROM ttft_reconcile.settings st,
                            jsonb_array_elements_text(st.value) e
                     WHERE st.key = 'call_types'),
                    ARRAY['anthropic_messages', 'aresponses', 'pass_through_endpoint'])
      INTO v_call_types;
    SELECT coalesce((SELECT (st.value #>> '{}')::double precision FROM ttft_reconcile.settings st
                     WHERE st.key = 'tolerance_ms'), 5)
      INTO v_tolerance_ms;
    RETURN QUERY EXECUTE ttft_reconcile.spend_logs_ttft_sql(v_schema)
        USING since AT TIME ZONE 'UTC', until AT TIME ZONE 'UTC',
              v_call_types, make_interval(secs => v_tolerance_ms / 1000.0);
END
$fn$;
COMMENT ON FUNCTION ttft_reconcile.spend_logs_ttft(timestamptz, timestamptz) IS
    'Best TTFT (ms) and its source (original | reconciled | unresolved) per SpendLogs row in [since, until).';
"""

DOWNGRADE = r"""
DROP FUNCTION IF EXISTS ttft_reconcile.spend_logs_ttft(timestamptz, timestamptz);
DROP FUNCTION IF EXISTS ttft_reconcile.spend_logs_ttft_sql(text);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
