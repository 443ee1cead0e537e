"""Shared click options: each declared once with its env var and default (see README "Options")."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click

from ttft_reconcile.db import SessionLimits
from ttft_reconcile.dburl import DatabaseUrl, DatabaseUrlError, parse_database_url
from ttft_reconcile.errors import UsageError
from ttft_reconcile.policies import DEFAULT_POLICY, POLICIES
from ttft_reconcile.settings import DEFAULT_CALL_TYPES, KNOWN_CALL_TYPES, JobSettings, PublishSettings
from ttft_reconcile.timeparse import parse_duration, parse_instant

F = TypeVar("F", bound=Callable[..., Any])

MIN_ROWS_PER_SECOND = 0.1
# Postgres keeps statement_timeout and lock_timeout as int milliseconds.
LONGEST_TIMEOUT = timedelta(milliseconds=2**31 - 1)


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


class Duration(click.ParamType):  # type: ignore[type-arg]
    """`90s`, `15m`, `2h`, `30d`."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except UsageError as error:
            self.fail(str(error), param, ctx)


DURATION = Duration()

database_options = _compose(
    click.option(
        "--database-url",
        envvar=["TTFT_RECONCILE_DATABASE_URL", "DATABASE_URL"],
        show_envvar=True,
        help="LiteLLM's Postgres (Prisma URLs accepted; ?schema= says where LiteLLM's tables are).",
    ),
    click.option("--statement-timeout", type=DURATION, default="30s", show_default=True,
                 envvar="TTFT_RECONCILE_STATEMENT_TIMEOUT",
                 help="Per-statement limit (SET LOCAL), e.g. 500ms, 30s, 2m (a bare number is"
                      " seconds); 0 means none, else 1ms to 24d.", show_envvar=True),
    click.option("--lock-timeout", type=DURATION, default="5s", show_default=True,
                 envvar="TTFT_RECONCILE_LOCK_TIMEOUT",
                 help="Longest wait for a row or table lock, e.g. 500ms, 5s (a bare number is seconds);"
                      " 0 means none, else 1ms to 24d.", show_envvar=True),
)

output_options = _compose(
    click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object."),
    click.option("--log-level", default="WARNING", show_default=True, envvar="TTFT_RECONCILE_LOG_LEVEL",
                 type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
                 help="Log level of the lines on stderr.", show_envvar=True),
    click.option("--traceback", is_flag=True, help="Show the full traceback of an error."),
)

job_options = _compose(
    click.option("--policy", type=click.Choice(POLICIES), default=DEFAULT_POLICY, show_default=True,
                  envvar="TTFT_RECONCILE_POLICY", help="Which instant counts as the first token.", show_envvar=True),
    click.option("--tolerance-ms", type=click.FloatRange(0, 1000), default=5.0, show_default=True,
                 envvar="TTFT_RECONCILE_TOLERANCE_MS",
                 help="A row is a candidate when |endTime - completionStartTime| <= this.", show_envvar=True),
    click.option("--call-types", default=",".join(DEFAULT_CALL_TYPES), show_default=True,
                 envvar="TTFT_RECONCILE_CALL_TYPES", help="Comma-separated SpendLogs call_type values.",
                 show_envvar=True),
    click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True,
                 envvar="TTFT_RECONCILE_BATCH_SIZE", help="Candidate rows per transaction.", show_envvar=True),
    click.option("--max-rows-per-second", type=click.FloatRange(min=MIN_ROWS_PER_SECOND), default=None,
                 envvar="TTFT_RECONCILE_MAX_ROWS_PER_SECOND",
                 help=f"Throttle scanned rows, at least {MIN_ROWS_PER_SECOND} (default: no limit).", show_envvar=True),
    click.option("--dry-run", is_flag=True, help="Classify and count only; writes nothing but its run record."),
    click.option("--lock-mode", type=click.Choice(["auto", "advisory", "lease"]), default="auto",
                 show_default=True, envvar="TTFT_RECONCILE_LOCK_MODE",
                 help="Lane lock: advisory (session lock), lease (row; use behind PgBouncer transaction "
                      "pooling), auto (lease when the URL says pgbouncer=true).", show_envvar=True),
)

