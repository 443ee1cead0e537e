"""Render a Report as a text table, CSV or JSON (TTFTs in ms, days UTC)."""

from __future__ import annotations

import csv
import io
import json

from ttft_reconcile.report import Percentiles, Report

CSV_COLUMNS = (
    "day", "model_group", "n", "original", "reconciled", "unresolved",
    "before_p50_ms", "before_p90_ms", "before_p95_ms", "before_p99_ms",
    "after_p50_ms", "after_p90_ms", "after_p95_ms", "after_p99_ms",
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _csv_ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _pair(before: float | None, after: float | None) -> str:
    return f"{_ms(before)} -> {_ms(after)}"


def as_table(report: Report) -> str:
    """Fixed-width text: counts by source, p50/p90/p95/p99 before -> after."""
    header = ("day", "model_group", "n", "original", "reconciled", "unresolved",
              "p50 ms", "p90 ms", "p95 ms", "p99 ms")
    lines: list[tuple[str, ...]] = [header]
    for r in report.rows:
        lines.append((
            r.day.isoformat(), r.model_group or "(none)", str(r.n), str(r.n_original), str(r.n_reconciled),
            str(r.n_unresolved), _pair(r.before.p50, r.after.p50), _pair(r.before.p90, r.after.p90),
            _pair(r.before.p95, r.after.p95),
            _pair(r.before.p99, r.after.p99),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = io.StringIO()
    for line in lines:
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in pairs]
        out.write("  ".join(cells).rstrip() + "\n")
    totals = report.totals
    out.write(
        f"\n{totals['n']} rows from {report.since.isoformat()} to {report.until.isoformat()}: "
        f"{totals['original']} original, {totals['reconciled']} reconciled, {totals['unresolved']} unresolved "
        "(unresolved rows are never in the percentiles; before = what LiteLLM wrote)\n"
    )
    return out.getvalue()


def _csv_percentiles(p: Percentiles) -> list[str]:
    return [_csv_ms(p.p50), _csv_ms(p.p90), _csv_ms(p.p95), _csv_ms(p.p99)]


def as_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in report.rows:
        writer.writerow([
            r.day.isoformat(), r.model_group, r.n, r.n_original, r.n_reconciled, r.n_unresolved,
            *_csv_percentiles(r.before), *_csv_percentiles(r.after),
        ])
    return out.getvalue()


def as_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2) + "\n"
