"""Commands of the publish area: report, explain, export, prune-traces, ensure-partitions."""

from __future__ import annotations

import importlib.util
import math
import sys
from datetime import datetime, timedelta, timezone
from typing import IO, Any

import click

from ttft_reconcile import explain_format, report_format
from ttft_reconcile import export as export_mod
from ttft_reconcile import prune as prune_mod
from ttft_reconcile.cli.options import (
    DURATION,
    database_options,
    flag_instant,
    output_options,
    parse_call_types,
    parse_url,
    session_limits,
)
from ttft_reconcile.cli.runner import echo_json, execute
from ttft_reconcile.dashboard import read_settings
from ttft_reconcile.db import make_engine, transaction
from ttft_reconcile.dburl import DatabaseUrl
from ttft_reconcile.errors import ReconcileError, UsageError
from ttft_reconcile.policies import DEFAULT_POLICY, POLICIES
from ttft_reconcile.report import build_report
from ttft_reconcile.settings import DEFAULT_CALL_TYPES


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _window(since: str | None, until: str | None, default_days: int | None) -> tuple[datetime, datetime]:
    end = flag_instant(until, "--until") if until else _now()
    if since:
        start = flag_instant(since, "--since")
    elif default_days is not None:
        start = end - timedelta(days=default_days)
    else:
        raise UsageError("--since is required")
    if start >= end:
        raise UsageError(f"--since ({start.isoformat()}) must be before --until ({end.isoformat()})")
    return start, end


@click.command("report")
@database_options
@output_options
@click.option("--since", help="Window start, UTC unless a zone is given (default: 7 days before --until).")
@click.option("--until", help="Window end, exclusive (default: now).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), help="Also write a PNG (needs the `plot` extra).")
def report_command(since: str | None, until: str | None, fmt: str, plot: str | None, **kwargs: Any) -> None:
    """TTFT per UTC day and model group: rows by source, percentiles before -> after.

    "before" is what LiteLLM wrote, "after" the current best; both over original and
    reconciled rows. Unresolved rows are counted, never put in a percentile.

    \b
    ttft-reconcile report --since 2026-11-01 --until 2026-11-08
    ttft-reconcile report --format csv > ttft.csv
    ttft-reconcile report --plot ttft.png
    """

    def action() -> None:
        if plot and importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install '.[plot]' from the checkout")
        start, end = _window(since, until, default_days=7)
        url = parse_url(kwargs["database_url"])
        engine = make_engine(url)
        try:
            with transaction(engine, session_limits(kwargs)) as conn:
                _check_configured_schema(url, read_settings(conn))
                result = build_report(conn, start, end)
        finally:
            engine.dispose()
        if kwargs["as_json"] and fmt not in ("table", "json"):
            raise UsageError(f"--json and --format {fmt} disagree: pass one of them")
        chosen = "json" if kwargs["as_json"] else fmt
        render = {"table": report_format.as_table, "csv": report_format.as_csv, "json": report_format.as_json}
        click.echo(render[chosen](result), nl=False)
        if plot:
            from ttft_reconcile import report_plot

            report_plot.render(result, plot)
            click.echo(f"wrote {plot}", err=True)

    execute(kwargs, action)


def _check_configured_schema(url: DatabaseUrl, stored: dict[str, object]) -> None:
    """The report reads LiteLLM's table where the job's runs configured it; a URL naming another
    schema (?schema=) would silently report on the wrong one."""
    configured = str(stored.get("litellm_schema") or "public")
    if "schema" in url.dropped and url.litellm_schema != configured:
        where = ("its last `run`" if "litellm_schema" in stored
                 else "the default: no `run` has configured it yet")
        raise UsageError(
            f"the URL says LiteLLM's tables are in schema {url.litellm_schema!r}, but the job is configured"
            f" for {configured!r} ({where}); run `ttft-reconcile run` with this URL first, or drop ?schema="
        )


def _stored_job_settings(stored: dict[str, object]) -> tuple[tuple[str, ...], float]:
    """The call types and tolerance (ms) the last run synced into the settings table."""
    raw_types = stored.get("call_types")
    types = tuple(str(t) for t in raw_types) if isinstance(raw_types, list) else DEFAULT_CALL_TYPES
    raw_tolerance = stored.get("tolerance_ms")
    tolerance = float(raw_tolerance) if isinstance(raw_tolerance, (int, float)) else 5.0
    return types, tolerance


@click.command("explain")
@database_options
@output_options
@click.argument("request_id")
@click.option("--policy", type=click.Choice(POLICIES), default=DEFAULT_POLICY, show_default=True,
              envvar="TTFT_RECONCILE_POLICY", help="Policy whose instant the verdict uses.", show_envvar=True)
@click.option("--tolerance-ms", type=click.FloatRange(0, 1000), default=None,
              help="Candidate tolerance (default: the value of the last run, from the settings table).")
@click.option("--call-types", default=None, help="Configured call types (default: the last run's).")
def explain_command(request_id: str, policy: str, tolerance_ms: float | None, call_types: str | None,
                    **kwargs: Any) -> None:
    """Why one SpendLogs row has the TTFT it has: its traces under each join, every policy's
    instant, its corrections and their runs.

    \b
    ttft-reconcile explain 5f0c8a6e-1d2b-4c1a-9d55-3b7e2f9a0c11
    ttft-reconcile explain msg_01XFDUDYJgAACzvnptvVoYEL --json
    """

    def action() -> None:
        from ttft_reconcile import explain as explain_mod  # pandas: imported only for this command

        if tolerance_ms is not None and math.isnan(tolerance_ms):
            raise UsageError("--tolerance-ms must be a number, not nan")
        url = parse_url(kwargs["database_url"])
        engine = make_engine(url)
        try:
            with transaction(engine, session_limits(kwargs)) as conn:
                stored_types, stored_tolerance = _stored_job_settings(read_settings(conn))
                types = parse_call_types(call_types) if call_types else stored_types
                tolerance = tolerance_ms if tolerance_ms is not None else stored_tolerance
                result = explain_mod.explain(conn, request_id, litellm_schema=url.litellm_schema,
                                             call_types=types, tolerance_ms=tolerance, policy=policy)
        finally:
            engine.dispose()
        if kwargs["as_json"]:
            echo_json(result.to_json())
        else:
            click.echo(explain_format.as_text(result), nl=False)
        if result.verdict == "not_found":
            raise ReconcileError(f"no SpendLogs row with request_id {request_id!r}")

    execute(kwargs, action)


@click.command("export")
@database_options
@output_options
@click.option("--since", required=True, help="Window start on SpendLogs startTime (UTC unless a zone is given).")
@click.option("--until", help="Window end, exclusive (default: now).")
@click.option("--format", "fmt", type=click.Choice(export_mod.FORMATS), default="jsonl", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, writable=True), help="Write here instead of stdout.")
@click.option("--include-reverted", is_flag=True, help="Also export corrections that were rolled back.")
def export_command(since: str, until: str | None, fmt: str, output: str | None, include_reverted: bool,
                   **kwargs: Any) -> None:
    """Stream corrections (old and new first-token instants, TTFT under each origin, policy) so
    tracing backends such as Langfuse or OpenTelemetry can be re-fed.

    \b
    ttft-reconcile export --since 2026-11-01 --format csv --output corrections.csv
    ttft-reconcile export --since 2026-11-01 | my-langfuse-updater
    """

    def action() -> None:
        if kwargs["as_json"]:
            raise UsageError("export writes records, not a summary: --json does not apply (records are"
                             " JSON Lines by default; see --format)")
        start, end = _window(since, until, default_days=None)
        engine = make_engine(parse_url(kwargs["database_url"]))
        handle: IO[str] = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
        try:
            with transaction(engine, session_limits(kwargs)) as conn:
                records = export_mod.iter_corrections(conn, start, end, include_reverted=include_reverted)
                count = export_mod.write(records, handle, fmt)
        finally:
            if output:
                handle.close()
            engine.dispose()
        if output:
            click.echo(f"exported {count} correction(s) to {output}", err=True)

    execute(kwargs, action)


