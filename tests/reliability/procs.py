"""Starting the real console script, watching its database session, and stopping it hard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.reliability.dataset import job_backends, mid_transaction

SCRIPT = str(Path(sys.executable).parent / "ttft-reconcile")
OBSERVER = "ttft-test-observer"


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`ttft-reconcile ARGS` as a real process (own session, so no signal reaches us)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TTFT_RECONCILE_DATABASE_URL", None)
    return subprocess.Popen([SCRIPT, *args], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def run(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = spawn(*args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def observer(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SELECT set_config('application_name', %s, false)", (OBSERVER,))
    return conn


def count(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def wait_for(predicate: Callable[[], bool], *, timeout: float, proc: subprocess.Popen[str] | None = None,
             interval: float = 0.005) -> bool:
    """Poll until `predicate` holds (True), the process exits or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(interval)
    return False


@dataclass
class KillRecord:
    """One SIGKILL: the job's sessions as seen while the process was frozen, and the audit counts."""

    backends: list[dict[str, Any]]
    mid_transaction: bool
    updated_spend_logs: bool
    committed_before: int
    committed_after: int


def freeze_inspect_kill(proc: subprocess.Popen[str], conn: psycopg.Connection[Any], database: str,
                        audit_sql: str) -> KillRecord:
    """SIGSTOP (so nothing moves), read pg_stat_activity, SIGKILL, wait for the server to drop the session."""
    os.kill(proc.pid, signal.SIGSTOP)
    backends = job_backends(conn, database)
    before = count(conn, audit_sql)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    pids = {b["pid"] for b in backends}
    wait_for(lambda: not pids & {b["pid"] for b in job_backends(conn, database)}, timeout=30)
    return KillRecord(backends, mid_transaction(backends), any(b["updated_spend_logs"] for b in backends),
                      before, count(conn, audit_sql))


AUDIT_SQL = "SELECT count(*) FROM ttft_reconcile.corrections"
