"""The command line: exit codes, one-line errors, JSON keys, through CliRunner and the console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from tests import services
from tests.factories import BASE, broken_stream, insert_spend, insert_trace, ms
from ttft_reconcile.cli import cli
from ttft_reconcile.lanes import lane_key

WINDOW = ["--since", "2026-03-10", "--until", "2026-03-11"]
SCRIPT = str(Path(sys.executable).parent / "ttft-reconcile")


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env or {}, catch_exceptions=False)


def seed(url: str, n: int = 3) -> list[str]:
    ids = []
    with psycopg.connect(url) as conn:
        for i in range(n):
            row = broken_stream(BASE + ms(1000 * i))
            insert_spend(conn, [row])
            insert_trace(conn, row.request_id, request_start=row.start, first_chunk=row.start + ms(100))
            ids.append(row.request_id)
    return ids


def test_backfill_json_summary_keys_and_exit_0(db_url: str) -> None:
    seed(db_url)
    result = invoke("backfill", *WINDOW, "--database-url", db_url, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    for key in ("run_id", "mode", "since", "until", "policy", "candidates", "outcomes", "duration_seconds", "dry_run"):
        assert key in payload
    assert payload["mode"] == "backfill" and payload["policy"] == "first_chunk"
    assert payload["since"] == "2026-03-10T00:00:00+00:00"
    assert payload["outcomes"]["repaired"] == 3 and payload["candidates"] == 3 and payload["dry_run"] is False


def test_database_url_falls_back_to_litellm_env(db_url: str) -> None:
    seed(db_url, 1)
    prisma_style = services.with_params(db_url, connection_limit="10", pool_timeout="30")
    result = invoke("backfill", *WINDOW, "--dry-run", env={"DATABASE_URL": prisma_style})
    assert result.exit_code == 0, result.output
    assert "repaired" in result.output and "dry run" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["backfill", "--since", "2026-03-11", "--until", "2026-03-10"], "must be before"),
        (["backfill", "--since", "yesterday", "--until", "2026-03-10"], "not a date"),
        (["backfill", *WINDOW, "--policy", "first_byte"], "first_byte"),
        (["backfill", *WINDOW, "--call-types", "anthropic_messages,chat"], "unknown call type chat"),
        (["run", "--lookback", "an hour"], "not a duration"),
        (["rollback"], "rollback needs --run-id"),
    ],
)
def test_usage_errors_exit_2_with_one_line(db_url: str, args: list[str], message: str) -> None:
    result = invoke(*args, "--database-url", db_url)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_no_database_url_is_a_usage_error() -> None:
    result = invoke("run", env={"DATABASE_URL": "", "TTFT_RECONCILE_DATABASE_URL": ""})
    assert result.exit_code == 2
    assert "no database URL" in result.output


def test_unreachable_database_exits_1_and_never_shows_the_password() -> None:
    port = services.free_port()
    result = invoke("run", "--database-url", f"postgresql://admin:Sup3rS3cret@127.0.0.1:{port}/litellm")
    assert result.exit_code == 1
    assert "Sup3rS3cret" not in result.output
    assert "cannot use the database" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_litellm_table_in_another_schema(db_url: str) -> None:
    result = invoke("run", "--database-url", services.with_params(db_url, schema="litellm"))
    assert result.exit_code == 1
    assert 'not found in schema "litellm"' in result.output and "public" in result.output
    with psycopg.connect(db_url) as conn:
        conn.execute('CREATE SCHEMA litellm; ALTER TABLE "LiteLLM_SpendLogs" SET SCHEMA litellm')
        conn.commit()
    assert invoke("run", "--database-url", services.with_params(db_url, schema="litellm")).exit_code == 0
    result = invoke("run", "--database-url", db_url)
    assert result.exit_code == 1 and "?schema=litellm" in result.output


def test_migrations_not_applied(pg_admin_url: str) -> None:
    name = services.clone_database(pg_admin_url, "template0")
    try:
        result = invoke("run", "--database-url", services.with_database(pg_admin_url, name))
        assert result.exit_code == 1
        assert "ttft-reconcile migrate" in result.output
    finally:
        services.drop_database(pg_admin_url, name)


def test_second_run_in_the_lane_exits_75(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("SELECT set_config('application_name', 'other-cron-run', false)")
        assert holder.execute("SELECT pg_try_advisory_lock(%s)", (lane_key("run"),)).fetchone() == (True,)
        result = invoke("run", "--database-url", db_url)
        assert result.exit_code == 75
        assert "held by another process" in result.output and "other-cron-run" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert invoke("run", "--database-url", db_url).exit_code == 0


def test_lease_mode_lane_held_exits_75_and_expired_lease_is_taken(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO ttft_reconcile.leases (lane, holder, expires_at)"
                     " VALUES ('run', 'pod-a', now() + interval '5 minutes')")
        held = invoke("run", "--database-url", services.with_params(db_url, pgbouncer="true"))
        assert held.exit_code == 75 and "pod-a" in held.output
        conn.execute("UPDATE ttft_reconcile.leases SET expires_at = now() - interval '1 second'")
        assert invoke("run", "--database-url", db_url, "--lock-mode", "lease").exit_code == 0
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.leases").fetchone() == (0,)


def test_rollback_unknown_run_is_usage_error(db_url: str) -> None:
    result = invoke("rollback", "--run-id", "999", "--database-url", db_url)
    assert result.exit_code == 2 and "no run with id 999" in result.output


def test_console_script_backfill_then_sigterm_exits_130(db_url: str) -> None:
    seed(db_url, 6)
    env = {**os.environ, "TTFT_RECONCILE_DATABASE_URL": db_url}
    proc = subprocess.Popen(
        [SCRIPT, "backfill", *WINDOW, "--batch-size", "1", "--max-rows-per-second", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            done = conn.execute("SELECT count(*) FROM ttft_reconcile.corrections").fetchone()
            if done and done[0] >= 1:
                break
            time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "interrupted by SIGTERM after committing batch" in err
    with psycopg.connect(db_url) as conn:
        status = conn.execute("SELECT status FROM ttft_reconcile.runs ORDER BY id DESC LIMIT 1").fetchone()
        assert status == ("interrupted",)
        corrected = conn.execute("SELECT count(*) FROM ttft_reconcile.corrections").fetchone()
        assert corrected is not None and 1 <= corrected[0] < 6
    # re-issuing the same backfill resumes and finishes the rest
    again = subprocess.run([SCRIPT, "backfill", *WINDOW, "--json"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["outcomes"]["repaired"] == 6 - corrected[0]


def test_console_script_help_lists_every_command() -> None:
    result = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("migrate", "run", "backfill", "rollback"):
        assert command in result.stdout


def test_every_command_has_help_with_an_example() -> None:
    for name, command in cli.commands.items():
        assert command.help, name
        result = invoke(name, "--help")
        assert result.exit_code == 0, name


def _gateway_groups(address: str) -> list[dict[str, Any]]:
    import urllib.request

    with urllib.request.urlopen(f"http://{address}/api/v1/metrics", timeout=5) as response:
        data: list[dict[str, Any]] = json.load(response)["data"]
    return data


def test_dead_pushgateway_exits_3_after_committing(db_url: str) -> None:
    ids = seed(db_url, 2)
    port = services.free_port()
    result = invoke("backfill", *WINDOW, "--database-url", db_url, "--pushgateway", f"127.0.0.1:{port}")
    assert result.exit_code == 3, result.output
    assert "repaired" in result.output
    with psycopg.connect(db_url) as conn:
        done = conn.execute("SELECT count(*) FROM ttft_reconcile.corrections WHERE request_id = ANY(%s)",
                            (ids,)).fetchone()
        assert done == (2,)


def test_success_and_failure_reach_the_pushgateway(db_url: str, pushgateway: str, pg_admin_url: str) -> None:
    seed(db_url, 3)
    deployment = f"cli-{uuid.uuid4().hex[:8]}"
    ok = invoke("backfill", *WINDOW, "--database-url", db_url, "--pushgateway", pushgateway,
                "--deployment", deployment)
    assert ok.exit_code == 0, ok.output
    group = next(g for g in _gateway_groups(pushgateway) if g["labels"].get("deployment") == deployment)
    rows = {m["labels"]["outcome"]: float(m["value"])
            for m in group["ttft_reconcile_last_run_rows"]["metrics"]}
    assert rows["repaired"] == 3.0
    success = float(group["ttft_reconcile_last_success_timestamp_seconds"]["metrics"][0]["value"])

    name = services.clone_database(pg_admin_url, "template0")  # no schema: the run fails
    try:
        failed = invoke("backfill", *WINDOW, "--database-url", services.with_database(pg_admin_url, name),
                        "--pushgateway", pushgateway, "--deployment", deployment)
    finally:
        services.drop_database(pg_admin_url, name)
    assert failed.exit_code == 1
    group = next(g for g in _gateway_groups(pushgateway) if g["labels"].get("deployment") == deployment)
    assert float(group["ttft_reconcile_last_success_timestamp_seconds"]["metrics"][0]["value"]) == success
    assert float(group["ttft_reconcile_last_failure_timestamp_seconds"]["metrics"][0]["value"]) >= success


def test_bad_pushgateway_address_is_a_usage_error_before_any_work(db_url: str) -> None:
    seed(db_url, 1)
    result = invoke("backfill", *WINDOW, "--database-url", db_url, "--pushgateway", "ftp://u:pw@gw:21")
    assert result.exit_code == 2
    assert "pw@" not in result.output
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.runs").fetchone() == (0,)


def test_empty_window_is_success(db_url: str) -> None:
    result = invoke("backfill", "--since", "2020-01-01", "--until", "2020-01-02", "--database-url", db_url, "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["candidates"] == 0


def test_lane_excludes_across_lock_modes(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as holder:
        assert holder.execute("SELECT pg_try_advisory_lock(%s)", (lane_key("run"),)).fetchone() == (True,)
        held = invoke("run", "--database-url", db_url, "--lock-mode", "lease")
        assert held.exit_code == 75, held.output
        holder.execute("SELECT pg_advisory_unlock(%s)", (lane_key("run"),))
        assert holder.execute("SELECT count(*) FROM ttft_reconcile.leases").fetchone() == (0,)
        holder.execute("INSERT INTO ttft_reconcile.leases (lane, holder, expires_at)"
                       " VALUES ('run', 'pod-b', now() + interval '5 minutes')")
        held = invoke("run", "--database-url", db_url, "--lock-mode", "advisory")
        assert held.exit_code == 75 and "pod-b" in held.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["backfill", "--since", "0026-03-01", "--until", "2026-03-02"], "check the year"),
        (["backfill", "--since", "2016-01-01", "--until", "2030-01-01"], "longer than"),
        # a window into the future would mark its slices done before their rows exist
        (["backfill", "--since", "2026-03-01", "--until", "2030-01-01"], "is in the future"),
        (["backfill", *WINDOW, "--tolerance-ms", "nan"], "finite"),
        (["run", "--settle", "99999999999d"], "longer than"),
        (["run", "--lookback", "3000000d"], "longer than"),
        (["report", "--since", "garbage"], "--since: not a date"),
        (["export", "--since", "2026-03-01", "--until", "soon"], "--until: not a date"),
        (["export", "--since", "2026-03-01", "--json"], "--json does not apply"),
    ],
)
def test_absurd_values_are_usage_errors(db_url: str, args: list[str], message: str) -> None:
    result = invoke(*args, "--database-url", db_url)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_unwritable_export_file_is_one_line(db_url: str) -> None:
    result = invoke("export", "--since", "2026-03-10", "--database-url", db_url, "--output", "/nonexistent/dir/x.csv")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "/nonexistent/dir/x.csv" in result.output


def test_migrate_notes_when_litellm_tables_are_not_where_the_url_says(db_url: str) -> None:
    found = invoke("migrate", "--database-url", db_url)
    assert found.exit_code == 0 and "note:" not in found.output
    elsewhere = invoke("migrate", "--database-url", services.with_params(db_url, schema="litellm"))
    assert elsewhere.exit_code == 0, elsewhere.output  # our schema is installed all the same
    assert 'note: table "LiteLLM_SpendLogs" not found in schema "litellm"' in elsewhere.output
    assert "?schema=public" in elsewhere.output


def test_migrate_flags_that_need_another_are_refused_before_anything_runs(db_url: str) -> None:
    for args, needs in ((["--force"], "--force goes with --downgrade-to-base"),
                        (["--from-revision", "0002"], "--from-revision goes with --sql")):
        result = invoke("migrate", *args, "--database-url", db_url)
        assert result.exit_code == 2 and needs in result.output, result.output
