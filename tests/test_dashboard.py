"""spend_logs_ttft, ttft_daily and window quantiles on a real LiteLLM schema."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.publish_data import MS, UTC, connect, correct, run_row, spend_log
from ttft_reconcile.dashboard import read_settings, refresh_ttft_daily, sync_settings, window_quantiles

DAY = datetime(2026, 11, 10, tzinfo=UTC)


def _ttft_rows(conn, since: datetime, until: datetime) -> dict[str, tuple]:
    rows = conn.execute(
        text("SELECT request_id, source, ttft_ms, litellm_ttft_ms FROM ttft_reconcile.spend_logs_ttft(:s, :u)"),
        {"s": since, "u": until},
    ).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_sources_original_reconciled_unresolved(any_era_db_url: str) -> None:
    with connect(any_era_db_url) as conn:
        start = DAY + timedelta(hours=3)
        spend_log(conn, "orig", start, ttft_ms=420)
        spend_log(conn, "fallback-eq", start, ttft_ms=None)
        spend_log(conn, "fallback-floor", start, ttft_ms=None, fallback_floor=True)
        spend_log(conn, "within-tol", start, ttft_ms=1996)  # 4 ms below endTime: still the fallback
        null_row = spend_log(conn, "null-cst", start, ttft_ms=0)
        conn.execute(text('UPDATE "LiteLLM_SpendLogs" SET "completionStartTime" = NULL WHERE request_id = :r'),
                     {"r": null_row["request_id"]})
        fixed = spend_log(conn, "fixed", start, ttft_ms=None)
        run = run_row(conn)
        correct(conn, fixed, run, ttft_ms=310)
        # A correction that is no longer the stored value (rolled back by hand): not ours any more.
        moved = spend_log(conn, "moved", start, ttft_ms=None)
        correct(conn, moved, run, ttft_ms=250)
        conn.execute(text('UPDATE "LiteLLM_SpendLogs" SET "completionStartTime" = "endTime" WHERE request_id = :r'),
                     {"r": "moved"})
        spend_log(conn, "not-configured", start, ttft_ms=None, call_type="acompletion")
        spend_log(conn, "next-day", DAY + timedelta(days=1), ttft_ms=100)
        rows = _ttft_rows(conn, DAY, DAY + timedelta(days=1))

    assert set(rows) == {"orig", "fallback-eq", "fallback-floor", "within-tol", "null-cst", "fixed", "moved"}
    assert rows["orig"] == ("original", pytest.approx(420.0), pytest.approx(420.0))
    assert rows["fixed"] == ("reconciled", pytest.approx(310.0), pytest.approx(2000.0))
    for unresolved in ("fallback-eq", "fallback-floor", "within-tol", "null-cst", "moved"):
        assert rows[unresolved][0] == "unresolved"
        assert rows[unresolved][1] is None


def test_tolerance_and_call_types_come_from_settings(db_url: str) -> None:
    with connect(db_url) as conn:
        start = DAY + timedelta(hours=1)
        spend_log(conn, "r1", start, ttft_ms=1990)  # 10 ms below endTime
        spend_log(conn, "r2", start, ttft_ms=None, call_type="acompletion")
        assert _ttft_rows(conn, DAY, DAY + timedelta(days=1))["r1"][0] == "original"
        changed = sync_settings(conn, call_types=["anthropic_messages", "acompletion"], tolerance_ms=20,
                                litellm_schema="public")
        assert changed == 2
        assert sync_settings(conn, call_types=["anthropic_messages", "acompletion"], tolerance_ms=20,
                             litellm_schema="public") == 0
        rows = _ttft_rows(conn, DAY, DAY + timedelta(days=1))
        assert read_settings(conn)["tolerance_ms"] == 20.0
    assert rows["r1"][0] == "unresolved"
    assert rows["r2"][0] == "unresolved"


def test_litellm_schema_setting_is_followed(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute(text('CREATE SCHEMA litellm'))
        conn.execute(text('CREATE TABLE litellm."LiteLLM_SpendLogs" (LIKE public."LiteLLM_SpendLogs" INCLUDING ALL)'))
        spend_log(conn, "in-public", DAY, ttft_ms=100)
        conn.execute(text('INSERT INTO litellm."LiteLLM_SpendLogs" SELECT * FROM public."LiteLLM_SpendLogs"'))
        conn.execute(text('UPDATE litellm."LiteLLM_SpendLogs" SET request_id = \'in-litellm\''))
        sync_settings(conn, call_types=["anthropic_messages"], tolerance_ms=5, litellm_schema="litellm")
        rows = _ttft_rows(conn, DAY, DAY + timedelta(days=1))
    assert set(rows) == {"in-litellm"}


def test_litellm_alter_column_type_still_works(any_era_db_url: str) -> None:
    """LiteLLM's own migrations change column types; nothing of ours may depend on the columns."""
    with connect(any_era_db_url) as conn:
        spend_log(conn, "a", DAY, ttft_ms=300)
        conn.execute(text('ALTER TABLE "LiteLLM_SpendLogs" ALTER COLUMN "completionStartTime" TYPE timestamp(6)'))
        conn.execute(text('ALTER TABLE "LiteLLM_SpendLogs" ALTER COLUMN model_group TYPE varchar(512)'))
        conn.execute(text('ALTER TABLE "LiteLLM_SpendLogs" ALTER COLUMN "startTime" TYPE timestamp(3)'))
        conn.execute(text('ALTER TABLE "LiteLLM_SpendLogs" ALTER COLUMN call_type TYPE varchar(64)'))
        rows = _ttft_rows(conn, DAY, DAY + timedelta(days=1))
    assert rows["a"][0] == "original"


