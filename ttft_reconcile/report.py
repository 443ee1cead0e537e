"""`report`: per UTC day and model group, rows by source and TTFT percentiles before vs after.

"before" is what LiteLLM wrote (the old value for reconciled rows), "after" the current best.
Both are taken over the same rows, original + reconciled; unresolved rows are only counted.
TTFTs are milliseconds from SpendLogs' "startTime"; days are UTC; the window is [since, until).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ttft_reconcile import dashboard_queries as q

# Histogram edges in ms: bucket 0 is below the first edge, the last bucket at or above the last edge.
DEFAULT_EDGES_MS: Final[tuple[float, ...]] = (
    50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000,
)


@dataclass(frozen=True)
class Percentiles:
    """TTFT percentiles in ms; None when no resolved row exists."""

    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def from_array(cls, values: Sequence[float | None] | None) -> Percentiles:
        if values is None:
            return cls(None, None, None, None)
        p50, p90, p95, p99 = (None if v is None else float(v) for v in values)
        return cls(p50, p90, p95, p99)

    def as_dict(self) -> dict[str, float | None]:
        """The quantiles in ms, to the microsecond (interpolation leaves float noise below that)."""
        return {name: None if value is None else round(value, 3)
                for name, value in (("p50", self.p50), ("p90", self.p90), ("p95", self.p95), ("p99", self.p99))}


@dataclass(frozen=True)
class ReportRow:
    """One UTC day and model group."""

    day: date
    model_group: str
    n: int
    n_original: int
    n_reconciled: int
    n_unresolved: int
    before: Percentiles
    after: Percentiles


@dataclass(frozen=True)
class Histogram:
    """Counts of resolved rows per TTFT bucket; len(counts) == len(edges_ms) + 1."""

    edges_ms: tuple[float, ...]
    before: tuple[int, ...]
    after: tuple[int, ...]

    def labels(self) -> list[str]:
        edges = [_fmt_ms(e) for e in self.edges_ms]
        inner = [f"{lo}-{hi}" for lo, hi in zip(edges, edges[1:], strict=False)]
        return [f"<{edges[0]}", *inner, f">={edges[-1]}"]


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    rows: tuple[ReportRow, ...]
    histogram: Histogram

    @property
    def totals(self) -> dict[str, int]:
        return {
            "n": sum(r.n for r in self.rows),
            "original": sum(r.n_original for r in self.rows),
            "reconciled": sum(r.n_reconciled for r in self.rows),
            "unresolved": sum(r.n_unresolved for r in self.rows),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "totals": self.totals,
            "rows": [
                {
                    "day": r.day.isoformat(), "model_group": r.model_group, "n": r.n,
                    "original": r.n_original, "reconciled": r.n_reconciled, "unresolved": r.n_unresolved,
                    "before_ms": r.before.as_dict(), "after_ms": r.after.as_dict(),
                }
                for r in self.rows
            ],
            "histogram": {
                "edges_ms": list(self.histogram.edges_ms),
                "labels": self.histogram.labels(),
                "before": list(self.histogram.before),
                "after": list(self.histogram.after),
            },
        }


def _fmt_ms(value: float) -> str:
    return f"{value / 1000:g}s" if value >= 1000 else f"{value:g}ms"


def build_report(
    conn: Connection, since: datetime, until: datetime, *, edges_ms: Sequence[float] = DEFAULT_EDGES_MS
) -> Report:
    """Aggregate `spend_logs_ttft` over [since, until) (aware UTC instants)."""
    params = {"since": since, "until": until}
    rows = tuple(
        ReportRow(
            day=r.day, model_group=r.model_group, n=r.n, n_original=r.n_original,
            n_reconciled=r.n_reconciled, n_unresolved=r.n_unresolved,
            before=Percentiles.from_array(r.before_q), after=Percentiles.from_array(r.after_q),
        )
        for r in conn.execute(text(q.REPORT_ROWS), params).all()
    )
    return Report(since=since, until=until, rows=rows, histogram=histogram(conn, since, until, edges_ms))


def histogram(conn: Connection, since: datetime, until: datetime, edges_ms: Sequence[float]) -> Histogram:
    """Before/after TTFT counts per bucket over [since, until); edges in ms, ascending."""
    edges = tuple(float(e) for e in edges_ms)
    if not edges or list(edges) != sorted(set(edges)):
        raise ValueError("histogram edges must be ascending and distinct")
    before = [0] * (len(edges) + 1)
    after = [0] * (len(edges) + 1)
    for bucket, n_before, n_after in conn.execute(
        text(q.REPORT_HISTOGRAM), {"since": since, "until": until, "edges": list(edges)}
    ).all():
        before[bucket] += int(n_before)
        after[bucket] += int(n_after)
    return Histogram(edges_ms=edges, before=tuple(before), after=tuple(after))
