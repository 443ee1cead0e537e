"""Values Postgres or the job cannot honour are usage errors before any work; one line per failure."""

from __future__ import annotations

import psycopg
import pytest

from tests import services
from tests.test_cli import SCRIPT, WINDOW, invoke, seed


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--statement-timeout", "25d", "longer than Postgres allows"),
    ("--lock-timeout", "3660d", "longer than Postgres allows"),
    ("--statement-timeout", "0.4ms", "below 1 ms"),
    ("--max-rows-per-second", "1e-300", "0.1"),
])
def test_values_postgres_cannot_take_are_usage_errors_before_any_work(db_url: str, flag: str, value: str,
                                                                      says: str) -> None:
    result = invoke("backfill", *WINDOW, "--database-url", db_url, flag, value)
    assert result.exit_code == 2, result.output
    assert says in result.output
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.runs").fetchone() == (0,)


def test_zero_turns_a_timeout_off(db_url: str) -> None:
    seed(db_url, 1)
    result = invoke("backfill", *WINDOW, "--database-url", db_url, "--statement-timeout", "0", "--lock-timeout", "0")
    assert result.exit_code == 0, result.output


def test_report_refuses_a_schema_the_job_is_not_configured_for(db_url: str) -> None:
    seed(db_url, 1)
    assert invoke("backfill", *WINDOW, "--database-url", db_url).exit_code == 0
    wrong = invoke("report", *WINDOW, "--database-url", services.with_params(db_url, schema="litellm"))
    assert wrong.exit_code == 2 and "schema 'litellm'" in wrong.output and "'public'" in wrong.output
    right = invoke("report", *WINDOW, "--database-url", services.with_params(db_url, schema="public"))
    assert right.exit_code == 0, right.output


def test_a_failed_run_and_a_dead_gateway_make_one_line(pg_admin_url: str) -> None:
    """No LiteLLM table (exit 1) and nobody at the Pushgateway: the job's error and the lost
    failure metrics share the one line."""
    import subprocess

    name = f"ttft_bare_{services.free_port()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = services.with_database(pg_admin_url, name)
        assert subprocess.run([SCRIPT, "migrate", "--database-url", url], capture_output=True).returncode == 0
        done = subprocess.run([SCRIPT, "run", "--database-url", url, "--pushgateway",
                               f"127.0.0.1:{services.free_port()}"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "LiteLLM_SpendLogs" in lines[0] and "failure metrics not published either" in lines[0]
    finally:
        services.drop_database(pg_admin_url, name)


@pytest.mark.parametrize("args", [
    ("explain", "some-id", "--tolerance-ms", "nan"),
    ("run", "--pushgateway", "127.0.0.1:99999"),
    ("report", "--format", "csv", "--json"),
])
def test_contradictory_or_impossible_flags_are_usage_errors(db_url: str, args: tuple[str, ...]) -> None:
    result = invoke(*args, "--database-url", db_url)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("ttft-reconcile: "), result.output


def test_export_into_a_reader_that_stops_early_is_quiet(db_url: str) -> None:
    """`export | head -1`: the pipe closes under a long export; no error line, exit 0."""
    import subprocess

    seed(db_url, 400)
    assert invoke("backfill", *WINDOW, "--database-url", db_url).exit_code == 0
    proc = subprocess.Popen([SCRIPT, "export", *WINDOW, "--database-url", db_url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0, err
    assert first.startswith(b"{") and err == ""
