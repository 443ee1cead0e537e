"""The batch statements' plans stay linear in the batch size whatever the planner believes.

Without statistics (a never-analyzed table after a bulk load or a restore, a fresh day
partition of the traces) Postgres misjudges row counts; a larger LIMIT once made it sort a
parallel sequential scan of SpendLogs instead of walking the keyset index. Under the batch's
planner settings every table is read through an index (SpendLogs in keyset order, traces and
corrections by start time, staged rows by stage id, written rows by TID) and every join is a
hash join.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from tests.factories import BASE, broken_stream, insert_spend, insert_trace, ms
from ttft_reconcile import batch_sql
from ttft_reconcile.db import inspect_spend_logs, make_engine
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.policies import POLICIES

TABLE_SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Tid Scan"}


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _plan(db_url: str, *, write: bool, keyset: bool, policy: str = "first_chunk",
          limit: int = 5000) -> dict[str, Any]:
    """The plan of the decide statement (staging its rows when `write`), or with `write` both
    plans under one root: decide, then write."""
    engine = make_engine(parse_database_url(db_url))
    try:
        with engine.connect() as conn:
            shape = inspect_spend_logs(conn, "public")
            params: dict[str, Any] = {
                "since": BASE - timedelta(days=1), "until": BASE + timedelta(days=1),
                "call_types": ["anthropic_messages", "aresponses"], "tolerance_ms": 5.0, "limit": limit,
                "hold_rolled_back": True, "run_id": 1, "policy": policy,
                "after_start": BASE - timedelta(hours=1), "after_id": "",
                **batch_sql.trace_window(BASE - timedelta(days=1), BASE + timedelta(days=1)),
            }
            sql = batch_sql.decide_statement(shape, policy=policy, keyset=keyset, stage=write)
            conn.execute(text(batch_sql.BATCH_PLAN_SETTINGS))
            # EXPLAIN without ANALYZE plans the data-modifying statements without running them.
            plans = [conn.execute(text("EXPLAIN (FORMAT JSON) " + sql), params).scalar()]
            if write:
                plans.append(conn.execute(text("EXPLAIN (FORMAT JSON) " + batch_sql.write_statement(shape)),
                                          {"stage_id": 1, "run_id": 1, "policy": policy}).scalar())
    finally:
        engine.dispose()
    roots = [dict((json.loads(p) if isinstance(p, str) else p)[0]["Plan"]) for p in plans]
    return roots[0] if len(roots) == 1 else {"Node Type": "(decide, write)", "Plans": roots}


def _seed(db_url: str, rows: int) -> None:
    with psycopg.connect(db_url) as conn:
        batch = [broken_stream(BASE + timedelta(seconds=i)) for i in range(rows)]
        insert_spend(conn, batch)
        for row in batch[::2]:
            insert_trace(conn, row.request_id, request_start=row.start, first_chunk=row.start + ms(80))


def _assert_linear(plan: dict[str, Any]) -> dict[str, set[str]]:
    """No nested loop and no sequential scan anywhere; returns each table's scan kinds."""
    scans: dict[str, set[str]] = {}
    for node in _nodes(plan):
        assert node["Node Type"] != "Nested Loop", "a nested loop: " + json.dumps(node)[:600]
        if node["Node Type"] in TABLE_SCANS:
            assert node["Node Type"] != "Seq Scan", "a sequential scan: " + json.dumps(node)[:600]
            scans.setdefault(str(node["Relation Name"]), set()).add(node["Node Type"])
    return scans


@pytest.mark.parametrize("write", [True, False])
def test_no_statistics_no_scan_and_no_nested_loop(db_url: str, write: bool) -> None:
    _seed(db_url, 40)
    with psycopg.connect(db_url) as conn:
        analyzed = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'LiteLLM_SpendLogs'").fetchone()
    assert analyzed == (0,), "the scenario needs a never-analyzed SpendLogs"
    for limit in (5000, 200_000):  # a large LIMIT once tipped the keyset scan into a sort of everything
        scans = _assert_linear(_plan(db_url, write=write, keyset=True, limit=limit))
        # SpendLogs in keyset order (and by TID where written), traces by their start-time index,
        # staged rows by their stage id
        assert scans["LiteLLM_SpendLogs"] == ({"Index Scan", "Tid Scan"} if write else {"Index Scan"}), scans
        assert any(r.startswith("stream_traces") for r in scans), scans
        assert "corrections" in scans, scans
        assert scans.get("batch_stage") == ({"Index Scan"} if write else None), scans


@pytest.mark.parametrize("policy", POLICIES)
def test_with_statistics_the_plan_is_linear_too(db_url: str, policy: str) -> None:
    _seed(db_url, 200)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute('ANALYZE "LiteLLM_SpendLogs"')
        conn.execute("ANALYZE ttft_reconcile.stream_traces")
    _assert_linear(_plan(db_url, write=True, keyset=False, policy=policy))


def test_the_check_itself_can_fail() -> None:
    """A nested loop, or a sequential scan of a table, anywhere in the plan is caught."""
    loop = {"Node Type": "Nested Loop", "Plans": [
        {"Node Type": "CTE Scan", "CTE Name": "cand", "Parent Relationship": "Outer"},
        {"Node Type": "Index Scan", "Relation Name": "stream_traces_p20260310", "Parent Relationship": "Inner"},
    ]}
    with pytest.raises(AssertionError, match="nested loop"):
        _assert_linear({"Node Type": "Aggregate", "Plans": [loop]})
    scan = {"Node Type": "Limit", "Plans": [{"Node Type": "Seq Scan", "Relation Name": "LiteLLM_SpendLogs"}]}
    with pytest.raises(AssertionError, match="sequential scan"):
        _assert_linear(scan)
    hashed = {"Node Type": "Hash Join", "Plans": [
        {"Node Type": "CTE Scan", "CTE Name": "cand"},
        {"Node Type": "Hash", "Plans": [{"Node Type": "Index Scan", "Relation Name": "corrections"}]},
    ]}
    assert _assert_linear(hashed) == {"corrections": {"Index Scan"}}


def test_only_the_windows_trace_partitions_are_in_the_plan(db_url: str) -> None:
    """A month of day partitions (30 days of retention) must not all be read: the window's
    constant bounds prune them when the statement is planned."""
    _seed(db_url, 10)
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT ttft_reconcile.ensure_trace_partitions(%s, %s)",
                     (BASE.date() - timedelta(days=20), BASE.date() + timedelta(days=20)))
    plan = _plan(db_url, write=True, keyset=False)
    days = {str(node["Relation Name"]) for node in _nodes(plan)
            if str(node.get("Relation Name", "")).startswith("stream_traces_p")}
    # the window is BASE - 1 day .. BASE + 1 day, and a trace may start an hour either side
    allowed = {f"stream_traces_p{(BASE.date() + timedelta(days=d)):%Y%m%d}" for d in range(-2, 2)}
    assert days and days <= allowed, sorted(days - allowed)


def _strategy_joins(plan: dict[str, Any]) -> int:
    """How many times the candidates are joined to the traces near the batch (one per strategy)."""
    return sum(1 for node in _nodes(plan) if node["Node Type"] == "CTE Scan" and node.get("CTE Name") == "near")


def test_a_schema_without_the_call_id_column_plans_no_join_for_it(db_url: str, old_db_url: str) -> None:
    """SpendLogs' litellm_call_id column exists only on newer schemas; where it is missing the
    statement joins the traces twice (by request id, by response id), not three times."""
    assert _strategy_joins(_plan(db_url, write=True, keyset=True)) == 3
    assert _strategy_joins(_plan(old_db_url, write=True, keyset=True)) == 2
