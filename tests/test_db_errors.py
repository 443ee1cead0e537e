"""Driver errors as users see them: URL parameters, connect_timeout, missing tables and schemas (real Postgres)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from tests import services
from ttft_reconcile.cli import cli
from ttft_reconcile.db import describe_db_error, make_engine
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.errors import EXIT_USAGE, UsageError


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={}, catch_exceptions=False)


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with neither LiteLLM's schema nor our migrations."""
    name = services.clone_database(pg_admin_url, "template0")
    try:
        yield services.with_database(pg_admin_url, name)
    finally:
        services.drop_database(pg_admin_url, name)


def _effective_parameters(url: str) -> dict[str, str]:
    engine = make_engine(parse_database_url(url))
    try:
        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert isinstance(dbapi, psycopg.Connection)
            return dbapi.info.get_parameters()
    finally:
        engine.dispose()


def test_the_urls_connect_timeout_is_what_libpq_gets(pg_admin_url: str) -> None:
    assert _effective_parameters(services.with_params(pg_admin_url, connect_timeout="3"))["connect_timeout"] == "3"
    assert _effective_parameters(pg_admin_url)["connect_timeout"] == "10"  # the default, when the URL has none


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    with services.silent_tcp_server() as port:
        yield port


def test_a_silent_server_is_given_up_on_after_the_urls_connect_timeout(silent_server: int) -> None:
    started = time.monotonic()
    result = invoke("report", "--database-url",
                    f"postgresql://u:pw@127.0.0.1:{silent_server}/db?connect_timeout=2&sslmode=disable")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1 and "cannot use the database" in result.output
    assert 1.5 < elapsed < 7, elapsed  # 2 s, not the default 10 s


@pytest.mark.parametrize(
    "params, shown",
    [
        ("foo=bar", 'invalid URI query parameter: "foo"'),
        ("sslmode=bogus", 'invalid sslmode value: "bogus"'),
        ("target_session_attrs=nope", 'invalid target_session_attrs value: "nope"'),
        ("connect_timeout=soon", "connect_timeout must be a number of seconds, not 'soon'"),
    ],
)
@pytest.mark.parametrize("command", ["report", "run", "ensure-partitions"])
def test_a_url_parameter_libpq_rejects_is_a_usage_error(db_url: str, command: str, params: str, shown: str) -> None:
    key, value = params.split("=")
    result = invoke(command, "--database-url", services.with_params(db_url, **{key: value}))
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.output.strip() == f"ttft-reconcile: the database URL is not valid: {shown}"


def test_a_bad_parameter_is_caught_before_connecting() -> None:
    port = services.free_port()  # nothing listens: only a check before connecting can say "usage"
    with pytest.raises(UsageError, match='invalid URI query parameter: "foo"'):
        make_engine(parse_database_url(f"postgresql://u:pw@127.0.0.1:{port}/db?foo=bar"))


def test_a_libpq_complaint_quoting_the_password_is_not_shown() -> None:
    """libpq quotes the part of a URL it could not decode; when that is the password, say how to fix it instead."""
    with pytest.raises(psycopg.ProgrammingError) as caught:
        psycopg.connect("postgresql://u:p%zzword@127.0.0.1:1/db")
    assert "p%zzword" in str(caught.value)  # what libpq says
    translated = describe_db_error(caught.value, password="p%zzword")
    assert isinstance(translated, UsageError)
    assert "zz" not in str(translated) and "percent-encode" in str(translated)


@pytest.mark.parametrize("password", ["e", "t", "ab", "connection"])
def test_short_passwords_leave_the_message_readable_and_unrevealed(password: str) -> None:
    port = services.free_port()
    result = invoke("run", "--database-url", f"postgresql://postgres:{password}@127.0.0.1:{port}/x")
    assert result.exit_code == 1
    assert "***" not in result.output
    assert result.output.startswith("ttft-reconcile: cannot use the database: connection failed:")


def test_missing_litellm_table_on_a_migrated_database_names_litellm(empty_db_url: str) -> None:
    assert invoke("migrate", "--database-url", empty_db_url).exit_code == 0
    result = invoke("report", "--database-url", empty_db_url)
    assert result.exit_code == 1
    assert result.output.strip() == (
        "ttft-reconcile: LiteLLM's \"LiteLLM_SpendLogs\" table was not found in schema \"public\";"
        " is this LiteLLM's database, or does the URL need ?schema=?"
    )
    assert "migrate" not in result.output


@pytest.mark.parametrize("command", ["report", "ensure-partitions", "prune-traces"])
def test_unmigrated_database_hints_at_migrate(empty_db_url: str, command: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute('CREATE TABLE "LiteLLM_SpendLogs" (request_id text PRIMARY KEY)')
    result = invoke(command, "--database-url", empty_db_url)
    assert result.exit_code == 1
    assert result.output.strip().endswith("does not exist; run `ttft-reconcile migrate` first"), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_ensure_partitions_on_an_unmigrated_database(empty_db_url: str) -> None:
    result = invoke("ensure-partitions", "--database-url", empty_db_url)
    assert result.output.strip() == (
        'ttft-reconcile: schema "ttft_reconcile" does not exist; run `ttft-reconcile migrate` first'
    )


def test_engine_still_connects_with_pgbouncer_and_timeout(db_url: str) -> None:
    engine = make_engine(parse_database_url(services.with_params(db_url, pgbouncer="true", connect_timeout="4")))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_a_lock_timeout_names_the_lock_not_the_connection(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url) as holder, psycopg.connect(empty_db_url) as waiter:
        holder.execute("CREATE TABLE held (x int)")
        holder.commit()
        holder.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
        waiter.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable) as raised:
            waiter.execute("SELECT * FROM held")
    described = describe_db_error(raised.value, parse_database_url(empty_db_url))
    assert type(described).__name__ == "ReconcileError"  # not DatabaseUnavailable: the server is there
    assert "another session held a lock longer than --lock-timeout" in str(described)
    assert "lock timeout" in str(described) and "cannot use the database" not in str(described)
