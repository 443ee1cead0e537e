"""Engine, per-transaction session settings, SpendLogs introspection and error translation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from ttft_reconcile.dburl import DatabaseUrl, scrub
from ttft_reconcile.errors import DatabaseUnavailable, ReconcileError, SchemaMissing

SPEND_LOGS = "LiteLLM_SpendLogs"
APPLICATION_NAME = "ttft_reconcile"


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


def make_engine(url: DatabaseUrl, *, connect_timeout_s: int = 10) -> Engine:
    """A NullPool engine (a cron job gains nothing from a pool) on psycopg 3.

    Behind a transaction pooler (`pgbouncer=true`) psycopg's automatic prepared
    statements are disabled, since the next transaction may land on another server.
    """
    connect_args: dict[str, object] = {"connect_timeout": connect_timeout_s}
    if url.pgbouncer:
        connect_args["prepare_threshold"] = None
    return create_engine(url.sqlalchemy, poolclass=NullPool, connect_args=connect_args)


def apply_limits(conn: Connection, limits: SessionLimits) -> None:
    """SET LOCAL the timeouts and application_name for the current transaction, and JIT off: the
    batch statement's cost estimate crosses jit_above_cost, and compiling it took longer (0.35 s)
    than running it."""
    conn.execute(
        text(
            "SELECT set_config('statement_timeout', :st, true), set_config('lock_timeout', :lt, true),"
            " set_config('application_name', :app, true), set_config('jit', 'off', true)"
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
    """Turn a driver/SQLAlchemy error into one clear, password-free line."""
    original = error.orig if isinstance(error, sa_exc.DBAPIError) and error.orig is not None else error
    message = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    message = scrub(message, password)
    where = f" ({url.redacted})" if url is not None else ""
    if isinstance(original, psycopg.OperationalError) and not isinstance(original, psycopg.errors.QueryCanceled):
        return DatabaseUnavailable(f"cannot use the database{where}: {message}")
    if isinstance(original, psycopg.errors.UndefinedTable):
        return SchemaMissing(f"{message}; has `ttft-reconcile migrate` been run?")
    return ReconcileError(f"database error{where}: {message}")
