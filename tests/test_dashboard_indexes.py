"""Plans on a few hundred thousand rows: spend_logs_ttft walks the "startTime" index and reads no
JSON column; ttft_daily is read through its primary key. Plans are checked, never timings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from tests import services
from tests.publish_data import UTC, connect
from ttft_reconcile.dashboard import refresh_day_range, refresh_ttft_daily

ROWS = 300_000
DAYS = 30
SINCE = datetime(2026, 10, 1, tzinfo=UTC)
JSON_COLUMNS = ("metadata", "messages", "response", "proxy_server_request", "request_tags")
STARTTIME_INDEXES = ("LiteLLM_SpendLogs_startTime_idx", "LiteLLM_SpendLogs_startTime_request_id_idx")


def _seed(conn: psycopg.Connection[Any]) -> None:
    # LiteLLM-shaped rows over 30 days: 10% repaired streams (a correction each), 30% fallback
    # rows left unresolved, the rest original; a kilobyte of metadata JSON per row as in production.
    conn.execute(
        """
        INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, "startTime", "endTime", "completionStartTime",
                                         model, model_group, custom_llm_provider, api_base, metadata)
        SELECT 'req-' || i,
               (ARRAY['anthropic_messages', 'aresponses', 'acompletion', 'pass_through_endpoint'])[1 + i %% 4],
               ts, ts + interval '2 s',
               CASE WHEN i %% 10 < 4 THEN ts + interval '2 s' ELSE ts + (i %% 900 + 50) * interval '1 ms' END,
               'anthropic/claude', 'group-' || (i %% 25), 'anthropic', 'http://127.0.0.1/v1/messages',
               jsonb_build_object('user_api_key', md5(i::text), 'pad', repeat('x', 1000))
        FROM generate_series(1, %s) AS i,
             LATERAL (SELECT timestamp '2026-10-01' + (i::double precision / %s) * interval '30 days' AS ts) t
        """,
        (ROWS, ROWS),
    )
    conn.execute(
        """
        INSERT INTO ttft_reconcile.runs (mode, status) VALUES ('backfill', 'succeeded');
        """
    )
    conn.execute(
        """
        WITH fixed AS (
            UPDATE "LiteLLM_SpendLogs" SET "completionStartTime" = "startTime" + interval '300 ms'
            WHERE request_id IN (SELECT 'req-' || i FROM generate_series(1, %s) i WHERE i %% 10 = 0)
            RETURNING request_id, "startTime", "endTime", "completionStartTime", call_type, model_group
        )
        INSERT INTO ttft_reconcile.corrections (request_id, start_time, run_id, policy, old_completion_start_time,
            new_completion_start_time, ttft_ms, call_type, model_group, joined_by)
        SELECT request_id, "startTime", (SELECT max(id) FROM ttft_reconcile.runs), 'first_chunk', "endTime",
               "completionStartTime", 300, call_type, model_group, ARRAY['request_id=litellm_call_id']
        FROM fixed
        """,
        (ROWS,),
    )
    conn.execute(
        """
        INSERT INTO ttft_reconcile.ttft_daily (day, model_group, provider, call_type, n, p50_ms, p90_ms, p95_ms,
                                               p99_ms, n_original, n_reconciled, n_unresolved)
        SELECT d::date, 'group-' || g, 'anthropic', ct, 100, 300, 600, 700, 900, 60, 10, 30
        FROM generate_series(date '2025-10-01', date '2026-10-01', interval '1 day') d,
             generate_series(1, 60) g, unnest(ARRAY['anthropic_messages', 'aresponses', 'pass_through_endpoint']) ct
        """
    )
    conn.execute('ANALYZE "LiteLLM_SpendLogs"')
    conn.execute("ANALYZE ttft_reconcile.corrections")
    conn.execute("ANALYZE ttft_reconcile.ttft_daily")


@pytest.fixture(scope="module")
def big_db(pg_admin_url: str) -> Iterator[str]:
    from tests import services

    template = services.ensure_template(pg_admin_url, "new")
    name = services.clone_database(pg_admin_url, template)
    url = services.with_database(pg_admin_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            _seed(conn)
        yield url
    finally:
        services.drop_database(pg_admin_url, name)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _spend_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in _nodes(plan) if n.get("Relation Name") == "LiteLLM_SpendLogs"]


def _assert_index_and_no_json(plan: dict[str, Any]) -> None:
    scans = _spend_scans(plan)
    assert scans, "SpendLogs not scanned?"
    for scan in scans:
        assert scan["Node Type"] in ("Index Scan", "Bitmap Heap Scan"), scan["Node Type"]
        used = scan.get("Index Name") or next(
            n["Index Name"] for n in _nodes(scan) if n["Node Type"] == "Bitmap Index Scan")
        assert used in STARTTIME_INDEXES
        output = " ".join(scan.get("Output", []))
        for column in JSON_COLUMNS:
            assert column not in output, f"{column} read: {output}"


def test_spend_logs_ttft_query_uses_the_starttime_index(big_db: str) -> None:
    with psycopg.connect(big_db) as conn:
        sql = conn.execute("SELECT ttft_reconcile.spend_logs_ttft_sql('public')").fetchone()[0]
        # Simple query protocol: with the extended one the server takes $1..$4 as PREPARE's own parameters.
        psycopg.ClientCursor(conn).execute(f"PREPARE ttft(timestamp, timestamp, text[], interval) AS {sql}")
        for hours in (1, 24):
            (raw,) = psycopg.ClientCursor(conn).execute(
                "EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE ttft(%s::timestamp, %s::timestamp, %s::text[], %s::interval)",
                (datetime(2026, 10, 10), datetime(2026, 10, 10) + timedelta(hours=hours),
                 ["anthropic_messages", "aresponses", "pass_through_endpoint"], timedelta(milliseconds=5)),
            ).fetchone()
            plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
            _assert_index_and_no_json(plan)
            print(f"{hours}h window: {[n['Node Type'] for n in _nodes(plan)]}")


def test_the_function_itself_runs_that_plan(big_db: str) -> None:
    """auto_explain shows the plan of the dynamic SQL inside spend_logs_ttft."""
    notices: list[str] = []
    with psycopg.connect(big_db) as conn:
        try:
            conn.execute("LOAD 'auto_explain'")
        except psycopg.Error:
            services.missing("auto_explain on the Postgres server (contrib)")
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice",
                        "log_format = json", "log_verbose = on"):
            conn.execute(f"SET auto_explain.{setting}")
        count = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE source = 'reconciled')"
            " FROM ttft_reconcile.spend_logs_ttft(%s, %s)",
            (datetime(2026, 10, 10, tzinfo=UTC), datetime(2026, 10, 11, tzinfo=UTC)),
        ).fetchone()
    assert count is not None and count[0] > 5000 and count[1] > 0
    plans = [json.loads(n[n.index("{"):])["Plan"] for n in notices if "{" in n]
    scanning = [p for p in plans if _spend_scans(p)]
    assert scanning, notices[:3]
    for plan in scanning:
        _assert_index_and_no_json(plan)


def test_ttft_daily_reads_go_through_the_primary_key(big_db: str) -> None:
    with psycopg.connect(big_db) as conn:
        (raw,) = conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT day, model_group, p95_ms FROM ttft_reconcile.ttft_daily"
            " WHERE day >= %s AND day < %s AND model_group = ANY(%s)",
            (datetime(2026, 9, 1).date(), datetime(2026, 9, 8).date(), ["group-1", "group-2"]),
        ).fetchone()
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    daily = [n for n in _nodes(plan) if n.get("Relation Name") == "ttft_daily"]
    assert daily and all(n["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan") for n in daily)


def test_refresh_of_one_day_and_percentiles_at_scale(big_db: str) -> None:
    with connect(big_db) as conn:
        written = refresh_ttft_daily(conn, [datetime(2026, 10, 10).date()])
        rows = conn.execute(text(
            "SELECT sum(n), sum(n_reconciled), sum(n_unresolved), min(p50_ms) FROM ttft_reconcile.ttft_daily"
            " WHERE day = '2026-10-10'")).one()
    # 25 model groups x 3 configured call types (call type and model group cycle independently)
    assert written == 75
    total, reconciled, unresolved, p50 = rows
    # 10,000 rows a day; acompletion (a quarter) is not a configured call type.
    assert 7000 < total < 8000
    assert reconciled > 0 and unresolved > 0
    assert p50 >= 50  # unresolved rows (2 s) never drag the median; NULLs are not zeros


def _explain_nested(conn: psycopg.Connection[Any]) -> list[str]:
    """Make auto_explain send this session's plans, nested statements included, as notices; the
    list they are collected in (read it with `_plans`)."""
    notices: list[str] = []
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error:
        services.missing("auto_explain on the Postgres server (contrib)")
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice",
                    "log_format = json"):
        conn.execute(f"SET auto_explain.{setting}")
    return notices


def _plans(notices: list[str]) -> list[dict[str, Any]]:
    return [json.loads(n[n.index("{"):])["Plan"] for n in notices if "{" in n]


def _nested_plans(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The plans auto_explain logs for the statements run inside the functions `sql` calls."""
    notices = _explain_nested(conn)
    conn.execute(sql, params)
    return _plans(notices)


