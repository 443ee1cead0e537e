"""SIGKILL at seeded points of a multi-batch backfill, and SIGTERM / Ctrl-C: nothing lost, nothing doubled.

Each killed process is frozen with SIGSTOP first, so pg_stat_activity shows exactly what its
session was doing when SIGKILL landed. The resumed result is compared row by row with an
uninterrupted run on an identical copy of the database.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests import services
from tests.reliability.conftest import Clone
from tests.reliability.dataset import Seeded, audit_agrees, correction_rows, job_backends, spend_rows
from tests.reliability.procs import KillRecord, count, freeze_inspect_kill, observer, run, spawn, wait_for

WINDOW = ["--since", "2026-03-10", "--until", "2026-03-13"]
AUDIT = "SELECT count(*) FROM ttft_reconcile.corrections"
KILL_SEED = 20261203
KILL_POINTS = 24
BATCH = "10"


# The seeded campaign paces the job (about one 10-row batch per 50 ms): its kill points must land
# before the backfill ends, however fast the machine or the job's batch statement is.
PACE = ["--max-rows-per-second", "200"]


def _backfill(url: str, *extra: str) -> list[str]:
    return ["backfill", *WINDOW, "--batch-size", BATCH, "--slice-lease", "1s", "--database-url", url, *extra]


def _finished(conn: psycopg.Connection[object]) -> bool:
    return count(conn, "SELECT count(*) FROM ttft_reconcile.backfills WHERE finished_at IS NOT NULL") == 1


def _reference(clone: Clone) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    url = clone()
    done = run(*_backfill(url))
    assert done.returncode == 0, done.stderr
    with psycopg.connect(url) as conn:
        return spend_rows(conn), correction_rows(conn)


def _assert_same_as_reference(url: str, reference: tuple[list[tuple[object, ...]], list[tuple[object, ...]]]) -> None:
    with psycopg.connect(url) as conn:
        assert audit_agrees(conn) == []
        spend, audit = spend_rows(conn), correction_rows(conn)
    assert len(audit) == len(set(audit)), "duplicate corrections"
    assert len(spend) == len(reference[0])
    mismatched = [a for a, b in zip(spend, reference[0], strict=True) if a != b]
    assert mismatched == [], f"{len(mismatched)} SpendLogs rows differ from the reference"
    assert audit == reference[1]


@pytest.mark.slow
def test_sigkill_at_seeded_points_then_resume_matches_reference(
    seeded: Callable[[int, int], tuple[Seeded, Clone]],
) -> None:
    info, clone = seeded(1000, 7)
    reference = _reference(clone)
    repairs = len(reference[1])
    assert repairs > 400
    url = clone()
    database = services.database_name(url)
    rng = random.Random(KILL_SEED)
    special = rng.sample(range(KILL_POINTS), 10)
    startup_kills, update_kills = set(special[:4]), set(special[4:])
    targets = iter(sorted(rng.sample(range(1, repairs * 2 // 3), KILL_POINTS - len(startup_kills))))
    records: list[KillRecord] = []
    with observer(url) as conn:
        for point in range(KILL_POINTS):
            proc = spawn(*_backfill(url, *PACE))
            if point in startup_kills:
                delay = rng.uniform(0.05, 1.0)  # start-up, preparation, first claims
                wait_for(lambda: False, timeout=delay, proc=proc)
            else:
                goal = max(next(targets), count(conn, AUDIT) + 1)

                def reached(goal: int = goal) -> bool:
                    return count(conn, AUDIT) >= goal

                wait_for(reached, timeout=60, proc=proc)
                if point in update_kills:  # right after a batch's guarded UPDATE, before its commit
                    wait_for(lambda: any(b["updated_spend_logs"] for b in job_backends(conn, database)),
                             timeout=10, proc=proc, interval=0)
                else:
                    time.sleep(rng.uniform(0, 0.06))
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"kill point {point} came too late: the backfill finished ({count(conn, AUDIT)}"
                                     f" corrections, {[r.committed_after for r in records]}): {out} {err}")
            record = freeze_inspect_kill(proc, conn, database, AUDIT)
            records.append(record)
            if record.mid_transaction:
                # the open batch died with the process: nothing it wrote is visible
                assert record.committed_after == record.committed_before
            assert audit_agrees(conn) == [], f"after kill point {point}"
        resumes = 0
        while not _finished(conn):
            resumes += 1
            assert resumes == 1, "one re-issued backfill should finish the work"
            done = run(*_backfill(url))
            assert done.returncode == 0, done.stderr
        runs = Counter(r[0] for r in conn.execute("SELECT coalesce(status, 'none') FROM ttft_reconcile.runs"))
    _assert_same_as_reference(url, reference)
    mid = sum(r.mid_transaction for r in records)
    mid_after_update = sum(r.mid_transaction and r.updated_spend_logs for r in records)
    states = Counter(
        next((f"{b['state']}:{b['application_name'] or '-'}" for b in r.backends), "no session") for r in records
    )
    print(f"\nkill points: {len(records)} (seed {KILL_SEED}); mid-transaction: {mid}"
          f" ({mid_after_update} after the guarded UPDATE ran); sessions at kill: {dict(states)};"
          f" resumes to finish: {resumes}; runs by status: {dict(runs)};"
          f" rows compared: {info.rows} SpendLogs, {repairs} corrections")
    assert len(records) >= 20
    assert mid >= 5, f"only {mid} kills landed in an open transaction"
    assert mid_after_update >= 1, "no kill landed between a batch's UPDATE and its commit"


def _hold_row_lock(url: str, request_id: str) -> psycopg.Connection[object]:
    """A LiteLLM-like writer holding a row lock, so the job's UPDATE waits mid-transaction."""
    holder = psycopg.connect(url)
    holder.execute('SELECT 1 FROM "LiteLLM_SpendLogs" WHERE request_id = %s FOR UPDATE', (request_id,))
    return holder