@click.command("prune-traces")
@database_options
@output_options
@click.option("--older-than", type=DURATION, default="30d", show_default=True,
              help="Drop day partitions of stream_traces whose whole day is older than this.")
@click.option("--compact-evidence-older-than", type=DURATION, default=None,
              help="Also strip the evidence JSON of corrections written before schema 0003 to its small keys"
                   " past this age (rows are kept; newer corrections store compact typed evidence).")
@click.option("--dry-run", is_flag=True, help="Say what would be dropped, trimmed and compacted; change nothing.")
def prune_command(older_than: timedelta, compact_evidence_older_than: timedelta | None, dry_run: bool,
                  **kwargs: Any) -> None:
    """Drop whole day partitions of stream_traces older than a cutoff (never row DELETEs there),
    trim the default partition, optionally compact old corrections' evidence.

    \b
    ttft-reconcile prune-traces --older-than 30d --dry-run
    ttft-reconcile prune-traces --older-than 30d --compact-evidence-older-than 180d
    """

    def action() -> None:
        now = _now()
        engine = make_engine(parse_url(kwargs["database_url"]))
        try:
            result = prune_mod.prune_traces(
                engine, session_limits(kwargs), cutoff=now - older_than,
                evidence_cutoff=None if compact_evidence_older_than is None else now - compact_evidence_older_than,
                dry_run=dry_run,
            )
        finally:
            engine.dispose()
        if kwargs["as_json"]:
            echo_json(result.to_json())
            return
        verb = "would drop" if dry_run else "dropped"
        click.echo(f"{verb} {len(result.dropped)} partition(s) ({result.dropped_rows} rows) older than "
                   f"{result.cutoff.isoformat()}; default partition: {result.default_rows_deleted} row(s) "
                   f"{'to delete' if dry_run else 'deleted'}")
        if result.evidence_cutoff is not None:
            click.echo(f"evidence {'to compact' if dry_run else 'compacted'}: {result.evidence_compacted} "
                       "correction(s)")

    execute(kwargs, action)


@click.command("ensure-partitions")
@database_options
@output_options
@click.option("--days-ahead", type=click.IntRange(0, 366), default=7, show_default=True,
              help="Create day partitions of stream_traces up to this many UTC days ahead.")
def ensure_partitions_command(days_ahead: int, **kwargs: Any) -> None:
    """Create the day partitions of stream_traces from yesterday to --days-ahead (UTC days).

    The job does this on every run; use it when the capture runs without the job for a while.

    \b
    ttft-reconcile ensure-partitions --days-ahead 14
    """

    def action() -> None:
        today = _now().date()
        engine = make_engine(parse_url(kwargs["database_url"]))
        try:
            with transaction(engine, session_limits(kwargs)) as conn:
                first, last = today - timedelta(days=1), today + timedelta(days=days_ahead)
                created = prune_mod.ensure_partitions(conn, first, last)
        finally:
            engine.dispose()
        if kwargs["as_json"]:
            echo_json({"created": created})
        else:
            click.echo(f"created {created} partition(s)")

    execute(kwargs, action)


def register(group: click.Group) -> None:
    for command in (report_command, explain_command, export_command, prune_command, ensure_partitions_command):
        group.add_command(command)