def test_a_fresh_audit_trail_never_nests_a_loop_in_the_dashboard_functions(db_url: str) -> None:
    """Right after a backfill the corrections have no statistics: Postgres took a day's thousands
    of corrections for two rows and nested a loop over them for every SpendLogs row of the day
    (70 s for one day of 80,000 rows, in the scale benchmark's data). Both dashboard functions
    plan that join as a hash join, whatever the session prefers."""
    day = datetime(2026, 10, 10)
    with psycopg.connect(db_url, autocommit=True) as conn:
        configured = dict(conn.execute(
            "SELECT proname, proconfig FROM pg_proc WHERE pronamespace = 'ttft_reconcile'::regnamespace"
            " AND proname IN ('spend_logs_ttft', 'ttft_daily_rows')").fetchall())
        settings = ["enable_nestloop=off", "enable_hashjoin=on"]
        assert configured == {"spend_logs_ttft": settings, "ttft_daily_rows": settings}
        conn.execute(
            'INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, "startTime", "endTime", "completionStartTime",'
            " model_group)"
            " SELECT 'r' || i, 'anthropic_messages', ts, ts + interval '2 s', ts + interval '2 s', 'group-' || i %% 20"
            " FROM generate_series(1, 20000) i, LATERAL (SELECT %s + i * interval '4 s' AS ts) t", (day,))
        conn.execute('ANALYZE "LiteLLM_SpendLogs"')
        conn.execute("INSERT INTO ttft_reconcile.runs (mode) VALUES ('backfill')")
        conn.execute(  # a tenth of the rows corrected, and no statistics on the corrections
            "INSERT INTO ttft_reconcile.corrections (request_id, start_time, run_id, policy,"
            " old_completion_start_time, new_completion_start_time, ttft_ms)"
            ' SELECT request_id, "startTime", (SELECT max(id) FROM ttft_reconcile.runs), \'first_chunk\','
            ' "endTime", "startTime" + interval \'300 ms\', 300 FROM "LiteLLM_SpendLogs" WHERE request_id LIKE \'%%0\'')
        # a session that would nest loops (so would the planner without statistics, at scale)
        conn.execute("SET enable_hashjoin = off")
        conn.execute("SET enable_mergejoin = off")
        window = (day.replace(tzinfo=UTC), (day + timedelta(days=1)).replace(tzinfo=UTC))
        for call in ("SELECT count(*) FROM ttft_reconcile.ttft_daily_rows(%s, %s)",
                     "SELECT count(*) FROM ttft_reconcile.spend_logs_ttft(%s, %s)"):
            plans = [p for p in _nested_plans(conn, call, window) if _spend_scans(p)]
            assert plans, call
            assert not [n for p in plans for n in _nodes(p) if n["Node Type"] == "Nested Loop"], (call, plans)