def _row_in_later_batch(url: str) -> str:
    """A repairable row a few batches into the window (its trace's first chunk is within bounds)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            'SELECT s.request_id FROM "LiteLLM_SpendLogs" s JOIN ttft_reconcile.stream_traces t'
            " ON t.litellm_call_id IN (s.request_id, s.litellm_call_id)"
            ' WHERE s."completionStartTime" = s."endTime" AND (t.first_chunk_at AT TIME ZONE \'UTC\')'
            ' BETWEEN s."startTime" AND s."endTime" - interval \'2 ms\''
            " AND NOT EXISTS (SELECT 1 FROM ttft_reconcile.stream_traces o WHERE o.response_id = s.request_id"
            " AND o.litellm_call_id <> t.litellm_call_id)"
            ' ORDER BY s."startTime" OFFSET 20 LIMIT 1'
        ).fetchone()
    assert row is not None
    return str(row[0])


def _blocked_mid_batch(url: str, proc_args: list[str]) -> tuple[subprocess.Popen[str], psycopg.Connection[object], int]:
    target = _row_in_later_batch(url)
    holder = _hold_row_lock(url, target)
    proc = spawn(*proc_args)
    with observer(url) as conn:
        blocked = wait_for(
            lambda: any(b["wait"] == "Lock" and b["application_name"] == "ttft_reconcile"
                        for b in job_backends(conn, services.database_name(url))),
            timeout=60, proc=proc,
        )
        assert blocked, proc.communicate()[1]
        committed = count(conn, AUDIT)
    assert committed >= 1
    return proc, holder, committed


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_one_signal_mid_batch_commits_that_batch_then_exits_130(
    seeded: Callable[[int, int], tuple[Seeded, Clone]], signum: signal.Signals
) -> None:
    _, clone = seeded(150, 11)
    reference = _reference(clone)
    url = clone()
    proc, holder, committed = _blocked_mid_batch(url, _backfill(url, "--lock-timeout", "60s"))
    os.kill(proc.pid, signum)
    time.sleep(0.3)  # the job keeps waiting inside its batch; then the writer lets go
    holder.rollback()
    holder.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(f"ttft-reconcile: interrupted by {signum.name} after committing batch"), err
    with observer(url) as conn:
        assert count(conn, AUDIT) > committed, "the open batch should have committed"
        assert audit_agrees(conn) == []
        status = conn.execute("SELECT status FROM ttft_reconcile.runs ORDER BY id DESC LIMIT 1").fetchone()
        assert status == ("interrupted",)
    assert run(*_backfill(url)).returncode == 0
    _assert_same_as_reference(url, reference)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_mid_batch_rolls_back_that_batch_then_exits_130(
    seeded: Callable[[int, int], tuple[Seeded, Clone]], signum: signal.Signals
) -> None:
    _, clone = seeded(150, 12)
    reference = _reference(clone)
    url = clone()
    proc, holder, committed = _blocked_mid_batch(url, _backfill(url, "--lock-timeout", "60s"))
    os.kill(proc.pid, signum)
    time.sleep(0.3)
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=60)
    holder.rollback()
    holder.close()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "rolled back" in lines[-1], err
    with observer(url) as conn:
        assert count(conn, AUDIT) == committed, "the open batch should have rolled back"
        assert audit_agrees(conn) == []
        status = conn.execute("SELECT status FROM ttft_reconcile.runs ORDER BY id DESC LIMIT 1").fetchone()
        assert status == ("interrupted",)
    assert run(*_backfill(url)).returncode == 0
    _assert_same_as_reference(url, reference)


def test_resume_waits_for_a_killed_workers_slice_and_finishes(
    seeded: Callable[[int, int], tuple[Seeded, Clone]],
) -> None:
    """The killed worker's slice still looks alive: the next backfill waits out --slice-lease, then takes it."""
    _, clone = seeded(200, 13)
    reference = _reference(clone)
    url = clone()
    proc = spawn(*_backfill(url))
    with observer(url) as conn:
        assert wait_for(lambda: count(conn, AUDIT) >= 20, timeout=60, proc=proc)
        freeze_inspect_kill(proc, conn, services.database_name(url), AUDIT)
        held = conn.execute("SELECT count(*) FROM ttft_reconcile.backfill_slices WHERE status = 'running'"
                            " AND heartbeat_at > now() - interval '3 seconds'").fetchone()
        assert held == (1,)
        args = _backfill(url, "--log-level", "INFO")
        args[args.index("--slice-lease") + 1] = "6s"
        done = run(*args)
        assert done.returncode == 0, done.stderr
        assert "held by other workers" in done.stderr and "waiting for them" in done.stderr
        assert _finished(conn)
    _assert_same_as_reference(url, reference)


