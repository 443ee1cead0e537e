"""Engine, per-transaction session settings, SpendLogs introspection and error translation."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

from ttft_reconcile.dburl import DatabaseUrl, scrub
from ttft_reconcile.errors import DatabaseUnavailable, ReconcileError, SchemaMissing, UsageError

log = logging.getLogger(__name__)

SPEND_LOGS = "LiteLLM_SpendLogs"
APPLICATION_NAME = "ttft_reconcile"
OUR_SCHEMA = "ttft_reconcile"
DEFAULT_CONNECT_TIMEOUT_S = 10
MIGRATE_HINT = "run `ttft-reconcile migrate` first"

# libpq's (and psycopg's) complaints about a connection parameter: raised while parsing the URL or
# at connect time before any server is asked, so they carry no SQLSTATE.
_BAD_PARAMETER = re.compile(
    r"invalid URI query parameter|invalid connection option|missing key/value separator"
    r"|invalid percent-encoded token|unexpected spaces found|missing \"=\" after|unterminated quoted string"
    r"|end of string reached when looking for|invalid URI|invalid \"?\w+\"? value|invalid \w+ method"
    r"|invalid integer value .* for connection option|invalid port number|could not match \d+ port numbers"
    r"|bad value for connect_timeout|unrecognized configuration parameter|invalid value for parameter"
)
_QUOTED = re.compile(r'"([^"]*)"')
_MISSING_RELATION = re.compile(r'relation "(?:(?P<schema>[^"]+?)\.)?(?P<table>[^".]+)" does not exist')
_MISSING_SCHEMA = re.compile(r'schema "(?P<schema>[^"]+)" does not exist')
_PERCENT_ENCODE = (
    "percent-encode special characters in the user name and password"
    " (# as %23, ? as %3F, / as %2F, @ as %40, % as %25, & as %26, space as %20)"
)


@dataclass(frozen=True)
class SessionLimits:
    """Applied with SET LOCAL at the start of every transaction (works behind PgBouncer)."""

    statement_timeout: timedelta = timedelta(seconds=30)
    lock_timeout: timedelta = timedelta(seconds=5)
    application_name: str = APPLICATION_NAME


@dataclass(frozen=True)
class SpendLogsShape:
    """What this database's SpendLogs looks like (schema era, partitioning)."""

    schema: str
    columns: frozenset[str]
    partitioned: bool

    @property
    def has_litellm_call_id(self) -> bool:
        return "litellm_call_id" in self.columns

    @property
    def has_updated_at(self) -> bool:
        return "updated_at" in self.columns

    @property
    def qualified(self) -> str:
        """The quoted, schema-qualified table name."""
        return f'"{self.schema}"."{SPEND_LOGS}"'


def make_engine(url: DatabaseUrl, *, connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S) -> Engine:
    """An engine on psycopg 3 that keeps its connections for the life of the process.

    A job opens one transaction per batch: a fresh connection for each cost a connect and a
    cold catalog cache (planning the batch statement took 4x as long), so the batches of one
    process share a connection (the lane lock holds one more). A pooled connection that the
    server dropped is replaced before use (pre-ping), so a restart between batches costs nothing.

    The URL's parameters are checked first (UsageError for any libpq rejects); its own
    `connect_timeout` wins over `connect_timeout_s`. psycopg's automatic prepared statements are
    off: behind a transaction pooler (said with `pgbouncer=true` or not) the next transaction of
    a kept connection may land on another server session, which lacks them or has them already.
    """
    connect_args: dict[str, object] = {"prepare_threshold": None}
    if not connection_parameters(url).get("connect_timeout"):
        connect_args["connect_timeout"] = connect_timeout_s
    return create_engine(url.sqlalchemy, poolclass=QueuePool, pool_size=4, max_overflow=4, pool_pre_ping=True,
                         connect_args=connect_args)