def test_a_days_rebuild_reads_that_days_pages_on_a_short_table(db_url: str) -> None:
    """On a table three days long a day is a third of it, and Postgres preferred a sequential scan
    of the whole table for each day's rebuild (a backfill rebuilds every day: the table was read
    once per day). Here a session whose costs make random reads look dear stands in for that
    choice. The rebuild reads SpendLogs through the startTime index whatever the planner prefers."""
    day = datetime(2026, 10, 10)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            'INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, "startTime", "endTime", "completionStartTime",'
            " model_group, metadata)"
            " SELECT 'r' || i, 'anthropic_messages', ts, ts + interval '2 s', ts + interval '300 ms', 'g' || i %% 5,"
            " jsonb_build_object('pad', repeat('x', 200))"
            " FROM generate_series(1, 30000) i, LATERAL (SELECT %s + i * interval '8640 ms' AS ts) t",
            (day - timedelta(days=1),))
        conn.execute('ANALYZE "LiteLLM_SpendLogs"')
    with connect(db_url) as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        notices = _explain_nested(raw)
        raw.execute("SET random_page_cost = 100")  # an index costs more than reading everything
        written = refresh_day_range(conn, day.date(), day.date())
        assert written == 5  # one row per model group
        scans = [scan for p in _plans(notices) for scan in _spend_scans(p)]
        assert scans, notices[:3]
        assert {scan["Node Type"] for scan in scans} <= {"Bitmap Heap Scan", "Index Scan"}, scans
        # and the session's own settings are back for the rest of the transaction
        assert conn.execute(text("SHOW enable_seqscan")).scalar() == "on"