def _pool_workers(parent: int) -> list[int]:
    """The worker processes of `backfill --workers N` (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and "spawn_main" in (entry / "cmdline").read_text():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # not a process, or it just exited
    return sorted(found)


@pytest.mark.slow
def test_sigkilled_pool_worker_fails_the_command_instead_of_hanging(
    seeded: Callable[[int, int], tuple[Seeded, Clone]],
) -> None:
    _, clone = seeded(400, 14)
    reference = _reference(clone)
    url = clone()
    proc = spawn(*_backfill(url, "--workers", "2", "--json", *PACE))  # paced: still working when killed
    with observer(url) as conn:
        assert wait_for(lambda: count(conn, AUDIT) >= 50, timeout=60, proc=proc)
        workers = _pool_workers(proc.pid)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)  # what the OOM killer does
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "died (signal 9)" in lines[0], err
        assert audit_agrees(conn) == []
    again = run(*_backfill(url))
    assert again.returncode == 0, again.stderr
    _assert_same_as_reference(url, reference)


@pytest.mark.slow
def test_sigterm_to_the_pool_parent_stops_every_worker_with_130(
    seeded: Callable[[int, int], tuple[Seeded, Clone]],
) -> None:
    """Kubernetes signals only PID 1: the parent passes the stop on to its workers."""
    _, clone = seeded(400, 15)
    reference = _reference(clone)
    url = clone()
    proc = spawn(*_backfill(url, "--workers", "2", "--json", *PACE))  # paced: still working when signalled
    with observer(url) as conn:
        assert wait_for(lambda: count(conn, AUDIT) >= 50, timeout=60, proc=proc)
        workers = _pool_workers(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted by SIGTERM" in err
        assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}") and
                    "spawn_main" in open(f"/proc/{pid}/cmdline").read()]
        statuses = {r[0] for r in conn.execute("SELECT status FROM ttft_reconcile.runs")}
        assert statuses == {"interrupted"}
        assert audit_agrees(conn) == []
    again = run(*_backfill(url))
    assert again.returncode == 0, again.stderr
    _assert_same_as_reference(url, reference)


@pytest.mark.slow
def test_row_lock_held_past_lock_timeout_fails_that_batch_only(
    seeded: Callable[[int, int], tuple[Seeded, Clone]],
) -> None:
    """A writer holding a row lock longer than --lock-timeout: exit 1, one line, the batch rolled back."""
    _, clone = seeded(150, 16)
    reference = _reference(clone)
    url = clone()
    proc, holder, committed = _blocked_mid_batch(url, _backfill(url, "--lock-timeout", "1s", "--json"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "lock timeout" in lines[0], err
    with observer(url) as conn:
        assert count(conn, AUDIT) == committed
        assert audit_agrees(conn) == []
    holder.rollback()
    holder.close()
    assert run(*_backfill(url)).returncode == 0
    _assert_same_as_reference(url, reference)


@pytest.mark.slow
def test_ctrl_c_on_the_terminal_stops_a_pool_after_committing(
    seeded: Callable[[int, int], tuple[Seeded, Clone]],
) -> None:
    """A terminal's Ctrl-C reaches the whole process group once: it is one stop, not two."""
    _, clone = seeded(400, 17)
    url = clone()
    proc = spawn(*_backfill(url, "--workers", "2", "--json"))
    with observer(url) as conn:
        assert wait_for(lambda: count(conn, AUDIT) >= 30, timeout=60, proc=proc)
        os.killpg(proc.pid, signal.SIGINT)  # spawn() gave the command its own process group
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "after committing batch" in err and "rolled back" not in err, err
        assert audit_agrees(conn) == []
