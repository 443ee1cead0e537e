"""The batch statement's plan stays linear in the batch size whatever the planner believes.

Without statistics (a never-analyzed table after a bulk load or a restore, a fresh day
partition of the traces) Postgres estimates one candidate row; a join between two intermediate
results then becomes a nested loop over both, quadratic in the batch (5,000 x 5,000 rows). The
statement must only ever nest-loop into an index of a real table.
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

INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _probes_a_table(plan: dict[str, Any]) -> bool:
    """The inner side of a nested loop reads a real table (through an index, or a scan of a tiny
    one) and never re-reads an intermediate result."""
    nodes = list(_nodes(plan))
    return (not any(node["Node Type"] in ("CTE Scan", "WorkTable Scan") for node in nodes)
            and any("Relation Name" in node for node in nodes))


def _plan(db_url: str, *, write: bool, keyset: bool, policy: str = "first_chunk") -> dict[str, Any]:
    engine = make_engine(parse_database_url(db_url))
    try:
        with engine.connect() as conn:
            shape = inspect_spend_logs(conn, "public")
            params: dict[str, Any] = {
                "since": BASE - timedelta(days=1), "until": BASE + timedelta(days=1),
                "call_types": ["anthropic_messages", "aresponses"], "tolerance_ms": 5.0, "limit": 5000,
                "hold_rolled_back": True, "run_id": 1, "policy": policy,
                "after_start": BASE - timedelta(hours=1), "after_id": "",
                **batch_sql.trace_window(BASE - timedelta(days=1), BASE + timedelta(days=1)),
            }
            sql = batch_sql.batch_statement(shape, policy=policy, keyset=keyset, write=write)
            # EXPLAIN without ANALYZE plans the data-modifying statement without running it.
            found = conn.execute(text("EXPLAIN (FORMAT JSON) " + sql), params).scalar()
    finally:
        engine.dispose()
    document = json.loads(found) if isinstance(found, str) else found
    return dict(document[0]["Plan"])


def _seed(db_url: str, rows: int) -> None:
    with psycopg.connect(db_url) as conn:
        batch = [broken_stream(BASE + timedelta(seconds=i)) for i in range(rows)]
        insert_spend(conn, batch)
        for row in batch[::2]:
            insert_trace(conn, row.request_id, request_start=row.start, first_chunk=row.start + ms(80))


def _assert_linear(plan: dict[str, Any]) -> list[str]:
    loops = [node for node in _nodes(plan) if node["Node Type"] == "Nested Loop"]
    for loop in loops:
        (inner,) = [child for child in loop["Plans"] if child.get("Parent Relationship") == "Inner"]
        assert _probes_a_table(inner), (
            "a nested loop whose inner side re-reads an intermediate result (quadratic in the batch): "
            + json.dumps(inner)[:600])
    return [str(node.get("Relation Name")) for node in _nodes(plan) if node["Node Type"] in INDEX_SCANS]


@pytest.mark.parametrize("write", [True, False])
def test_no_statistics_no_quadratic_join(db_url: str, write: bool) -> None:
    _seed(db_url, 40)
    with psycopg.connect(db_url) as conn:
        analyzed = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'LiteLLM_SpendLogs'").fetchone()
    assert analyzed == (0,), "the scenario needs a never-analyzed SpendLogs"
    relations = _assert_linear(_plan(db_url, write=write, keyset=True))
    # the traces are reached through their indexes under every strategy, and so are corrections
    assert any(r.startswith("stream_traces") for r in relations), relations
    assert "corrections" in relations, relations


@pytest.mark.parametrize("policy", POLICIES)
def test_with_statistics_the_plan_is_linear_too(db_url: str, policy: str) -> None:
    _seed(db_url, 200)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute('ANALYZE "LiteLLM_SpendLogs"')
        conn.execute("ANALYZE ttft_reconcile.stream_traces")
    _assert_linear(_plan(db_url, write=True, keyset=False, policy=policy))


def test_the_old_shape_would_have_failed_this_check() -> None:
    """The check itself can fail: a nested loop over two intermediate results is caught."""
    cte_loop = {"Node Type": "Nested Loop", "Plans": [
        {"Node Type": "CTE Scan", "CTE Name": "cand", "Parent Relationship": "Outer"},
        {"Node Type": "CTE Scan", "CTE Name": "chosen", "Parent Relationship": "Inner"},
    ]}
    with pytest.raises(AssertionError, match="quadratic"):
        _assert_linear({"Node Type": "Aggregate", "Plans": [cte_loop]})
    probe = {"Node Type": "Nested Loop", "Plans": [
        {"Node Type": "CTE Scan", "CTE Name": "cand", "Parent Relationship": "Outer"},
        {"Node Type": "Index Scan", "Relation Name": "stream_traces_p20260310", "Parent Relationship": "Inner"},
    ]}
    assert _assert_linear(probe) == ["stream_traces_p20260310"]



def test_only_the_windows_trace_partitions_are_in_the_plan(db_url: str) -> None:
    """A month of day partitions (30 days of retention) must not all be probed per candidate:
    the window's constant bounds prune them when the statement is planned."""
    _seed(db_url, 10)
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT ttft_reconcile.ensure_trace_partitions(%s, %s)",
                     (BASE.date() - timedelta(days=20), BASE.date() + timedelta(days=20)))
    plan = _plan(db_url, write=True, keyset=False)
    days = {str(node["Relation Name"]) for node in _nodes(plan)
            if str(node.get("Relation Name", "")).startswith("stream_traces_p")}
    # the window is BASE - 1 day .. BASE + 1 day, and a trace may start a day either side
    allowed = {f"stream_traces_p{(BASE.date() + timedelta(days=d)):%Y%m%d}" for d in range(-2, 3)}
    assert days and days <= allowed, sorted(days - allowed)


def _trace_probes(plan: dict[str, Any]) -> dict[str, int]:
    """Index scans of stream_traces per index kind (pkey = by call id, response_id = by response id)."""
    found: dict[str, int] = {}
    for node in _nodes(plan):
        index = str(node.get("Index Name", ""))
        if node["Node Type"] in INDEX_SCANS and str(node.get("Relation Name", "")).startswith("stream_traces"):
            kind = "pkey" if index.endswith("_pkey") else "response_id"
            found[kind] = found.get(kind, 0) + 1
    return found


def test_a_schema_without_the_call_id_column_plans_no_probe_for_it(db_url: str, old_db_url: str) -> None:
    """SpendLogs' litellm_call_id column exists only on newer schemas; where it is missing the
    statement has two trace lookups (by request id, by response id), not three."""
    new_probes = _trace_probes(_plan(db_url, write=True, keyset=True))
    old_probes = _trace_probes(_plan(old_db_url, write=True, keyset=True))
    assert new_probes["response_id"] == old_probes["response_id"] > 0
    # by call id: request_id and the column on the new schema, request_id alone on the old one
    assert new_probes["pkey"] == 2 * old_probes["pkey"] > 0
