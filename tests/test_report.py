"""report: per-day/model-group counts, before/after percentiles, histogram, CLI formats, plot."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta

import pytest
from click.testing import CliRunner

from tests.publish_data import MS, UTC, connect, correct, run_row, spend_log
from ttft_reconcile.cli import cli
from ttft_reconcile.report import Histogram, Report, build_report
from ttft_reconcile.report_plot import daily_sources

SINCE = datetime(2026, 11, 10, tzinfo=UTC)
UNTIL = SINCE + timedelta(days=2)


def _seed(url: str) -> None:
    """Day 1: 2 original rows (100, 300 ms) and 2 repaired rows (LiteLLM wrote 2000 ms; now 200, 400 ms),
    plus 3 unresolved. Day 2: 1 original row in another group. One row outside the window."""
    with connect(url) as conn:
        start = SINCE + timedelta(hours=9)
        spend_log(conn, "o1", start, ttft_ms=100)
        spend_log(conn, "o2", start + MS, ttft_ms=300)
        run = run_row(conn)
        for i, ttft in enumerate((200, 400)):
            row = spend_log(conn, f"r{i}", start + (2 + i) * MS, ttft_ms=None)
            correct(conn, row, run, ttft_ms=ttft)
        for i in range(3):
            spend_log(conn, f"u{i}", start + (5 + i) * MS, ttft_ms=None)
        spend_log(conn, "o3", SINCE + timedelta(days=1, hours=1), ttft_ms=40, model_group="gpt-4o")
        spend_log(conn, "late", UNTIL, ttft_ms=40)


def test_report_rows_and_percentiles_before_after(db_url: str) -> None:
    _seed(db_url)
    with connect(db_url) as conn:
        report = build_report(conn, SINCE, UNTIL)
    first, second = report.rows
    assert (first.day, first.model_group) == (date(2026, 11, 10), "claude-sonnet")
    assert (first.n, first.n_original, first.n_reconciled, first.n_unresolved) == (7, 2, 2, 3)
    # after: 100, 200, 300, 400 → p50 250; before: 100, 300, 2000, 2000 → p50 1150.
    assert first.after.p50 == pytest.approx(250.0)
    assert first.before.p50 == pytest.approx(1150.0)
    assert first.before.p99 == pytest.approx(2000.0)
    assert (second.day, second.model_group, second.n) == (date(2026, 11, 11), "gpt-4o", 1)
    assert second.before == second.after
    assert report.totals == {"n": 8, "original": 3, "reconciled": 2, "unresolved": 3}


def test_histogram_bins_and_counts(db_url: str) -> None:
    _seed(db_url)
    with connect(db_url) as conn:
        report = build_report(conn, SINCE, UNTIL, edges_ms=(50, 250, 1000))
    hist = report.histogram
    assert hist.labels() == ["<50ms", "50ms-250ms", "250ms-1s", ">=1s"]
    # before: 40 | 100 | 300 | 2000, 2000 ; after: 40 | 100, 200 | 300, 400 | -
    assert hist.before == (1, 1, 1, 2)
    assert hist.after == (1, 2, 2, 0)
    assert sum(hist.before) == sum(hist.after) == report.totals["original"] + report.totals["reconciled"]


def test_plot_data_sums_sources_per_day(db_url: str) -> None:
    _seed(db_url)
    with connect(db_url) as conn:
        report = build_report(conn, SINCE, UNTIL)
    daily = daily_sources(report)
    assert daily.days == (date(2026, 11, 10), date(2026, 11, 11))
    assert daily.original == (2, 1)
    assert daily.reconciled == (2, 0)
    assert daily.unresolved == (3, 0)


def test_plot_renders_png(db_url: str, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from ttft_reconcile.report_plot import render

    _seed(db_url)
    with connect(db_url) as conn:
        report = build_report(conn, SINCE, UNTIL)
    target = render(report, tmp_path / "r.png")
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_window_has_no_rows_and_zero_histogram(db_url: str) -> None:
    with connect(db_url) as conn:
        report = build_report(conn, SINCE, UNTIL)
    assert report.rows == ()
    assert set(report.histogram.before) == {0}
    assert report.to_json()["totals"]["n"] == 0


def test_histogram_rejects_unsorted_edges(db_url: str) -> None:
    with connect(db_url) as conn, pytest.raises(ValueError):
        build_report(conn, SINCE, UNTIL, edges_ms=(100, 50))


def _cli(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["report", "--database-url", url, "--since", "2026-11-10",
                                      "--until", "2026-11-12", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_formats(db_url: str, tmp_path) -> None:
    _seed(db_url)
    table = _cli(db_url)
    assert "1150 -> 250" in table
    assert "8 rows from 2026-11-10T00:00:00+00:00" in table
    rows = list(csv.DictReader(io.StringIO(_cli(db_url, "--format", "csv"))))
    assert [r["model_group"] for r in rows] == ["claude-sonnet", "gpt-4o"]
    assert float(rows[0]["after_p50_ms"]) == pytest.approx(250.0)
    payload = json.loads(_cli(db_url, "--format", "json"))
    assert payload["rows"][0]["reconciled"] == 2
    assert payload["histogram"]["after"] == list(payload["histogram"]["after"])
    assert json.loads(_cli(db_url, "--json")) == payload


def test_cli_plot_writes_file(db_url: str, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    _seed(db_url)
    target = tmp_path / "plot.png"
    _cli(db_url, "--plot", str(target))
    assert target.stat().st_size > 1000


def test_cli_rejects_inverted_window(db_url: str) -> None:
    result = CliRunner().invoke(cli, ["report", "--database-url", db_url, "--since", "2026-11-12",
                                      "--until", "2026-11-10"])
    assert result.exit_code == 2
    assert "must be before" in result.output


def test_report_json_shape_is_stable() -> None:
    report = Report(SINCE, UNTIL, (), Histogram((100.0,), (0, 0), (0, 0)))
    assert set(report.to_json()) == {"since", "until", "totals", "rows", "histogram"}