def test_refresh_ttft_daily_buckets_by_utc_day_and_skips_unresolved(db_url: str) -> None:
    d1, d2 = date(2026, 11, 10), date(2026, 11, 11)
    with connect(db_url) as conn:
        midnight = datetime(2026, 11, 11, tzinfo=UTC)
        # Four resolved rows on d1 (100..400 ms) and many unresolved ones that must not drag percentiles.
        for i, ttft in enumerate((100, 200, 300, 400)):
            spend_log(conn, f"d1-{i}", midnight - timedelta(hours=5) + i * MS, ttft_ms=ttft)
        for i in range(20):
            spend_log(conn, f"d1-u{i}", midnight - timedelta(hours=4), ttft_ms=None)
        # The last millisecond of d1 and the first of d2.
        spend_log(conn, "edge-d1", midnight - MS, ttft_ms=500, model_group="edge")
        spend_log(conn, "edge-d2", midnight, ttft_ms=600, model_group="edge")
        fixed = spend_log(conn, "d2-fixed", midnight + timedelta(hours=2), ttft_ms=None, model_group="edge")
        correct(conn, fixed, run_row(conn), ttft_ms=50)
        spend_log(conn, "d2-unres", midnight + timedelta(hours=3), ttft_ms=None, model_group="only-unresolved")
        written = refresh_ttft_daily(conn, [d1, d2, d1])
        daily = {
            (r.day, r.model_group): r
            for r in conn.execute(text("SELECT * FROM ttft_reconcile.ttft_daily")).all()
        }
        # A second refresh replaces rather than adds.
        assert refresh_ttft_daily(conn, [d1, d2]) == written
        assert conn.execute(text("SELECT count(*) FROM ttft_reconcile.ttft_daily")).scalar() == written

    assert written == 4
    main = daily[(d1, "claude-sonnet")]
    assert (main.n, main.n_original, main.n_reconciled, main.n_unresolved) == (24, 4, 0, 20)
    assert main.p50_ms == pytest.approx(250.0)
    assert main.p90_ms == pytest.approx(370.0)
    assert main.p99_ms == pytest.approx(397.0)
    assert daily[(d1, "edge")].n == 1 and daily[(d1, "edge")].p50_ms == pytest.approx(500.0)
    edge2 = daily[(d2, "edge")]
    assert (edge2.n, edge2.n_original, edge2.n_reconciled) == (2, 1, 1)
    assert edge2.p50_ms == pytest.approx(325.0)
    only = daily[(d2, "only-unresolved")]
    assert only.n_unresolved == 1 and only.p50_ms is None


