"""Backfill slices claimed by several real processes: every row once, nothing lost."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import psycopg

from tests.factories import broken_stream, insert_spend, insert_trace, ms
from ttft_reconcile import job
from ttft_reconcile.dburl import parse_database_url
from ttft_reconcile.settings import JobSettings


def test_two_worker_processes_share_the_slices(db_url: str) -> None:
    rows = []
    with psycopg.connect(db_url) as conn:
        for day in range(4):
            for i in range(15):
                start = datetime(2026, 3, 1 + day, 1 + i)
                row = broken_stream(start, request_id=str(uuid.uuid4()))
                rows.append(row)
                insert_spend(conn, [row])
                insert_trace(conn, row.request_id, request_start=start, first_chunk=start + ms(250))
    settings = JobSettings(database=parse_database_url(db_url), batch_size=4, slice_size=timedelta(hours=12))
    summary = job.backfill(settings, datetime(2026, 3, 1, tzinfo=timezone.utc),
                           datetime(2026, 3, 5, tzinfo=timezone.utc), workers=2)
    assert summary.outcomes["repaired"] == 60
    assert len(summary.worker_run_ids) == 2
    # every worker's run is named, with the one rollback that undoes them all
    runs = ", ".join(map(str, summary.worker_run_ids))
    assert f"worker runs {runs}; `rollback --since 2026-03-01T00:00:00+00:00" in summary.message
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT request_id) FROM ttft_reconcile.corrections"
                            ).fetchone() == (60, 60)
        slices = conn.execute("SELECT status, count(*), count(DISTINCT worker) FROM ttft_reconcile.backfill_slices"
                              " GROUP BY status").fetchall()
        assert slices[0][0] == "done" and slices[0][1] == 8 and len(slices) == 1
        workers_used = conn.execute("SELECT count(DISTINCT run_id) FROM ttft_reconcile.corrections").fetchone()
        assert workers_used is not None and 1 <= workers_used[0] <= 2
        finished = conn.execute("SELECT finished_at IS NOT NULL FROM ttft_reconcile.backfills").fetchone()
        assert finished == (True,)
    again = job.backfill(settings, datetime(2026, 3, 1, tzinfo=timezone.utc),
                         datetime(2026, 3, 5, tzinfo=timezone.utc), workers=2)
    assert again.candidates == 0
    assert "finished at" in again.message and "--restart redoes it" in again.message


def test_workers_stop_when_the_parent_is_killed(db_url: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    with psycopg.connect(db_url) as conn:
        for i in range(40):
            start = datetime(2026, 3, 1 + i % 4, 1 + i // 4)
            row = broken_stream(start, request_id=str(uuid.uuid4()))
            insert_spend(conn, [row])
            insert_trace(conn, row.request_id, request_start=start, first_chunk=start + ms(250))
    script = str(Path(sys.executable).parent / "ttft-reconcile")
    parent = subprocess.Popen(
        [script, "backfill", "--since", "2026-03-01", "--until", "2026-03-05", "--workers", "2",
         "--batch-size", "1", "--max-rows-per-second", "2", "--database-url", db_url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(workers) < 2:
            workers = psutil.Process(parent.pid).children(recursive=True)
            workers = [w for w in workers if "python" in " ".join(w.cmdline()).lower()]
            time.sleep(0.2)
        assert len(workers) >= 2, "the workers did not start"
        with psycopg.connect(db_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                done = conn.execute("SELECT count(*) FROM ttft_reconcile.corrections").fetchone()
                if done and done[0] >= 1:
                    break
                time.sleep(0.1)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"orphaned workers kept running: {[p.pid for p in alive]}"
    finally:
        # Only this test's processes: the session's Pushgateway and Postgres are pytest's children too.
        parent.kill()
        for proc in workers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    with psycopg.connect(db_url) as conn:
        corrected = conn.execute("SELECT count(*) FROM ttft_reconcile.corrections").fetchone()
        running = conn.execute("SELECT count(*) FROM ttft_reconcile.backfill_slices WHERE status = 'running'"
                               ).fetchone()
    assert corrected is not None and corrected[0] < 40  # they stopped before finishing everything
    assert running == (0,)  # each stopped worker handed its slice back