def connection_parameters(url: DatabaseUrl) -> dict[str, Any]:
    """The URL's libpq parameters as libpq parses them; UsageError (password-free) for a URL it rejects."""
    try:
        params = conninfo_to_dict(url.libpq)
    except psycopg.Error as error:
        raise bad_url(str(error), _password_texts(url.libpq)) from None
    timeout = params.get("connect_timeout")
    if timeout:
        try:
            int(float(str(timeout)))
        except ValueError:
            raise UsageError(
                f"the database URL is not valid: connect_timeout must be a number of seconds, not {timeout!r}"
            ) from None
    return params


def bad_url(message: str, passwords: list[str]) -> UsageError:
    """The usage error for libpq's complaint `message` about a URL: libpq's own words, unless it
    quotes a piece of the URL that is (part of) a password."""
    line = message.strip().splitlines()[0] if message.strip() else "libpq rejected it"
    found = _BAD_PARAMETER.search(line)
    detail = re.sub(r"^(?:FATAL|ERROR):\s+", "", line[found.start() :] if found else line)
    if any(quoted and password and quoted in password for quoted in _QUOTED.findall(detail) for password in passwords):
        detail = _PERCENT_ENCODE
    return UsageError(f"the database URL is not valid: {scrub(detail)}")


def _password_texts(libpq: str) -> list[str]:
    """The password of a URL as written and decoded: the userinfo's and each `password=` value."""
    head, _, query = libpq.partition("?")
    userinfo = head.split("://", 1)[-1].rpartition("@")[0]
    found = [userinfo.partition(":")[2]]
    found += [pair.split("=", 1)[1] for pair in query.split("&") if pair.lower().startswith("password=")]
    return [text for raw in found if raw for text in (raw, unquote(raw))]


def apply_limits(conn: Connection, limits: SessionLimits) -> None:
    """SET LOCAL the timeouts and application_name for the current transaction, and JIT off: the
    batch statement's cost estimate crosses jit_above_cost, and compiling it took longer (0.35 s)
    than running it. Where the server has it (PostgreSQL 14+), a statement also checks every
    second that we are still connected: a killed job's statement stops within a second instead
    of running to its end holding its locks (a rollup rebuild held its day against the re-issued
    command)."""
    conn.execute(
        text(
            "SELECT set_config('statement_timeout', :st, true), set_config('lock_timeout', :lt, true),"
            " set_config('application_name', :app, true), set_config('jit', 'off', true),"
            " (SELECT set_config(name, '1s', true) FROM pg_settings"
            "  WHERE name = 'client_connection_check_interval')"
        ),
        {
            "st": f"{int(limits.statement_timeout.total_seconds() * 1000)}ms",
            "lt": f"{int(limits.lock_timeout.total_seconds() * 1000)}ms",
            "app": limits.application_name,
        },
    )


@contextmanager
def transaction(engine: Engine, limits: SessionLimits) -> Iterator[Connection]:
    """One transaction with our session limits; commits on success, rolls back on any error."""
    with engine.begin() as conn:
        apply_limits(conn, limits)
        yield conn


def inspect_spend_logs(conn: Connection, schema: str) -> SpendLogsShape:
    """Detect SpendLogs' columns and partitioning; raise SchemaMissing with a hint when absent."""
    rel = conn.execute(
        text(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :schema AND c.relname = :table"
        ),
        {"schema": schema, "table": SPEND_LOGS},
    ).scalar()
    if rel is None:
        elsewhere = conn.execute(
            text(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relname = :table ORDER BY 1"
            ),
            {"table": SPEND_LOGS},
        ).scalars().all()
        hint = (
            f"; it exists in schema {', '.join(elsewhere)} (add ?schema={elsewhere[0]} to the URL)"
            if elsewhere
            else "; is this LiteLLM's database?"
        )
        raise SchemaMissing(f'table "{SPEND_LOGS}" not found in schema "{schema}"{hint}')
    columns = conn.execute(
        text(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = :schema AND table_name = :table"
        ),
        {"schema": schema, "table": SPEND_LOGS},
    ).scalars().all()
    return SpendLogsShape(schema=schema, columns=frozenset(columns), partitioned=rel == "p")


