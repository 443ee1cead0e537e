"""explain: the three joins, every policy's instant, corrections and a verdict with its reason."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from tests.publish_data import UTC, connect, correct, run_row, spend_log, trace
from ttft_reconcile import job
from ttft_reconcile.cli import cli
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.explain import JOIN_CALL_ID, JOIN_RESPONSE_ID, JOIN_SPEND_CALL_ID, explain
from ttft_reconcile.settings import JobSettings

START = datetime(2026, 11, 10, 12, tzinfo=UTC)


def _joins(result) -> dict[str, list[str]]:
    return {j.strategy: [t.litellm_call_id for t in j.traces] for j in result.joins}


def test_old_era_joins_on_request_id_and_reports_every_policy(old_db_url: str) -> None:
    with connect(old_db_url) as conn:
        spend_log(conn, "call-1", START, ttft_ms=None, total_ms=2000)
        # 1.82.3: startTime is late (after the upstream headers); the trace starts 200 ms earlier.
        trace(conn, "call-1", START - timedelta(milliseconds=200), first_chunk_ms=500)
        result = explain(conn, "call-1")
    assert result.verdict == "repairable"
    assert _joins(result) == {JOIN_CALL_ID: ["call-1"], JOIN_SPEND_CALL_ID: [], JOIN_RESPONSE_ID: []}
    assert "no litellm_call_id column" in result.joins[1].note
    assert result.instants_ms["first_chunk"] == pytest.approx(300.0)
    assert result.instants_ms["first_visible"] == pytest.approx(600.0)
    assert "TTFT 300 ms" in result.reason


def test_new_era_call_id_column_and_response_id_agree(db_url: str) -> None:
    with connect(db_url) as conn:
        spend_log(conn, "msg_01abc", START, ttft_ms=None, litellm_call_id="call-2")
        trace(conn, "call-2", START, response_id="msg_01abc", first_chunk_ms=310)
        trace(conn, "call-2", START + timedelta(milliseconds=900), stream_seq=1, first_chunk_ms=50)
        result = explain(conn, "msg_01abc")
    assert _joins(result) == {JOIN_CALL_ID: [], JOIN_SPEND_CALL_ID: ["call-2", "call-2"],
                              JOIN_RESPONSE_ID: ["call-2"]}
    assert result.verdict == "repairable"
    assert result.chosen is not None and result.chosen.stream_seq == 0


def test_joins_that_disagree_are_ambiguous(db_url: str) -> None:
    with connect(db_url) as conn:
        spend_log(conn, "x-1", START, ttft_ms=None)
        trace(conn, "x-1", START)
        trace(conn, "other-call", START, response_id="x-1")
        result = explain(conn, "x-1")
    assert result.verdict == "ambiguous"
    assert "other-call" in result.reason and "x-1" in result.reason


def test_reconciled_row_lists_its_correction_and_run(db_url: str) -> None:
    with connect(db_url) as conn:
        row = spend_log(conn, "fixed", START, ttft_ms=None)
        run = run_row(conn, mode="backfill")
        correct(conn, row, run, ttft_ms=275)
        result = explain(conn, "fixed")
    assert result.verdict == "reconciled"
    assert f"run {run}" in result.reason and "TTFT 275 ms" in result.reason
    (c,) = result.corrections
    assert (c.run_id, c.run_mode, c.status) == (run, "backfill", "applied")


def test_no_trace_explains_rows_older_than_the_capture(db_url: str) -> None:
    with connect(db_url) as conn:
        spend_log(conn, "ancient", START - timedelta(days=30), ttft_ms=None)
        none_yet = explain(conn, "ancient")
        trace(conn, "unrelated", START)
        before_capture = explain(conn, "ancient")
        spend_log(conn, "untraced", START + timedelta(hours=1), ttft_ms=None)
        untraced = explain(conn, "untraced")
    assert none_yet.verdict == "no_trace" and "is the capture installed" in none_yet.reason
    assert before_capture.verdict == "no_trace" and "before the capture was installed" in before_capture.reason
    assert untraced.verdict == "no_trace" and "no trace within an hour" in untraced.reason


def test_other_verdicts(db_url: str) -> None:
    with connect(db_url) as conn:
        spend_log(conn, "orig", START, ttft_ms=400)
        spend_log(conn, "chat", START, ttft_ms=None, call_type="acompletion")
        spend_log(conn, "chatcmpl-1", START, ttft_ms=None)
        spend_log(conn, "nofirst", START, ttft_ms=None)
        trace(conn, "nofirst", START, first_chunk_ms=None, outcome="upstream_error")
        spend_log(conn, "late", START, ttft_ms=None, total_ms=1000)
        trace(conn, "late", START, first_chunk_ms=1500)
        spend_log(conn, "same", START, ttft_ms=None, total_ms=1000)
        conn.execute(text("UPDATE \"LiteLLM_SpendLogs\" SET \"completionStartTime\" = \"startTime\" + interval '300 ms'"
                          ", \"endTime\" = \"startTime\" + interval '302 ms' WHERE request_id = 'same'"))
        trace(conn, "same", START, first_chunk_ms=300)
        verdicts = {rid: explain(conn, rid).verdict for rid in
                    ("orig", "chat", "chatcmpl-1", "nofirst", "late", "same", "missing")}
    assert verdicts == {"orig": "original", "chat": "not_candidate", "chatcmpl-1": "not_streaming",
                        "nofirst": "no_first_token", "late": "out_of_bounds", "same": "confirmed",
                        "missing": "not_found"}


def test_cli_text_and_json(db_url: str) -> None:
    with connect(db_url) as conn:
        spend_log(conn, "call-9", START, ttft_ms=None)
        trace(conn, "call-9", START, first_chunk_ms=250)
    text_out = CliRunner().invoke(cli, ["explain", "call-9", "--database-url", db_url], catch_exceptions=False)
    assert text_out.exit_code == 0
    assert text_out.output.startswith("request call-9: repairable")
    assert "first_chunk" in text_out.output and "250 ms after startTime" in text_out.output
    json_out = CliRunner().invoke(cli, ["explain", "call-9", "--database-url", db_url, "--json",
                                        "--policy", "first_visible"], catch_exceptions=False)
    payload = json.loads(json_out.output)
    assert payload["verdict"] == "repairable"
    assert payload["ttft_ms_by_policy"]["first_visible"] == pytest.approx(550.0)
    assert payload["joins"][0]["traces"][0]["litellm_call_id"] == "call-9"


def test_cli_unknown_request_id_exits_1(db_url: str) -> None:
    result = CliRunner().invoke(cli, ["explain", "no-such-request", "--database-url", db_url])
    assert result.exit_code == 1
    assert "no SpendLogs row with request_id 'no-such-request'" in result.output


def test_a_rolled_back_row_is_left_to_a_backfill(db_url: str) -> None:
    with connect(db_url) as conn:
        spend_log(conn, "undone", START, ttft_ms=None)
        trace(conn, "undone", START, first_chunk_ms=420)
    settings = JobSettings(database=parse_database_url(db_url))
    window = (START - timedelta(hours=1), START + timedelta(hours=1))
    summary = job.backfill(settings, *window)
    assert summary.outcomes.get("repaired") == 1
    with connect(db_url) as conn:
        assert explain(conn, "undone").verdict == "reconciled"
    job.rollback(settings, run_id=summary.run_id)
    with connect(db_url) as conn:
        result = explain(conn, "undone")
    assert result.verdict == "rolled_back"
    assert "rolled back by run" in result.reason and "TTFT 420 ms" in result.reason
    # what it says is what the job does: `run` over the row holds it, a backfill re-applies it
    held = job.run_incremental(replace(settings, initial_window=timedelta(hours=2), settle=timedelta(0)),
                               now=START + timedelta(hours=1))
    assert held.outcomes.get("changed") == 1 and not held.outcomes.get("repaired")
    again = job.backfill(settings, *window, restart=True)
    assert again.outcomes.get("repaired") == 1
