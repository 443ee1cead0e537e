"""prune-traces: whole day partitions dropped, default partition trimmed, evidence compacted."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

from click.testing import CliRunner
from sqlalchemy import text

from tests.publish_data import UTC, connect, correct, engine_for, run_row, spend_log, trace
from ttft_reconcile.cli import cli
from ttft_reconcile.db import SessionLimits
from ttft_reconcile.prune import day_partitions, ensure_partitions, prune_traces

NOW = datetime.now(timezone.utc)
TODAY = NOW.date()


def _at(day: date, hour: int = 12) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=hour)


def _seed(url: str) -> None:
    """Day partitions for 40..35 days ago (one trace each); two old and one fresh trace in the default."""
    with connect(url) as conn:
        ensure_partitions(conn, TODAY - timedelta(days=40), TODAY - timedelta(days=35))
        for back in range(35, 41):
            trace(conn, f"part-{back}", _at(TODAY - timedelta(days=back)))
        conn.execute(text("SELECT ttft_reconcile.ensure_trace_partitions(:a, :b)"),
                     {"a": TODAY - timedelta(days=1), "b": TODAY + timedelta(days=2)})
        trace(conn, "default-old", _at(TODAY - timedelta(days=60)))
        trace(conn, "default-older", _at(TODAY - timedelta(days=90)))
        trace(conn, "default-recent", _at(TODAY - timedelta(days=10)))
        trace(conn, "today", NOW)


def _names(url: str) -> set[str]:
    with connect(url) as conn:
        return {p.name for p in day_partitions(conn)}


def _trace_ids(url: str) -> set[str]:
    with connect(url) as conn:
        return set(conn.execute(text("SELECT litellm_call_id FROM ttft_reconcile.stream_traces")).scalars())


def test_drops_whole_partitions_before_the_cutoff_and_trims_default(db_url: str) -> None:
    _seed(db_url)
    cutoff = _at(TODAY - timedelta(days=37), hour=6)  # mid-day: the partition of that day must stay
    engine = engine_for(db_url)
    try:
        dry = prune_traces(engine, SessionLimits(), cutoff=cutoff, dry_run=True)
        assert _trace_ids(db_url) >= {"part-40", "default-old"}
        result = prune_traces(engine, SessionLimits(), cutoff=cutoff)
    finally:
        engine.dispose()
    expected = {f"stream_traces_p{(TODAY - timedelta(days=back)):%Y%m%d}" for back in (38, 39, 40)}
    assert set(dry.dropped) == set(result.dropped) == expected
    assert dry.dropped_rows == result.dropped_rows == 3
    assert dry.default_rows_deleted == result.default_rows_deleted == 2
    assert not expected & _names(db_url)
    assert f"stream_traces_p{(TODAY - timedelta(days=37)):%Y%m%d}" in _names(db_url)
    remaining = _trace_ids(db_url)
    assert remaining == {"part-35", "part-36", "part-37", "default-recent", "today"}
    # Inserts still route: into a kept partition and into the default partition.
    with connect(db_url) as conn:
        trace(conn, "after-prune", _at(TODAY - timedelta(days=36)))
        trace(conn, "after-prune-default", _at(TODAY - timedelta(days=45)))
    assert {"after-prune", "after-prune-default"} <= _trace_ids(db_url)


def test_evidence_is_compacted_and_corrections_kept(db_url: str) -> None:
    """Evidence JSON kept from before schema 0003 is compacted past the cutoff; newer corrections
    keep their typed evidence (already compact) and every correction stays."""
    with connect(db_url) as conn:
        run = run_row(conn)
        for i, back in enumerate((200, 190, 5, 200)):
            row = spend_log(conn, f"r{i}", NOW - timedelta(days=back), ttft_ms=None)
            correct(conn, row, run, ttft_ms=300)
        # r0..r2 as written before schema 0003: their evidence is JSON
        conn.execute(text(
            "UPDATE ttft_reconcile.corrections c SET legacy_evidence = ttft_reconcile.evidence(c),"
            " joined_by = NULL, first_chunk_at = NULL WHERE request_id IN ('r0', 'r1', 'r2')"))
    engine = engine_for(db_url)
    try:
        dry = prune_traces(engine, SessionLimits(), cutoff=NOW - timedelta(days=30),
                           evidence_cutoff=NOW - timedelta(days=180), dry_run=True)
        result = prune_traces(engine, SessionLimits(), cutoff=NOW - timedelta(days=30),
                              evidence_cutoff=NOW - timedelta(days=180), batch_size=1)
        again = prune_traces(engine, SessionLimits(), cutoff=NOW - timedelta(days=30),
                             evidence_cutoff=NOW - timedelta(days=180))
    finally:
        engine.dispose()
    assert (dry.evidence_compacted, result.evidence_compacted, again.evidence_compacted) == (2, 2, 0)
    with connect(db_url) as conn:
        evidence = dict(conn.execute(text(
            "SELECT request_id, ttft_reconcile.evidence(c) FROM ttft_reconcile.corrections c")).all())
    assert len(evidence) == 4
    assert evidence["r0"] == {"compacted": True, "join": ["request_id=litellm_call_id"],
                              "ttft_ms_from_request_start": {"first_chunk": 450.0},
                              "ttft_ms_from_api_call_start": {"first_chunk": 250.0}}
    assert "instants" in evidence["r2"] and "compacted" not in evidence["r2"]
    assert evidence["r3"]["instants"]["first_chunk"] and "compacted" not in evidence["r3"]


def test_cli_dry_run_json_and_ensure_partitions(db_url: str) -> None:
    _seed(db_url)
    before = _names(db_url)
    out = CliRunner().invoke(cli, ["prune-traces", "--database-url", db_url, "--older-than", "38d",
                                   "--dry-run", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    assert payload["dry_run"] is True and len(payload["dropped_partitions"]) == 2
    assert _names(db_url) == before
    out = CliRunner().invoke(cli, ["prune-traces", "--database-url", db_url, "--older-than", "38d"],
                             catch_exceptions=False)
    assert "dropped 2 partition(s)" in out.output
    before = _names(db_url)
    ensure = CliRunner().invoke(cli, ["ensure-partitions", "--database-url", db_url, "--days-ahead", "10",
                                      "--json"], catch_exceptions=False)
    after = _names(db_url)
    wanted = {f"stream_traces_p{(TODAY + timedelta(days=d)):%Y%m%d}" for d in range(-1, 11)}
    assert wanted <= after
    assert json.loads(ensure.output)["created"] == len(after - before) > 0