def test_refresh_removes_rows_of_a_day_that_emptied(db_url: str) -> None:
    d1 = date(2026, 11, 10)
    with connect(db_url) as conn:
        spend_log(conn, "gone", DAY + timedelta(hours=1), ttft_ms=100)
        assert refresh_ttft_daily(conn, [d1]) == 1
        conn.execute(text('DELETE FROM "LiteLLM_SpendLogs"'))
        assert refresh_ttft_daily(conn, [d1]) == 0
        assert conn.execute(text("SELECT count(*) FROM ttft_reconcile.ttft_daily")).scalar() == 0
        assert refresh_ttft_daily(conn, []) == 0


def test_window_quantiles_in_seconds_with_groups_capped(db_url: str) -> None:
    with connect(db_url) as conn:
        start = DAY + timedelta(hours=6)
        for i, ttft in enumerate((100, 200, 300, 400, 500)):
            spend_log(conn, f"big-{i}", start + i * MS, ttft_ms=ttft, model_group="big")
        for i, ttft in enumerate((1000, 3000)):
            spend_log(conn, f"mid-{i}", start + i * MS, ttft_ms=ttft, total_ms=6000, model_group="mid")
        spend_log(conn, "small-0", start, ttft_ms=2000, total_ms=6000, model_group="small")
        spend_log(conn, "blank-0", start, ttft_ms=700, model_group="")
        for i in range(30):
            spend_log(conn, f"unres-{i}", start, ttft_ms=None, model_group="small")
        spend_log(conn, "outside", DAY + timedelta(days=1), ttft_ms=9000, model_group="big")
        capped = window_quantiles(conn, DAY, DAY + timedelta(days=1), max_model_groups=2)
        full = window_quantiles(conn, DAY, DAY + timedelta(days=1))

    assert set(capped) == {"big", "mid", "other"}
    assert capped["big"]["0.5"] == pytest.approx(0.3)
    assert capped["big"]["0.99"] == pytest.approx(0.496)
    # "small" (2000 ms) and "" (700 ms) folded together; unresolved rows never count.
    assert capped["other"]["0.5"] == pytest.approx(1.35)
    assert set(full) == {"big", "mid", "small", "unknown"}
    assert full["small"] == {"0.5": pytest.approx(2.0), "0.9": pytest.approx(2.0),
                             "0.95": pytest.approx(2.0), "0.99": pytest.approx(2.0)}


def test_refresh_of_one_day_leaves_its_neighbours_alone(db_url: str) -> None:
    d1, d2, d3 = date(2026, 11, 10), date(2026, 11, 11), date(2026, 11, 12)
    with connect(db_url) as conn:
        for i, day in enumerate((d1, d2, d3)):
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            spend_log(conn, f"first-{i}", start, ttft_ms=100 + i)
            spend_log(conn, f"last-{i}", start + timedelta(days=1) - MS, ttft_ms=200 + i)
        assert refresh_ttft_daily(conn, [d1, d3]) == 2
        conn.execute(text('UPDATE "LiteLLM_SpendLogs" SET model_group = \'renamed\''))
        assert refresh_ttft_daily(conn, [d2]) == 1
        daily = {r.day: (r.model_group, r.n, r.p50_ms)
                 for r in conn.execute(text("SELECT * FROM ttft_reconcile.ttft_daily")).all()}
    assert daily == {d1: ("claude-sonnet", 2, pytest.approx(150.0)), d2: ("renamed", 2, pytest.approx(151.0)),
                     d3: ("claude-sonnet", 2, pytest.approx(152.0))}


def test_day_ranges_group_consecutive_days_a_week_at_most() -> None:
    from ttft_reconcile.dashboard import day_ranges

    d = date(2026, 3, 1)
    days = [d + timedelta(days=n) for n in (0, 1, 2, 4, 9, 8, 10, 11, 12, 13, 14, 15, 16, 2)]
    assert day_ranges(days) == [
        (d, d + timedelta(days=2)),  # duplicates and order do not matter
        (d + timedelta(days=4), d + timedelta(days=4)),  # a gap starts a new range
        (d + timedelta(days=8), d + timedelta(days=14)),  # seven days at most
        (d + timedelta(days=15), d + timedelta(days=16)),
    ]
    assert day_ranges([]) == []
    assert day_ranges([d, d + timedelta(days=1)], max_days=1) == [(d, d), (d + timedelta(days=1),) * 2]
