"""Commands of the batch job: migrate, run, backfill, rollback, demo."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import click
import psycopg
from sqlalchemy import exc as sa_exc

from ttft_reconcile import job, publish
from ttft_reconcile import migrate as migrations
from ttft_reconcile.cli.options import (
    DURATION,
    database_options,
    flag_instant,
    incremental_options,
    job_options,
    job_settings,
    output_options,
    parse_url,
    publish_options,
    publish_settings,
)
from ttft_reconcile.cli.progress import ProgressPrinter
from ttft_reconcile.cli.runner import echo_json, execute
from ttft_reconcile.db import make_engine
from ttft_reconcile.errors import EXIT_FAILED, EXIT_INTERRUPTED, ReconcileError, UsageError
from ttft_reconcile.settings import JobSettings
from ttft_reconcile.signals import StopFlag, graceful_signals
from ttft_reconcile.summary import RunSummary

log = logging.getLogger(__name__)


@click.command("migrate")
@database_options
@output_options
@click.option("--sql", "as_sql", is_flag=True,
              help="Print the DDL instead of running it (for a DBA): the whole history, from an empty schema,"
                   " unless --from-revision says where the database is.")
@click.option("--from-revision", default=None, metavar="REV",
              help="With --sql: print only the steps after this revision (see `migrate --json` on the database).")
@click.option("--downgrade-to-base", is_flag=True,
              help="Uninstall: remove the ttft_reconcile schema and everything in it (nothing else).")
@click.option("--force", is_flag=True, help="With --downgrade-to-base: drop the audit trail of applied corrections.")
def migrate_command(as_sql: bool, from_revision: str | None, downgrade_to_base: bool, force: bool,
                    **kwargs: Any) -> None:
    """Create or upgrade the `ttft_reconcile` schema (never touches LiteLLM's tables).

    \b
    ttft-reconcile migrate                 # apply
    ttft-reconcile migrate --sql > ddl.sql # review first (a new install)
    ttft-reconcile migrate --sql --from-revision 0002 > upgrade.sql
    """

    def action() -> None:
        if from_revision is not None and not as_sql:
            raise UsageError("--from-revision goes with --sql")
        if force and not downgrade_to_base:
            raise UsageError("--force goes with --downgrade-to-base")
        if as_sql:
            click.echo(migrations.offline_sql(from_revision=from_revision), nl=False)
            return
        url = parse_url(kwargs["database_url"])
        engine = make_engine(url)
        missing = None
        try:
            if downgrade_to_base:
                migrations.downgrade_to_base(engine, force=force)
                state: dict[str, Any] = {"current": None, "removed": True}
            else:
                result = migrations.upgrade(engine)
                state = {"current": result.current, "head": result.head}
                missing = migrations.spend_logs_missing(engine, url.litellm_schema)
        finally:
            engine.dispose()
        if missing:
            click.echo(f"note: {missing}; `run` and `backfill` need it (the capture does not)", err=True)
        if kwargs["as_json"]:
            echo_json(state)
        elif downgrade_to_base:
            click.echo("removed schema ttft_reconcile")
        else:
            click.echo(f"ttft_reconcile schema at revision {state['current']} (head {state['head']})")

    execute(kwargs, action)


def print_summary(summary: RunSummary, as_json: bool) -> None:
    """One JSON object, or a short human summary."""
    if as_json:
        echo_json(summary.to_json())
        return
    window = ""
    if summary.since and summary.until:
        window = f" [{summary.since.isoformat()} .. {summary.until.isoformat()})"
    dry = " (dry run: nothing written)" if summary.dry_run else ""
    policy = "" if summary.mode == "rollback" else f", policy {summary.policy}"
    batches = f"{summary.batches} batch" + ("" if summary.batches == 1 else "es")
    click.echo(
        f"{summary.mode} {summary.run_id}{window}: {summary.candidates} candidates in {batches},"
        f" {summary.duration_seconds:.1f}s{policy}{dry}"
    )
    would = "would be " if summary.dry_run else ""  # a dry run counts what it would do
    for outcome, count in summary.outcomes.items():
        if count:
            click.echo(f"  {would}{outcome:<15} {count}")
    if summary.message:
        click.echo(f"  {summary.message}")


def run_and_publish(kwargs: dict[str, Any], mode: str, work: Callable[[JobSettings], RunSummary]) -> None:
    """Run the job, print its summary, then publish metrics (failure gauges when the job failed)."""
    settings = job_settings(kwargs)
    targets = publish_settings(kwargs, settings.database)
    try:
        summary = work(settings)
    except ReconcileError as error:
        if error.exit_code in (EXIT_FAILED, EXIT_INTERRUPTED):
            note = publish.publish_failed_run(mode, settings, targets)
            if note:  # one line: the job's error, then why the gateway did not hear of it
                error.args = (f"{error}; {note}",)
        raise
    except (sa_exc.SQLAlchemyError, psycopg.Error, KeyboardInterrupt):
        note = publish.publish_failed_run(mode, settings, targets)
        if note:
            log.warning("%s", note)
        raise
    print_summary(summary, kwargs["as_json"])
    result = publish.publish_run(summary, settings, targets)
    if result.method or result.textfile:
        where = ", ".join(x for x in (result.pushgateway, result.textfile) if x)
        click.echo(f"metrics published ({result.method or 'textfile'}) to {where}", err=True)


def _with_progress(
    kwargs: dict[str, Any], call: Callable[[StopFlag, ProgressPrinter | None], RunSummary]
) -> RunSummary:
    """Run a job with graceful SIGINT/SIGTERM handling and, unless --json, progress on stderr."""
    printer = ProgressPrinter(dry_run=bool(kwargs.get("dry_run"))) if not kwargs["as_json"] else None
    completed = False
    with graceful_signals(StopFlag()) as stop:
        try:
            summary = call(stop, printer)
            completed = True
            return summary
        finally:
            if printer:
                printer.close(completed=completed)


def _instant(value: str | None, flag: str) -> datetime | None:
    return None if value is None else flag_instant(value, flag)


@click.command("run")
@database_options
@job_options
@incremental_options
@publish_options
@output_options
def run_command(**kwargs: Any) -> None:
    """Incremental pass for cron: [checkpoint - lookback, now - settle).

    Only one `run` works at a time (a second one exits 75). A first run with no
    checkpoint starts --initial-window back; older history is `backfill`'s job.

    \b
    */5 * * * *  ttft-reconcile run --pushgateway pushgateway:9091
    """

    def work(settings: JobSettings) -> RunSummary:
        return _with_progress(kwargs, lambda stop, progress: job.run_incremental(
            settings, stop=stop, progress=progress))

    execute(kwargs, lambda: run_and_publish(kwargs, "run", work))


@click.command("backfill")
@click.option("--since", required=True, help="Start of the window (UTC unless a zone is given), inclusive.")
@click.option("--until", required=True, help="End of the window (UTC unless a zone is given), exclusive.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Local worker processes. Processes started elsewhere with the same window join in.")
@click.option("--restart", is_flag=True, help="Redo a backfill of this window that already finished.")
@click.option("--slice-lease", type=DURATION, default="5m", show_default=True, envvar="TTFT_RECONCILE_SLICE_LEASE",
              help="Reclaim a slice whose worker has not committed a batch for this long (a killed pod's slice).",
              show_envvar=True)
@database_options
@job_options
@publish_options
@output_options
def backfill_command(since: str, until: str, workers: int, restart: bool, slice_lease: timedelta,
                     **kwargs: Any) -> None:
    """Reconcile a historical window once, resumably (Ctrl-C and re-issue to resume).

    The window is split into day slices that any number of processes claim
    through Postgres; re-issuing the same window and policy resumes it.

    \b
    ttft-reconcile backfill --since 2026-03-01 --until 2026-06-01 --workers 2
    """

    def work(settings: JobSettings) -> RunSummary:
        settings = replace(settings, slice_lease=slice_lease)
        start = _instant(since, "--since")
        end = _instant(until, "--until")
        assert start is not None and end is not None
        return _with_progress(kwargs, lambda stop, progress: job.backfill(
            settings, start, end, workers=workers, restart=restart, stop=stop, progress=progress))

    execute(kwargs, lambda: run_and_publish(kwargs, "backfill", work))


@click.command("rollback")
@click.option("--run-id", type=int, help="Undo every correction this run made.")
@click.option("--since", help="Undo corrections of rows whose startTime is in [since, until) (UTC).")
@click.option("--until", help="End of the window, exclusive.")
@database_options
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True,
              help="Corrections per transaction.")
@click.option("--dry-run", is_flag=True, help="Count what would be restored; change nothing.")
@click.option("--force", is_flag=True,
              help="Roll back even though an overlapping run heartbeated in the last 15 minutes (only when you "
                   "know it is dead: a live backfill would re-apply what you undo).")
@click.option("--lock-mode", type=click.Choice(["auto", "advisory", "lease"]), default="auto", show_default=True,
              envvar="TTFT_RECONCILE_LOCK_MODE", help="Lane lock (see `run --help`).", show_envvar=True)
@publish_options
@output_options
def rollback_command(run_id: int | None, since: str | None, until: str | None, force: bool, **kwargs: Any) -> None:
    """Restore the exact old completionStartTime values a run (or window) wrote.

    Only rows whose value is still ours are restored; others are counted
    `changed` and left alone; rows LiteLLM's retention deleted are `missing`.

    \b
    ttft-reconcile rollback --run-id 42
    ttft-reconcile rollback --since 2026-03-01 --until 2026-03-02
    """

    def work(settings: JobSettings) -> RunSummary:
        with graceful_signals(StopFlag()) as stop:
            return job.rollback(
                settings, run_id=run_id, since=_instant(since, "--since"), until=_instant(until, "--until"),
                stop=stop, force=force,
            )

    execute(kwargs, lambda: run_and_publish(kwargs, "rollback", work))


def register(group: click.Group) -> None:
    for command in (migrate_command, run_command, backfill_command, rollback_command):
        group.add_command(command)