def describe_db_error(error: BaseException, url: DatabaseUrl | None = None, password: str = "") -> ReconcileError:
    """Turn a driver/SQLAlchemy error into one clear, password-free line.

    A connection parameter libpq rejects is a UsageError (exit 2); a missing table or schema a
    SchemaMissing with a hint at the missing piece: LiteLLM's table, or our migrations. `password`
    (and the URL's) only keeps a libpq message that quotes a piece of it from being shown.
    """
    original = error.orig if isinstance(error, sa_exc.DBAPIError) and error.orig is not None else error
    message = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    if (
        isinstance(original, (psycopg.ProgrammingError, psycopg.OperationalError))
        and getattr(original, "sqlstate", None) is None
        and _BAD_PARAMETER.search(message)
    ):
        return bad_url(message, [password, *(_password_texts(url.libpq) if url is not None else [])])
    message = scrub(message)
    where = f" ({url.redacted})" if url is not None else ""
    if isinstance(original, psycopg.errors.LockNotAvailable):
        # (an OperationalError in psycopg, but the database is there: another session is in the way)
        return ReconcileError(f"another session held a lock longer than --lock-timeout{where}: {message};"
                              " re-run once it is done, or raise --lock-timeout")
    if isinstance(original, psycopg.OperationalError) and not isinstance(original, psycopg.errors.QueryCanceled):
        return DatabaseUnavailable(f"cannot use the database{where}: {message}")
    if isinstance(original, psycopg.errors.UndefinedTable):
        return SchemaMissing(_missing_relation(message, url))
    if isinstance(original, psycopg.errors.InvalidSchemaName):
        missing = _MISSING_SCHEMA.search(message)
        schema = missing.group("schema") if missing else None
        if schema == OUR_SCHEMA:
            return SchemaMissing(f"{message}; {MIGRATE_HINT}")
        if url is not None and schema == url.litellm_schema:
            return SchemaMissing(f"{message}: it should hold LiteLLM's tables; is the URL's ?schema= right?")
    if isinstance(original, psycopg.errors.UndefinedFunction) and f"{OUR_SCHEMA}." in message:
        return SchemaMissing(f"{message}; run `ttft-reconcile migrate`")
    return ReconcileError(f"database error{where}: {message}")


def _missing_relation(message: str, url: DatabaseUrl | None) -> str:
    missing = _MISSING_RELATION.search(message)
    if missing is None:
        return f"{message}; has `ttft-reconcile migrate` been run?"
    table = missing.group("table")
    schema = missing.group("schema") or (url.litellm_schema if url is not None else None)
    if table.startswith("LiteLLM_"):
        where = f' in schema "{schema}"' if schema else ""
        return (f"LiteLLM's \"{table}\" table was not found{where};"
                " is this LiteLLM's database, or does the URL need ?schema=?")
    if schema == OUR_SCHEMA:
        return f"{message}; {MIGRATE_HINT}"
    return f"{message}; has `ttft-reconcile migrate` been run?"


class Cancellable:
    """The connection a background thread runs its statements on, so that another thread can
    cancel the one under way (`cancel`) when the command stops."""

    def __init__(self, what: str) -> None:
        self._what = what  # for the log: what a cancelled statement was doing
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    @contextmanager
    def running_on(self, conn: Connection) -> Iterator[None]:
        """Mark `conn` as the one to cancel for the block."""
        with self._lock:
            self._conn = conn.connection.driver_connection
        try:
            yield
        finally:
            with self._lock:
                self._conn = None

    def cancel(self) -> None:
        """Cancel the statement running on the marked connection, if any (the server rolls it back)."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.cancel_safe()
                except psycopg.Error as error:
                    log.debug("could not cancel %s: %s", self._what, error)
