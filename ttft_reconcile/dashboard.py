"""Dashboard data: the settings the SQL objects read, the `ttft_daily` rollup, window quantiles.

`spend_logs_ttft(since, until)` (migration 0002) is the one definition of a row's best TTFT and
its source; everything here aggregates it. Days are UTC; TTFTs in the rollup are milliseconds,
quantiles for metrics are seconds. Unresolved rows and NULLs never enter a percentile.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ttft_reconcile import dashboard_queries as q

log = logging.getLogger(__name__)

OTHER = "other"
# The rollup of a backfill is rebuilt a week of days per statement (and transaction) at most.
MAX_DAYS_PER_REFRESH = 7
ONE_DAY = timedelta(days=1)


def sync_settings(conn: Connection, *, call_types: Sequence[str], tolerance_ms: float, litellm_schema: str) -> int:
    """Upsert the settings `spend_logs_ttft` reads; returns how many keys changed."""
    values = {
        "call_types": list(call_types),
        "tolerance_ms": float(tolerance_ms),
        "litellm_schema": litellm_schema,
    }
    changed = 0
    for key, value in values.items():
        result = conn.execute(text(q.UPSERT_SETTING), {"key": key, "value": json.dumps(value)})
        changed += result.rowcount or 0
    if changed:
        log.info("dashboard settings updated (%d keys changed)", changed)
    return changed


def read_settings(conn: Connection) -> dict[str, object]:
    """The settings table as a dict (key → decoded JSON value)."""
    return {str(key): value for key, value in conn.execute(text(q.SELECT_SETTINGS)).all()}


def day_ranges(days: Iterable[date], max_days: int = MAX_DAYS_PER_REFRESH) -> list[tuple[date, date]]:
    """The days as runs of consecutive days (first, last), each at most `max_days` long."""
    ranges: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if ranges and day - ranges[-1][1] == ONE_DAY and (day - ranges[-1][0]).days < max_days:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def refresh_day_range(conn: Connection, first: date, last: date) -> int:
    """Rebuild `ttft_daily` for the UTC days [first, last], read and aggregated by one statement
    (`ttft_daily_rows`, planned as ROLLUP_PLAN says); returns the number of rows written. Clears
    their pending marks first."""
    conn.execute(text(q.CLEAR_PENDING), {"first_day": first, "last_day": last})
    conn.execute(text(q.LOCK_DAILY))
    conn.execute(text(q.DELETE_DAILY), {"first_day": first, "last_day": last})
    conn.execute(text(q.ROLLUP_PLAN))
    written = conn.execute(text(q.INSERT_DAILY), {"first_day": first, "last_day": last}).rowcount or 0
    conn.execute(text(q.ROLLUP_PLAN_RESET))
    return written


def mark_pending(conn: Connection, days: Iterable[date]) -> None:
    """Record UTC days whose rows changed (in the changing transaction); a refresh clears them."""
    unique = sorted(set(days))
    if unique:
        conn.execute(text(q.MARK_PENDING), {"days": unique})


def pending_days(conn: Connection, first: date, last: date, stale_after: timedelta) -> set[date]:
    """Pending UTC days within [first, last], and any marked longer ago than `stale_after`."""
    return {row[0] for row in conn.execute(
        text(q.PENDING_DAYS), {"first_day": first, "last_day": last, "stale": stale_after})}


def pending_days_waiting(conn: Connection, first: date, last: date) -> set[date]:
    """Pending UTC days within [first, last], locked for this transaction: waits (up to
    lock_timeout) for a refresh or batch that holds one."""
    return {row[0] for row in conn.execute(text(q.PENDING_DAYS_WAIT), {"first_day": first, "last_day": last})}


def refresh_ttft_daily(conn: Connection, days: Sequence[date]) -> int:
    """Rebuild `ttft_daily` for these UTC days, a run of consecutive days per statement; returns
    the number of rows written."""
    written = sum(refresh_day_range(conn, first, last) for first, last in day_ranges(days))
    if days:
        log.info("ttft_daily refreshed for %d day(s): %d row(s)", len(set(days)), written)
    return written


def window_quantiles(
    conn: Connection, since: datetime, until: datetime, *, max_model_groups: int = 20
) -> dict[str, dict[str, float]]:
    """model_group → {"0.5", "0.9", "0.95", "0.99"} TTFT in seconds over [since, until).

    Only original and reconciled rows count. The `max_model_groups` groups with the most
    rows keep their name; the rest are folded into "other". An empty model group is "unknown".
    """
    rows = conn.execute(
        text(q.WINDOW_QUANTILES), {"since": since, "until": until, "cap": max_model_groups}
    ).all()
    result: dict[str, dict[str, float]] = {}
    for label, values in rows:
        result[str(label)] = {
            str(quantile): float(value) / 1000.0 for quantile, value in zip(q.QUANTILES, values, strict=True)
        }
    return result
