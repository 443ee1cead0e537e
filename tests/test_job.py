"""The batch job against real Postgres with LiteLLM's real schema (both eras)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from tests.factories import (
    BASE,
    SpendRow,
    broken_stream,
    cst_of,
    insert_spend,
    insert_trace,
    ms,
    snapshot,
)
from ttft_reconcile import job
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.settings import JobSettings

SINCE = datetime(2026, 3, 10, tzinfo=timezone.utc)
UNTIL = datetime(2026, 3, 11, tzinfo=timezone.utc)


def settings_for(url: str, **kw: Any) -> JobSettings:
    return JobSettings(database=parse_database_url(url), **kw)


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url)


def seed_every_outcome(conn: psycopg.Connection[Any], *, new_era: bool) -> dict[str, str]:
    """One candidate per outcome (but `changed`); returns outcome → request_id."""
    ids: dict[str, str] = {}
    t = BASE

    # repaired: a traced broken stream (old era: request_id = call id; new era: msg_ id + column)
    call = str(uuid.uuid4())
    rid = f"msg_{uuid.uuid4().hex[:20]}" if new_era else call
    insert_spend(conn, [broken_stream(t, request_id=rid, litellm_call_id=call if new_era else None)])
    insert_trace(conn, call, request_start=t - ms(200), first_chunk=t + ms(310.4), first_event=t + ms(310.6),
                 first_output=t + ms(612), first_visible=t + ms(612), response_id=rid if new_era else "msg_x1")
    ids["repaired"] = rid

    # confirmed: a single-chunk stream whose first chunk is at the end
    t2 = t + timedelta(seconds=10)
    call2 = str(uuid.uuid4())
    row = broken_stream(t2, request_id=call2, total_ms=40)
    insert_spend(conn, [row])
    insert_trace(conn, call2, request_start=t2, first_chunk=row.end - ms(0.3), first_visible=row.end - ms(0.3))
    ids["confirmed"] = call2

    # no_trace: a broken stream never traced
    t3 = t + timedelta(seconds=20)
    ids["no_trace"] = str(uuid.uuid4())
    insert_spend(conn, [broken_stream(t3, request_id=ids["no_trace"], one_ms_below=True)])

    # not_streaming: chatcmpl- id on anthropic_messages, and a Bedrock /invoke URL
    t4 = t + timedelta(seconds=30)
    ids["not_streaming"] = f"chatcmpl-{uuid.uuid4()}"
    insert_spend(conn, [broken_stream(t4, request_id=ids["not_streaming"])])
    bedrock = str(uuid.uuid4())
    insert_spend(conn, [broken_stream(t4 + ms(5), request_id=bedrock, provider="bedrock",
                                      api_base="https://bedrock-runtime.us-east-1.amazonaws.com/model/"
                                               "anthropic.claude-3/invoke")])
    ids["not_streaming_bedrock"] = bedrock

    # no_first_token: under first_visible only; the stream had no answer text (tool call only)
    t5 = t + timedelta(seconds=40)
    call5 = str(uuid.uuid4())
    insert_spend(conn, [broken_stream(t5, request_id=call5)])
    insert_trace(conn, call5, request_start=t5, first_chunk=t5 + ms(100), first_output=t5 + ms(300),
                 first_visible=None)
    ids["no_first_token"] = call5

    # out_of_bounds: the trace's first chunk lies after endTime (clock trouble)
    t6 = t + timedelta(seconds=50)
    call6 = str(uuid.uuid4())
    insert_spend(conn, [broken_stream(t6, request_id=call6, total_ms=500)])
    insert_trace(conn, call6, request_start=t6, first_chunk=t6 + timedelta(hours=5),
                 first_visible=t6 + timedelta(hours=5))
    ids["out_of_bounds"] = call6

    # ambiguous: request_id names one call's trace while response_id of another call matches too
    t7 = t + timedelta(seconds=60)
    call7a, call7b = str(uuid.uuid4()), str(uuid.uuid4())
    insert_spend(conn, [broken_stream(t7, request_id=call7a)])
    insert_trace(conn, call7a, request_start=t7, first_chunk=t7 + ms(100))
    insert_trace(conn, call7b, request_start=t7, first_chunk=t7 + ms(200), response_id=call7a)
    ids["ambiguous"] = call7a

    # not candidates: a healthy stream, an acompletion row, a row outside the window
    t8 = t + timedelta(seconds=70)
    insert_spend(conn, [SpendRow(str(uuid.uuid4()), t8, t8 + ms(900), t8 + ms(300))])
    insert_spend(conn, [broken_stream(t8, call_type="acompletion")])
    insert_spend(conn, [broken_stream(datetime(2026, 3, 12, 1, 0), request_id="outside-window")])
    return ids


@pytest.mark.parametrize("policy", ["first_chunk", "first_visible"])
def test_every_outcome_once_and_counts_add_up(any_era_db_url: str, policy: str) -> None:
    with connect(any_era_db_url) as conn:
        new_era = "litellm_call_id" in {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'LiteLLM_SpendLogs'")}
        ids = seed_every_outcome(conn, new_era=new_era)
    summary = job.backfill(settings_for(any_era_db_url, policy=policy), SINCE, UNTIL)
    assert summary.candidates == 8
    assert sum(summary.outcomes.values()) == summary.candidates
    expected = {"repaired": 1, "confirmed": 1, "no_trace": 1, "not_streaming": 2, "out_of_bounds": 1,
                "ambiguous": 1, "changed": 0}
    if policy == "first_chunk":
        expected["repaired"] += 1  # the tool-call-only stream has a first chunk
        expected["no_first_token"] = 0
    else:
        expected["no_first_token"] = 1
    assert summary.outcomes == expected
    with connect(any_era_db_url) as conn:
        repaired = cst_of(conn, ids["repaired"])
        want = BASE + ms(310) if policy == "first_chunk" else BASE + ms(612)
        assert repaired == want
        for key in ("no_trace", "not_streaming", "out_of_bounds", "ambiguous", "confirmed"):
            row = conn.execute('SELECT "completionStartTime" = "endTime" OR "endTime" - "completionStartTime"'
                               ' <= interval \'1 ms\' FROM "LiteLLM_SpendLogs" WHERE request_id = %s',
                               (ids[key],)).fetchone()
            assert row == (True,), key
        audit = conn.execute(
            "SELECT request_id, policy, old_completion_start_time, new_completion_start_time, ttft_ms,"
            " ttft_reconcile.evidence(c)->'join', status FROM ttft_reconcile.corrections c WHERE request_id = %s",
            (ids["repaired"],)).fetchall()
        assert len(audit) == 1
        assert audit[0][1] == policy
        assert audit[0][2] == BASE + ms(1500)
        assert audit[0][3] == want
        assert audit[0][4] == pytest.approx((want - BASE).total_seconds() * 1000)
        assert audit[0][6] == "applied"
        expected_join = ["litellm_call_id column", "request_id=response_id"] if new_era else \
            ["request_id=litellm_call_id"]
        assert audit[0][5] == expected_join


def test_rerun_writes_nothing_and_rollback_restores_exactly(any_era_db_url: str) -> None:
    with connect(any_era_db_url) as conn:
        seed_every_outcome(conn, new_era=False)
        before = snapshot(conn)
    settings = settings_for(any_era_db_url, batch_size=3)
    first = job.backfill(settings, SINCE, UNTIL)
    assert first.outcomes["repaired"] == 2
    assert first.batches >= 3
    with connect(any_era_db_url) as conn:
        after_first = snapshot(conn)
        assert after_first != before
    again = job.backfill(settings, SINCE, UNTIL, restart=True)
    assert again.outcomes["repaired"] == 0
    with connect(any_era_db_url) as conn:
        assert snapshot(conn) == after_first
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.corrections").fetchone() == (2,)
    undone = job.rollback(settings, run_id=first.run_id)
    assert undone.outcomes == {"reverted": 2, "changed": 0, "missing": 0}
    with connect(any_era_db_url) as conn:
        assert snapshot(conn) == before
        statuses = conn.execute("SELECT status, reverted_by_run FROM ttft_reconcile.corrections").fetchall()
        assert statuses == [("reverted", undone.run_id)] * 2


def test_dry_run_writes_only_its_run_row(db_url: str) -> None:
    with connect(db_url) as conn:
        seed_every_outcome(conn, new_era=True)
        before = snapshot(conn)
    summary = job.backfill(settings_for(db_url, dry_run=True), SINCE, UNTIL)
    assert summary.dry_run and summary.outcomes["repaired"] == 2, summary.outcomes
    with connect(db_url) as conn:
        assert snapshot(conn) == before
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.corrections").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.backfills").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.checkpoints").fetchone() == (0,)
        runs = conn.execute("SELECT mode, dry_run, status, candidates FROM ttft_reconcile.runs").fetchall()
        assert runs == [("backfill", True, "succeeded", 8)]


def test_rollback_leaves_rows_changed_since_alone(db_url: str) -> None:
    with connect(db_url) as conn:
        ids = seed_every_outcome(conn, new_era=True)
    first = job.backfill(settings_for(db_url), SINCE, UNTIL)
    assert first.outcomes["repaired"] == 2
    other = BASE + ms(777)
    with connect(db_url) as conn:
        conn.execute('UPDATE "LiteLLM_SpendLogs" SET "completionStartTime" = %s WHERE request_id = %s',
                     (other, ids["repaired"]))
        conn.execute('DELETE FROM "LiteLLM_SpendLogs" WHERE request_id = %s', (ids["no_first_token"],))
        conn.commit()
    undone = job.rollback(settings_for(db_url), since=SINCE, until=UNTIL)
    assert undone.outcomes == {"reverted": 0, "changed": 1, "missing": 1}
    with connect(db_url) as conn:
        assert cst_of(conn, ids["repaired"]) == other


def test_new_value_rounds_like_postgres(db_url: str) -> None:
    with connect(db_url) as conn:
        call = str(uuid.uuid4())
        insert_spend(conn, [broken_stream(BASE, request_id=call)])
        insert_trace(conn, call, request_start=BASE, first_chunk=BASE + timedelta(microseconds=212_500))
    job.backfill(settings_for(db_url), SINCE, UNTIL)
    with connect(db_url) as conn:
        assert cst_of(conn, call) == BASE + ms(213)
        # the same rounding Postgres applies to the literal
        assert conn.execute("SELECT %s::timestamp(3)", (BASE + timedelta(microseconds=212_500),)).fetchone() == (
            BASE + ms(213),)


def test_retried_call_uses_the_attempt_that_completed(db_url: str) -> None:
    with connect(db_url) as conn:
        call = str(uuid.uuid4())
        insert_spend(conn, [broken_stream(BASE, request_id=call, total_ms=3000)])
        insert_trace(conn, call, stream_seq=0, outcome="upstream_error", request_start=BASE,
                     first_chunk=BASE + ms(50))
        insert_trace(conn, call, stream_seq=1, outcome="completed", request_start=BASE, first_chunk=BASE + ms(900))
        insert_trace(conn, call, stream_seq=2, outcome="completed", request_start=BASE, first_chunk=BASE + ms(1900))
    summary = job.backfill(settings_for(db_url), SINCE, UNTIL)
    assert summary.outcomes["repaired"] == 1
    with connect(db_url) as conn:
        assert cst_of(conn, call) == BASE + ms(900)


def test_incremental_run_checkpoint_lookback_and_settle(db_url: str) -> None:
    now = datetime(2026, 3, 10, 13, 0, tzinfo=timezone.utc)
    with connect(db_url) as conn:
        early = broken_stream(datetime(2026, 3, 10, 12, 30))
        young = broken_stream(datetime(2026, 3, 10, 12, 59))  # inside the 2 min settle delay
        insert_spend(conn, [early, young])
        for row in (early, young):
            insert_trace(conn, row.request_id, request_start=row.start, first_chunk=row.start + ms(100))
    settings = settings_for(db_url)
    first = job.run_incremental(settings, now=now)
    assert first.outcomes["repaired"] == 1
    assert first.since == now - timedelta(hours=24)
    assert first.until == now - timedelta(minutes=2)
    with connect(db_url) as conn:
        assert cst_of(conn, young.request_id) == young.cst
        late = broken_stream(datetime(2026, 3, 10, 12, 40))  # written late, behind the checkpoint
        insert_spend(conn, [late])
        insert_trace(conn, late.request_id, request_start=late.start, first_chunk=late.start + ms(100))
    second = job.run_incremental(settings, now=now + timedelta(minutes=5))
    assert second.since == first.until - timedelta(hours=1)
    assert second.outcomes["repaired"] == 2  # the young row and the late one
    assert second.checkpoint == now + timedelta(minutes=3)


def _one_broken_traced_row(url: str) -> SpendRow:
    """A broken stream at 2026-03-10 12:30 UTC whose trace puts its first chunk 100 ms in."""
    with connect(url) as conn:
        row = broken_stream(datetime(2026, 3, 10, 12, 30))
        insert_spend(conn, [row])
        insert_trace(conn, row.request_id, request_start=row.start, first_chunk=row.start + ms(100))
    return row


def test_run_never_undoes_a_rollback_but_a_backfill_reapplies(db_url: str) -> None:
    now = datetime(2026, 3, 10, 13, 0, tzinfo=timezone.utc)
    row = _one_broken_traced_row(db_url)
    settings = settings_for(db_url)
    first = job.run_incremental(settings, now=now)
    assert first.outcomes["repaired"] == 1
    job.rollback(settings, run_id=first.run_id)
    again = job.run_incremental(settings, now=now + timedelta(minutes=5))
    assert again.outcomes["repaired"] == 0 and again.outcomes["changed"] == 1
    with connect(db_url) as conn:
        assert cst_of(conn, row.request_id) == row.cst
    redo = job.backfill(settings, SINCE, UNTIL)
    assert redo.outcomes["repaired"] == 1
    with connect(db_url) as conn:
        assert cst_of(conn, row.request_id) == row.start + ms(100)


def test_finished_backfill_says_so_and_abandoned_runs_are_closed(db_url: str) -> None:
    with connect(db_url) as conn:
        seed_every_outcome(conn, new_era=False)
    settings = settings_for(db_url)
    job.backfill(settings, SINCE, UNTIL)
    with connect(db_url) as conn:
        conn.execute("INSERT INTO ttft_reconcile.runs (mode, status, started_at, heartbeat_at)"
                     " VALUES ('run', 'running', now() - interval '3 hours', now() - interval '2 hours')")
        conn.commit()
    second = job.backfill(settings, SINCE, UNTIL)
    assert second.candidates == 0
    assert "finished at" in second.message and "--restart" in second.message
    with connect(db_url) as conn:
        statuses = conn.execute("SELECT status, error FROM ttft_reconcile.runs ORDER BY id").fetchall()
    assert [s for s, _ in statuses] == ["succeeded", "failed", "succeeded"]
    assert statuses[1][1].startswith("abandoned: no heartbeat since")


def _live_backfill_run(url: str, since: str, until: str) -> int:
    """A backfill run row over [since, until) that heartbeated just now; its id."""
    with connect(url) as conn:
        live = conn.execute("INSERT INTO ttft_reconcile.runs (mode, status, window_since, window_until, heartbeat_at)"
                            " VALUES ('backfill', 'running', %s, %s, now()) RETURNING id", (since, until)).fetchone()
        conn.commit()
    assert live is not None
    return int(live[0])


def test_rollback_refuses_while_the_run_is_still_writing(db_url: str) -> None:
    from ttft_reconcile.errors import LaneHeld

    live = _live_backfill_run(db_url, "2026-03-10", "2026-03-11")
    with pytest.raises(LaneHeld, match="still writing"):
        job.rollback(settings_for(db_url), run_id=live)
    with pytest.raises(LaneHeld, match="still writing"):
        job.rollback(settings_for(db_url), since=SINCE, until=UNTIL)
    # a window elsewhere is fine
    done = job.rollback(settings_for(db_url), since=datetime(2026, 4, 1, tzinfo=timezone.utc),
                        until=datetime(2026, 4, 2, tzinfo=timezone.utc))
    assert done.candidates == 0


def test_rollback_of_a_finished_run_refuses_while_another_run_over_its_window_is_live(db_url: str) -> None:
    from ttft_reconcile.errors import LaneHeld

    row = _one_broken_traced_row(db_url)
    settings = settings_for(db_url)
    finished = job.backfill(settings, SINCE, UNTIL)
    assert finished.outcomes["repaired"] == 1
    live = _live_backfill_run(db_url, "2026-03-10 12:00+00", "2026-03-12")
    with pytest.raises(LaneHeld, match=f"run {live} is still writing"):
        job.rollback(settings, run_id=finished.run_id)
    with connect(db_url) as conn:
        assert cst_of(conn, row.request_id) == row.start + ms(100)  # nothing undone
        # the live run's window moved past this one: no longer in the way
        conn.execute("UPDATE ttft_reconcile.runs SET window_since = '2026-03-11' WHERE id = %s", (live,))
        conn.commit()
    undone = job.rollback(settings, run_id=finished.run_id)
    assert undone.outcomes["reverted"] == 1 and undone.message == f"rolled back run {finished.run_id}"
    again = job.rollback(settings, run_id=finished.run_id)
    assert again.outcomes["reverted"] == 0
    assert again.message.startswith(f"nothing to roll back in run {finished.run_id}")
    dry = job.backfill(settings_for(db_url, dry_run=True), SINCE, datetime(2026, 3, 10, 23, tzinfo=timezone.utc))
    assert "dry run" in job.rollback(settings, run_id=dry.run_id).message


def test_a_correction_overwritten_since_is_changed_not_confirmed(db_url: str) -> None:
    from sqlalchemy import create_engine

    from ttft_reconcile.explain import explain

    row = _one_broken_traced_row(db_url)
    settings = settings_for(db_url)
    assert job.backfill(settings, SINCE, UNTIL).outcomes["repaired"] == 1
    with connect(db_url) as conn:  # another writer puts the broken value back
        conn.execute('UPDATE "LiteLLM_SpendLogs" SET "completionStartTime" = "endTime" WHERE request_id = %s',
                     (row.request_id,))
        conn.commit()
    again = job.backfill(settings, SINCE, UNTIL, restart=True)
    assert again.outcomes["changed"] == 1 and again.outcomes["confirmed"] == 0
    engine = create_engine(settings.database.sqlalchemy)
    try:
        with engine.connect() as conn:
            told = explain(conn, row.request_id)
    finally:
        engine.dispose()
    assert told.verdict == "changed" and "someone else changed it" in told.reason
    with connect(db_url) as conn:
        assert cst_of(conn, row.request_id) == row.cst  # left as the other writer set it


def test_ad_hoc_backfill_options_do_not_change_the_dashboard_settings(db_url: str) -> None:
    settings = settings_for(db_url, call_types=("acompletion",), tolerance_ms=1000)
    job.backfill(settings, SINCE, UNTIL)
    with connect(db_url) as conn:
        stored = dict(conn.execute("SELECT key, value FROM ttft_reconcile.settings").fetchall())
    assert stored["call_types"] == ["anthropic_messages", "aresponses", "pass_through_endpoint"]
    assert stored["tolerance_ms"] == 5


def test_an_infinite_trace_instant_does_not_block_its_window(db_url: str) -> None:
    with connect(db_url) as conn:
        bad, good = broken_stream(BASE), broken_stream(BASE + ms(10))
        insert_spend(conn, [bad, good])
        insert_trace(conn, bad.request_id, request_start=BASE, first_chunk=BASE + ms(100))
        insert_trace(conn, good.request_id, request_start=BASE, first_chunk=BASE + ms(200))
        conn.execute("UPDATE ttft_reconcile.stream_traces SET first_chunk_at = 'infinity'"
                     " WHERE litellm_call_id = %s", (bad.request_id,))
        conn.commit()
    summary = job.backfill(settings_for(db_url), SINCE, UNTIL)
    assert summary.outcomes["repaired"] == 1 and summary.outcomes["no_first_token"] == 1
