"""The database stopped and started under a running backfill, and real password failures.

Both need a server this module owns: tests/reliability/cluster.py starts one from Debian's
binaries with scram-sha-256 / md5 authentication for ordinary roles.
"""

from __future__ import annotations

import psycopg
import pytest

from tests import services
from tests.reliability.cluster import Cluster
from tests.reliability.dataset import audit_agrees, correction_rows, seed, spend_rows
from tests.reliability.procs import AUDIT_SQL, count, observer, run, spawn, wait_for

WINDOW = ["--since", "2026-03-10", "--until", "2026-03-13", "--batch-size", "15", "--slice-lease", "1s"]
FINISHED = "SELECT count(*) FROM ttft_reconcile.backfills WHERE finished_at IS NOT NULL"


def _seeded_pair(cluster: Cluster) -> tuple[str, str]:
    template = services.clone_database(cluster.admin_url, services.ensure_template(cluster.admin_url, "new"))
    with psycopg.connect(cluster.url(template)) as conn:
        seed(conn, 600, seed_value=21)
    return (cluster.url(services.clone_database(cluster.admin_url, template)),
            cluster.url(services.clone_database(cluster.admin_url, template)))


@pytest.mark.slow
def test_database_restart_mid_backfill_exits_1_with_one_line_and_the_next_run_finishes(cluster: Cluster) -> None:
    url, reference_url = _seeded_pair(cluster)
    reference = run("backfill", *WINDOW, "--database-url", reference_url)
    assert reference.returncode == 0, reference.stderr
    proc = spawn("backfill", *WINDOW, "--database-url", url, "--json")  # --json: no progress lines
    with observer(url) as conn:
        assert wait_for(lambda: count(conn, AUDIT_SQL) >= 100, timeout=60, proc=proc), proc.communicate()
    cluster.stop("fast")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        cluster.start()
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ttft-reconcile: cannot use the database"), err
    assert "Traceback" not in err
    again = run("backfill", *WINDOW, "--database-url", url, "--json")
    assert again.returncode == 0, again.stderr
    with psycopg.connect(url) as conn, psycopg.connect(reference_url) as ref:
        assert count(conn, FINISHED) == 1, "the next run should finish the backfill"
        assert audit_agrees(conn) == []
        assert spend_rows(conn) == spend_rows(ref)
        assert correction_rows(conn) == correction_rows(ref)


@pytest.mark.parametrize("method", ["scram", "md5"])
def test_wrong_password_exits_1_and_is_never_printed(cluster: Cluster, method: str) -> None:
    role = f"{method}_role"
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"SET password_encryption = '{'md5' if method == 'md5' else 'scram-sha-256'}'")
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'Right-Pa55word'")
        stored = conn.execute("SELECT left(rolpassword, 5) FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
    assert stored is not None and stored[0].lower().startswith("md5" if method == "md5" else "scram")
    wrong = cluster.url("postgres", role, "Wr0ng-S3cret%40x")
    for args, env in ((["--database-url", wrong], {}), ([], {"DATABASE_URL": wrong})):
        result = run("run", *args, env=env)
        assert result.returncode == 1
        output = result.stdout + result.stderr
        assert "password authentication failed" in output
        for fragment in ("Wr0ng-S3cret", "S3cret", "%40x", "Wr0ng"):
            assert fragment not in output
        assert len(result.stderr.strip().splitlines()) == 1
    # the right password passes authentication (the run then fails for want of our schema)
    right = run("run", "--database-url", cluster.url("postgres", role, "Right-Pa55word"))
    assert right.returncode == 1 and "password authentication failed" not in right.stderr
    assert "Right-Pa55word" not in right.stderr


def test_observer_sees_no_leftover_sessions(cluster: Cluster) -> None:
    """After the module's runs, no ttft_reconcile session is left behind on the owned server."""
    with observer(cluster.admin_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'ttft_reconcile%'").fetchone()
    assert left == (0,)