incremental_options = _compose(
    click.option("--lookback", type=DURATION, default="1h", show_default=True, envvar="TTFT_RECONCILE_LOOKBACK",
                 help="Re-read this far behind the checkpoint (LiteLLM writes rows late).", show_envvar=True),
    click.option("--settle", type=DURATION, default="2m", show_default=True, envvar="TTFT_RECONCILE_SETTLE",
                 help="Leave rows younger than this for the next run.", show_envvar=True),
    click.option("--initial-window", type=DURATION, default="24h", show_default=True,
                 envvar="TTFT_RECONCILE_INITIAL_WINDOW", help="How far back a first run starts.", show_envvar=True),
)

publish_options = _compose(
    click.option("--pushgateway", envvar="TTFT_RECONCILE_PUSHGATEWAY", show_envvar=True,
                 help="Pushgateway address (host:port or URL) to push run metrics to."),
    click.option("--metrics-textfile", envvar="TTFT_RECONCILE_METRICS_TEXTFILE", type=click.Path(dir_okay=False),
                 help="Write run metrics atomically to this .prom file (node_exporter textfile collector).",
                 show_envvar=True),
    click.option("--deployment", envvar="TTFT_RECONCILE_DEPLOYMENT",
                 help="Grouping key of the pushed metrics (default: the database name).", show_envvar=True),
    click.option("--delete-group-on-success", is_flag=True,
                 help="Delete this run's metric group after a successful run (one-off backfills)."),
)


def parse_url(raw: str | None) -> DatabaseUrl:
    if not raw:
        raise UsageError(
            "no database URL: pass --database-url or set TTFT_RECONCILE_DATABASE_URL (or LiteLLM's DATABASE_URL)"
        )
    try:
        return parse_database_url(raw)
    except DatabaseUrlError as error:
        raise UsageError(str(error)) from None


def parse_call_types(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not names:
        raise UsageError("--call-types is empty")
    unknown = [name for name in names if name not in KNOWN_CALL_TYPES]
    if unknown:
        raise UsageError(
            f"unknown call type {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_CALL_TYPES))}"
        )
    return names


def _timeout(kwargs: dict[str, Any], name: str) -> timedelta:
    value: timedelta = kwargs[name]
    flag = "--" + name.replace("_", "-")
    if value and value < timedelta(milliseconds=1):
        raise UsageError(f"{flag} {value.total_seconds()}s is below 1 ms (0 turns the timeout off)")
    if value > LONGEST_TIMEOUT:
        raise UsageError(f"{flag} is longer than Postgres allows (24 days); 0 turns the timeout off")
    return value


def session_limits(kwargs: dict[str, Any]) -> SessionLimits:
    return SessionLimits(statement_timeout=_timeout(kwargs, "statement_timeout"),
                         lock_timeout=_timeout(kwargs, "lock_timeout"))


def job_settings(kwargs: dict[str, Any], *, progress: bool = False) -> JobSettings:
    """Build JobSettings from the parsed options of a command."""
    for name in ("tolerance_ms", "max_rows_per_second"):
        value = kwargs.get(name)
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, not {value}")
    return JobSettings(
        database=parse_url(kwargs.get("database_url")),
        policy=kwargs.get("policy", DEFAULT_POLICY),
        tolerance_ms=kwargs.get("tolerance_ms", 5.0),
        call_types=parse_call_types(kwargs.get("call_types", ",".join(DEFAULT_CALL_TYPES))),
        batch_size=kwargs.get("batch_size", 5000),
        max_rows_per_second=kwargs.get("max_rows_per_second"),
        dry_run=kwargs.get("dry_run", False),
        lookback=kwargs.get("lookback", timedelta(hours=1)),
        settle=kwargs.get("settle", timedelta(minutes=2)),
        initial_window=kwargs.get("initial_window", timedelta(hours=24)),
        limits=session_limits(kwargs),
        lock_mode=kwargs.get("lock_mode", "auto"),
        progress=progress,
    )


def publish_settings(kwargs: dict[str, Any], database: DatabaseUrl) -> PublishSettings:
    from ttft_reconcile.metrics import check_address

    gateway = kwargs.get("pushgateway") or None
    if gateway:
        check_address(gateway)  # a bad address is a usage error (exit 2) before any work
    return PublishSettings(
        pushgateway=gateway,
        metrics_textfile=kwargs.get("metrics_textfile") or None,
        deployment=kwargs.get("deployment") or database.database,
        delete_group_on_success=kwargs.get("delete_group_on_success", False),
    )


def flag_instant(value: str, flag: str) -> datetime:
    """`value` parsed as an instant (aware UTC); a usage error names the flag it came from."""
    try:
        return parse_instant(value)
    except UsageError as error:
        raise UsageError(f"{flag}: {error}") from None
