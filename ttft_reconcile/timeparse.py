"""Parsing of durations (`90s`, `15m`, `2h`, `30d`) and instants; every instant is returned in UTC."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from ttft_reconcile.errors import UsageError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
MAX_DURATION = timedelta(days=3660)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `2h`, `30d`, `1w`, `250ms` → timedelta. A bare number is seconds."""
    raw = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        raw = raw + "s"
    match = _DURATION.match(raw)
    if match is None:
        raise UsageError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 30d)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        raise UsageError(f"duration {text!r} is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def parse_instant(text: str) -> datetime:
    """ISO date or date-time → aware UTC datetime. Values without a zone are taken as UTC."""
    raw = text.strip()
    if raw.endswith("Z") or raw.endswith("z"):
        raw = raw[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(raw.replace(" ", "T", 1) if len(raw) > 10 else raw)
    except ValueError:
        raise UsageError(f"not a date or time: {text!r} (use e.g. 2026-03-01 or 2026-03-01T12:00:00Z)") from None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def to_naive_utc(value: datetime) -> datetime:
    """Aware → naive UTC, the convention of LiteLLM's `timestamp(3) without time zone` columns."""
    if value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def to_aware_utc(value: datetime) -> datetime:
    """Naive values are UTC wall clock (SpendLogs' convention); aware ones are converted."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def round_to_millisecond(value: datetime) -> datetime:
    """Round as Postgres rounds into `timestamp(3)`: to the nearest millisecond, halves up."""
    micro = value.microsecond
    rounded = (micro + 500) // 1000 * 1000
    base = value.replace(microsecond=0)
    return base + timedelta(microseconds=rounded)
