"""A backfill rebuilds `ttft_daily` for the UTC days of each finished slice while its next batches
run, and the closing refresh does whatever that left undone. Slices end at UTC midnights."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.publish_data import UTC, connect, spend_log, trace
from ttft_reconcile import job
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.errors import Interrupted
from ttft_reconcile.job import Progress
from ttft_reconcile.settings import JobSettings
from ttft_reconcile.signals import StopFlag

# Three days from noon to noon: four slices, the first and last half a UTC day.
SINCE = datetime(2026, 11, 10, 12, tzinfo=UTC)
UNTIL = datetime(2026, 11, 13, 12, tzinfo=UTC)
DAYS = [date(2026, 11, 10), date(2026, 11, 11), date(2026, 11, 12), date(2026, 11, 13)]
COLUMNS = ("day, model_group, provider, call_type, n, p50_ms, p90_ms, p95_ms, p99_ms,"
           " n_original, n_reconciled, n_unresolved")


def _seed(url: str) -> None:
    """Every 90 minutes a broken traced stream, and every third slot a row with a real first token."""
    with connect(url) as conn:
        at = SINCE
        i = 0
        while at < UNTIL:
            spend_log(conn, f"call-{i}", at, ttft_ms=None, total_ms=4000)
            trace(conn, f"call-{i}", at, first_chunk_ms=200 + 7 * i)
            if i % 3 == 0:
                spend_log(conn, f"orig-{i}", at + timedelta(seconds=5), ttft_ms=900 + i, total_ms=4000)
            at += timedelta(minutes=90)
            i += 1


def _rollup(url: str) -> list[tuple[object, ...]]:
    with connect(url) as conn:
        return [tuple(r) for r in conn.execute(text(f"SELECT {COLUMNS} FROM ttft_reconcile.ttft_daily ORDER BY 1, 2"))]


def _recomputed(url: str) -> list[tuple[object, ...]]:
    """What a refresh of every day would write now."""
    with connect(url) as conn:
        return [tuple(r) for r in conn.execute(text(
            f"SELECT {COLUMNS} FROM ttft_reconcile.ttft_daily_rows(:since, :until) ORDER BY 1, 2"),
            {"since": datetime(2026, 11, 10, tzinfo=UTC), "until": datetime(2026, 11, 14, tzinfo=UTC)})]


def _pending(url: str) -> list[date]:
    with connect(url) as conn:
        return [r[0] for r in conn.execute(text("SELECT day FROM ttft_reconcile.rollup_pending ORDER BY day"))]


def _assert_rollup_is_a_full_rebuild(url: str) -> None:
    """Every day is in the rollup, exactly as a rebuild now would write it, and nothing is pending."""
    assert _rollup(url) == _recomputed(url)
    assert {row[0] for row in _rollup(url)} == set(DAYS)
    assert _pending(url) == []


def _on_rollup_insert(url: str, name: str, body: str, *, before: str = "") -> None:
    """A trigger `name` running plpgsql `body` before each insert of a ttft_daily row."""
    with connect(url) as conn:
        conn.execute(text(
            f"{before} CREATE FUNCTION public.{name}() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN {body} RETURN NEW; END $$;"
            f" CREATE TRIGGER {name} BEFORE INSERT ON ttft_reconcile.ttft_daily"
            f" FOR EACH ROW EXECUTE FUNCTION public.{name}()"))


def _settings(url: str) -> JobSettings:
    return JobSettings(database=parse_database_url(url), batch_size=4)


def test_days_are_rebuilt_behind_the_batches_and_match_a_full_refresh(old_db_url: str) -> None:
    _seed(old_db_url)
    seen_while_running: dict[date, set[date]] = {}

    def progress(p: Progress) -> None:
        # Once the batches are past a day (its slice is done), its rollup rows appear (the refresh
        # runs in a thread of the job: give it a moment).
        if p.position is None:
            return
        passed = {d for d in DAYS if d < p.position.date()}
        deadline = time.monotonic() + 10
        while True:
            with connect(old_db_url) as conn:
                have = {r[0] for r in conn.execute(text("SELECT DISTINCT day FROM ttft_reconcile.ttft_daily"))}
            if passed <= have or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        seen_while_running[p.position.date()] = have

    summary = job.backfill(_settings(old_db_url), SINCE, UNTIL, progress=progress)

    assert summary.outcomes["repaired"] == 48
    # While the batches were on 2026-11-13 the first two days were already in the rollup.
    assert {date(2026, 11, 10), date(2026, 11, 11)} <= seen_while_running[date(2026, 11, 13)]
    # The end state is exactly a full rebuild of every day.
    _assert_rollup_is_a_full_rebuild(old_db_url)
    assert sum(int(row[10]) for row in _rollup(old_db_url)) == 48  # n_reconciled


def test_a_day_whose_background_refresh_failed_is_rebuilt_by_the_closing_refresh(old_db_url: str) -> None:
    _seed(old_db_url)
    # The first insert of a rollup row for 2026-11-11 fails (a sequence is not rolled back with the
    # transaction, so the retry gets through).
    _on_rollup_insert(old_db_url, "fail_once",
                      "IF NEW.day = DATE '2026-11-11' AND nextval('public.fail_once') = 1 THEN"
                      " RAISE EXCEPTION 'injected rollup failure'; END IF;",
                      before="CREATE SEQUENCE public.fail_once;")

    summary = job.backfill(replace(_settings(old_db_url), batch_size=6), SINCE, UNTIL)

    assert summary.status == "succeeded"
    with connect(old_db_url) as conn:
        attempts = conn.execute(text("SELECT last_value FROM public.fail_once")).scalar()
    assert attempts is not None and int(attempts) >= 2  # failed once behind the batches, then done
    _assert_rollup_is_a_full_rebuild(old_db_url)


def test_a_dry_run_writes_no_rollup(old_db_url: str) -> None:
    _seed(old_db_url)
    job.backfill(replace(_settings(old_db_url), dry_run=True), SINCE, UNTIL)
    assert _rollup(old_db_url) == []
    assert _pending(old_db_url) == []


def test_day_slices_are_utc_days(old_db_url: str) -> None:
    _seed(old_db_url)
    job.backfill(_settings(old_db_url), SINCE, UNTIL)
    with connect(old_db_url) as conn:
        bounds = [tuple(r) for r in conn.execute(text(
            "SELECT slice_since, slice_until FROM ttft_reconcile.backfill_slices ORDER BY slice_no"))]
    midnight = [datetime(2026, 11, day, tzinfo=UTC) for day in (11, 12, 13)]
    assert bounds == [(SINCE, midnight[0]), (midnight[0], midnight[1]), (midnight[1], midnight[2]),
                      (midnight[2], UNTIL)]


def test_two_workers_leave_the_rollup_of_a_full_rebuild(old_db_url: str) -> None:
    _seed(old_db_url)
    summary = job.backfill(_settings(old_db_url), SINCE, UNTIL, workers=2)
    assert summary.outcomes["repaired"] == 48
    _assert_rollup_is_a_full_rebuild(old_db_url)


def test_an_interrupted_backfill_cancels_its_rebuild_and_a_reissue_finishes(old_db_url: str) -> None:
    _seed(old_db_url)
    # Rebuilding a day takes seconds (a big production day), so one is under way when we stop.
    _on_rollup_insert(old_db_url, "slow_rollup", "PERFORM pg_sleep(5);")
    stop = StopFlag()

    def progress(p: Progress) -> None:
        if p.slices_done >= 1 and p.position is None:  # a slice is done: its day is being rebuilt
            time.sleep(0.3)
            stop.request("SIGINT")

    started = time.monotonic()
    with pytest.raises(Interrupted):
        job.backfill(_settings(old_db_url), SINCE, UNTIL, stop=stop, progress=progress)
    assert time.monotonic() - started < 5  # it did not wait for the rebuild
    with connect(old_db_url) as conn:
        still = conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
            " AND query LIKE '%INSERT INTO ttft_reconcile.ttft_daily%' AND pid <> pg_backend_pid()")).scalar()
        assert still == 0  # cancelled on the server, not left running after we exit
        conn.execute(text("DROP TRIGGER slow_rollup ON ttft_reconcile.ttft_daily"))
    assert date(2026, 11, 10) in _pending(old_db_url)  # the cancelled day stays marked

    again = job.backfill(_settings(old_db_url), SINCE, UNTIL)
    assert again.status == "succeeded"
    _assert_rollup_is_a_full_rebuild(old_db_url)


def test_a_killed_backfills_rebuild_does_not_keep_its_day_from_the_reissue(old_db_url: str) -> None:
    import os
    import signal
    import subprocess

    from tests.reliability.procs import SCRIPT

    _seed(old_db_url)
    # The first rollup insert ever sleeps: the killed job's rebuild would hold its day for 30 s.
    _on_rollup_insert(old_db_url, "slow_once", "IF nextval('public.slow_once') = 1 THEN PERFORM pg_sleep(30);"
                      " END IF;", before="CREATE SEQUENCE public.slow_once;")
    proc = subprocess.Popen([SCRIPT, "backfill", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(),
                             "--batch-size", "4", "--database-url", old_db_url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        sleeping = 0
        while sleeping == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            with connect(old_db_url) as conn:
                sleeping = conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event = 'PgSleep'")).scalar() or 0
        assert sleeping == 1, "the rebuild never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    started = time.monotonic()
    # re-issued at once; the killed worker's slice is taken over when its lease lapses
    again = job.backfill(replace(_settings(old_db_url), slice_lease=timedelta(seconds=1)), SINCE, UNTIL)
    assert again.status == "succeeded"
    assert time.monotonic() - started < 15  # the orphaned rebuild was stopped, not waited out
    _assert_rollup_is_a_full_rebuild(old_db_url)


def test_a_pending_day_of_the_window_held_by_another_session_is_waited_for(old_db_url: str) -> None:
    import threading

    import psycopg

    _seed(old_db_url)
    assert job.backfill(_settings(old_db_url), SINCE, UNTIL).status == "succeeded"
    with connect(old_db_url) as conn:  # a day left pending, its rollup gone
        conn.execute(text("INSERT INTO ttft_reconcile.rollup_pending (day) VALUES ('2026-11-11')"))
        conn.execute(text("DELETE FROM ttft_reconcile.ttft_daily WHERE day = '2026-11-11'"))
    holder = psycopg.connect(old_db_url)
    holder.execute("SELECT day FROM ttft_reconcile.rollup_pending FOR UPDATE")  # a session dying slowly
    release = threading.Timer(1.5, holder.rollback)
    release.start()
    try:
        again = job.backfill(_settings(old_db_url), SINCE, UNTIL)  # finished: nothing to do but the rollup
    finally:
        release.join()
        holder.close()
    assert "nothing to do" in again.message
    _assert_rollup_is_a_full_rebuild(old_db_url)
