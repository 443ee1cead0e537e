"""A plain (non-editable) install ships the migrations inside the package and can migrate."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg

from tests import services

REPO = Path(__file__).resolve().parent.parent


def test_wheel_carries_migrations_and_migrates_from_anywhere(tmp_path: Path, pg_admin_url: str) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    if built.returncode != 0:  # no setuptools in this venv: build in isolation (needs the index)
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(REPO)],
            capture_output=True, text=True, timeout=300,
        )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("ttft_reconcile-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ttft_reconcile/migrations/env.py" in names
    assert "ttft_reconcile/migrations/script.py.mako" in names
    assert any(n.startswith("ttft_reconcile/migrations/versions/0001_") for n in names)
    assert not any(n.startswith("migrations/") for n in names), "a stray top-level package would be installed"
    # every module of the source tree ships (an editable install in the test venv would hide a gap)
    source = {str(p.relative_to(REPO)) for p in (REPO / "ttft_reconcile").rglob("*.py")}
    source |= {"ttft_reconcile/migrations/" + str(p.relative_to(REPO / "migrations"))
               for p in (REPO / "migrations").rglob("*.py")}
    missing = sorted(source - set(names))
    assert not missing, f"not in the wheel: {missing}"

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, timeout=300)
    name = services.clone_database(pg_admin_url, "template0")
    try:
        url = services.with_database(pg_admin_url, name)
        env = {**os.environ, "PYTHONPATH": str(target), "TTFT_RECONCILE_DATABASE_URL": url}
        code = "from ttft_reconcile.cli import main; main()"
        result = subprocess.run([sys.executable, "-c", code, "migrate"], env=env, cwd="/", capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "revision" in result.stdout
        probe = subprocess.run([sys.executable, "-c", "import ttft_reconcile; print(ttft_reconcile.__file__)"],
                               env=env, cwd="/", capture_output=True, text=True, timeout=60)
        assert probe.stdout.startswith(str(target)), probe.stdout
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('ttft_reconcile.stream_traces') IS NOT NULL").fetchone() == (
                True,)
        removed = subprocess.run([sys.executable, "-c", code, "migrate", "--downgrade-to-base"], env=env, cwd="/",
                                 capture_output=True, text=True, timeout=120)
        assert removed.returncode == 0, removed.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'ttft_reconcile'").fetchone() == (0,)
    finally:
        services.drop_database(pg_admin_url, name)


def test_migrate_sql_prints_ddl_for_a_dba() -> None:
    from click.testing import CliRunner

    from ttft_reconcile.cli import cli

    result = CliRunner().invoke(cli, ["migrate", "--sql"])
    assert result.exit_code == 0
    assert "CREATE TABLE ttft_reconcile.stream_traces" in result.output
    assert "PARTITION BY RANGE (request_start_at)" in result.output
    # never DDL against LiteLLM's tables: no index, no view, no ALTER on them
    ddl = result.output
    for forbidden in ('ON "LiteLLM_', 'ALTER TABLE "LiteLLM_', "CREATE VIEW", 'TABLE "LiteLLM_'):
        assert forbidden not in ddl
    # an upgrade for a database already at 0002: only the steps after it
    upgrade = CliRunner().invoke(cli, ["migrate", "--sql", "--from-revision", "0002"])
    assert upgrade.exit_code == 0, upgrade.output
    assert "Running upgrade 0002 -> 0003" in upgrade.output and "CREATE TABLE ttft_reconcile.runs" not in upgrade.output
    unknown = CliRunner().invoke(cli, ["migrate", "--sql", "--from-revision", "0009"])
    assert unknown.exit_code == 2 and "unknown revision '0009'" in unknown.output


def test_downgrade_removes_only_our_schema(db_url: str) -> None:
    from ttft_reconcile.db import make_engine
    from ttft_reconcile.dburl import parse_database_url
    from ttft_reconcile.migrate import downgrade_to_base

    with psycopg.connect(db_url) as conn:
        tables_before = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    engine = make_engine(parse_database_url(db_url))
    try:
        downgrade_to_base(engine)
    finally:
        engine.dispose()
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'ttft_reconcile'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == tables_before


def test_migrate_sql_output_applies_as_is(pg_admin_url: str) -> None:
    from click.testing import CliRunner

    from ttft_reconcile.cli import cli

    ddl = CliRunner().invoke(cli, ["migrate", "--sql"]).output
    assert "%%" not in ddl
    name = services.clone_database(pg_admin_url, "template0")
    try:
        with psycopg.connect(services.with_database(pg_admin_url, name), autocommit=True) as conn:
            conn.execute(ddl.encode())  # type: ignore[call-overload]
            version = conn.execute("SELECT version_num FROM ttft_reconcile.alembic_version").fetchone()
            assert version is not None and version[0]
            assert conn.execute("SELECT to_regprocedure('ttft_reconcile.spend_logs_ttft(timestamptz, timestamptz)')"
                                " IS NOT NULL").fetchone() == (True,)
    finally:
        services.drop_database(pg_admin_url, name)


def test_uninstall_refuses_while_corrections_are_applied(db_url: str) -> None:
    from click.testing import CliRunner

    from tests.factories import BASE, broken_stream, insert_spend, insert_trace, ms
    from ttft_reconcile.cli import cli

    with psycopg.connect(db_url) as conn:
        row = broken_stream(BASE)
        insert_spend(conn, [row])
        insert_trace(conn, row.request_id, request_start=BASE, first_chunk=BASE + ms(50))
    runner = CliRunner()
    assert runner.invoke(cli, ["backfill", "--since", "2026-03-10", "--until", "2026-03-11",
                               "--database-url", db_url]).exit_code == 0
    refused = runner.invoke(cli, ["migrate", "--downgrade-to-base", "--database-url", db_url])
    assert refused.exit_code == 2 and "1 corrections are still applied" in refused.output
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM ttft_reconcile.corrections").fetchone() == (1,)
    forced = runner.invoke(cli, ["migrate", "--downgrade-to-base", "--force", "--database-url", db_url])
    assert forced.exit_code == 0, forced.output


def test_uninstall_waits_for_a_batch_in_flight_and_refuses_while_a_job_runs(db_url: str) -> None:
    """The count of applied corrections and the DDL are one transaction behind an exclusive lock:
    a batch that is writing when the uninstall starts finishes first and is counted, instead of its
    corrections being dropped right after the count said there were none."""
    import threading
    import time

    from ttft_reconcile.db import make_engine
    from ttft_reconcile.dburl import parse_database_url
    from ttft_reconcile.errors import UsageError
    from ttft_reconcile.migrate import downgrade_to_base

    engine = make_engine(parse_database_url(db_url))
    outcome: list[BaseException | None] = []

    def uninstall() -> None:
        try:
            downgrade_to_base(engine)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)

    try:
        with psycopg.connect(db_url) as batch, psycopg.connect(db_url, autocommit=True) as watch:
            run = batch.execute("INSERT INTO ttft_reconcile.runs (mode, status) VALUES ('backfill', 'succeeded')"
                                " RETURNING id").fetchone()
            assert run is not None
            batch.execute(  # a batch in flight: its correction written, not yet committed
                "INSERT INTO ttft_reconcile.corrections (request_id, start_time, run_id, policy,"
                " new_completion_start_time, ttft_ms) VALUES ('r1', '2026-03-10', %s, 'first_chunk', '2026-03-10', 1)",
                run)
            worker = threading.Thread(target=uninstall)
            worker.start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()").fetchone()[0]:  # type: ignore[index]
                time.sleep(0.05)
            assert not outcome, "the uninstall did not wait for the batch"
            batch.commit()
            worker.join(30)
        assert isinstance(outcome[0], UsageError) and "1 corrections are still applied" in str(outcome[0])
        with psycopg.connect(db_url) as conn:
            # a live job (a heartbeat just now) holds the uninstall off too
            conn.execute("DELETE FROM ttft_reconcile.corrections")
            conn.execute("INSERT INTO ttft_reconcile.runs (mode, heartbeat_at) VALUES ('run', now())")
        try:
            downgrade_to_base(engine)
        except UsageError as error:
            assert "1 run(s) of the job are working" in str(error)
        else:
            raise AssertionError("uninstalled under a running job")
        downgrade_to_base(engine, force=True)
        with psycopg.connect(db_url) as conn:
            assert conn.execute("SELECT to_regnamespace('ttft_reconcile')").fetchone() == (None,)
    finally:
        engine.dispose()
