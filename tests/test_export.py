"""export: corrections as CSV/JSONL with instants in UTC and TTFT under each origin."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta

from click.testing import CliRunner
from sqlalchemy import text

from tests.publish_data import UTC, connect, correct, run_row, spend_log
from ttft_reconcile.cli import cli
from ttft_reconcile.export import COLUMNS, iter_corrections, write_csv

DAY = datetime(2026, 11, 10, tzinfo=UTC)


def _seed(url: str) -> None:
    with connect(url) as conn:
        run = run_row(conn)
        a = spend_log(conn, "req-a", DAY + timedelta(hours=1, milliseconds=123), ttft_ms=None)
        correct(conn, a, run, ttft_ms=310, litellm_call_id="call-a", api_call_offset_ms=200)
        b = spend_log(conn, "req-b", DAY + timedelta(hours=2), ttft_ms=None)
        correct(conn, b, run, ttft_ms=500, policy="first_visible")
        c = spend_log(conn, "req-c", DAY + timedelta(hours=3), ttft_ms=None)
        correct(conn, c, run, ttft_ms=90)
        conn.execute(text("UPDATE ttft_reconcile.corrections SET status = 'reverted' WHERE request_id = 'req-c'"))
        d = spend_log(conn, "req-d", DAY + timedelta(days=1), ttft_ms=None)
        correct(conn, d, run, ttft_ms=90)


def test_records_have_both_instants_and_every_origin(db_url: str) -> None:
    _seed(db_url)
    with connect(db_url) as conn:
        records = list(iter_corrections(conn, DAY, DAY + timedelta(days=1)))
        with_reverted = list(iter_corrections(conn, DAY, DAY + timedelta(days=1), include_reverted=True))
    assert [r.request_id for r in records] == ["req-a", "req-b"]
    assert [r.request_id for r in with_reverted] == ["req-a", "req-b", "req-c"]
    a = records[0]
    assert a.litellm_call_id == "call-a"
    assert a.start_time == "2026-11-10T01:00:00.123+00:00"
    assert a.old_completion_start_time == "2026-11-10T01:00:02.123+00:00"
    assert a.new_completion_start_time == "2026-11-10T01:00:00.433+00:00"
    assert (a.ttft_ms, a.ttft_ms_from_request_start, a.ttft_ms_from_api_call_start) == (310.0, 460.0, 260.0)
    assert records[1].policy == "first_visible"
    assert records[1].ttft_ms_from_request_start == 650.0


def test_plain_number_evidence_is_accepted(db_url: str) -> None:
    _seed(db_url)
    with connect(db_url) as conn:
        conn.execute(text(
            "UPDATE ttft_reconcile.corrections SET legacy_evidence = '{\"ttft_ms_from_request_start\": 42.5}'"
            " WHERE request_id = 'req-a'"))
        a = next(iter_corrections(conn, DAY, DAY + timedelta(days=1)))
    assert (a.ttft_ms_from_request_start, a.ttft_ms_from_api_call_start) == (42.5, None)


def test_csv_and_jsonl_through_the_cli(db_url: str, tmp_path) -> None:
    _seed(db_url)
    base = ["export", "--database-url", db_url, "--since", "2026-11-10", "--until", "2026-11-11"]
    out = CliRunner().invoke(cli, [*base, "--format", "csv"], catch_exceptions=False)
    assert out.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert tuple(rows[0]) == COLUMNS
    assert [r["request_id"] for r in rows] == ["req-a", "req-b"]
    assert rows[1]["litellm_call_id"] == "req-b"
    target = tmp_path / "c.jsonl"
    res = CliRunner().invoke(cli, [*base, "--output", str(target)], catch_exceptions=False)
    assert res.exit_code == 0
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["request_id"] for line in lines] == ["req-a", "req-b"]
    assert lines[0]["ttft_ms_from_api_call_start"] == 260.0


def test_write_csv_leaves_null_cells_empty(db_url: str) -> None:
    _seed(db_url)
    with connect(db_url) as conn:
        conn.execute(text("UPDATE ttft_reconcile.corrections SET legacy_evidence = '{}'"))
        buffer = io.StringIO()
        count = write_csv(iter_corrections(conn, DAY, DAY + timedelta(days=1)), buffer)
    assert count == 2
    first = list(csv.DictReader(io.StringIO(buffer.getvalue())))[0]
    assert first["ttft_ms_from_request_start"] == ""
