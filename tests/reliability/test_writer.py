"""A writer inserting LiteLLM-shaped rows and traces (either order) into the window of a running `run`."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from tests.reliability.conftest import Clone
from tests.reliability.dataset import Seeded, audit_agrees, seed
from tests.reliability.procs import AUDIT_SQL, count, observer, run, spawn, wait_for
from ttft_reconcile.timeparse import round_to_millisecond

LOCK_TIMEOUT_S = 1.0


def _insert_row(conn: psycopg.Connection[object], request_id: str, start: datetime, end: datetime) -> None:
    conn.execute(
        'INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, "startTime",'
        ' "endTime", "completionStartTime", model, model_group, custom_llm_provider, api_base)'
        " VALUES (%s, 'anthropic_messages', 'k', 0.001, 10, %s, %s, %s, 'claude-sonnet-4-5', 'claude-sonnet',"
        " 'anthropic', 'http://127.0.0.1:18765/v1/messages')",
        (request_id, start, end, end),
    )


def _insert_trace(conn: psycopg.Connection[object], call_id: str, start: datetime, first: datetime) -> None:
    conn.execute(
        "INSERT INTO ttft_reconcile.stream_traces (litellm_call_id, request_start_at, api_call_start_at,"
        " first_chunk_at, first_event_at, last_chunk_at, chunk_count, event_count, outcome)"
        " VALUES (%s, %s, %s, %s, %s, %s, 3, 3, 'completed') ON CONFLICT DO NOTHING",
        (call_id, start.replace(tzinfo=timezone.utc), start.replace(tzinfo=timezone.utc),
         first.replace(tzinfo=timezone.utc), first.replace(tzinfo=timezone.utc), first.replace(tzinfo=timezone.utc)),
    )


@pytest.mark.slow
def test_concurrent_writer_is_never_blocked_and_the_next_run_misses_nothing(
    seeded: Callable[[int, int], tuple[Seeded, Clone]],
) -> None:
    _, clone = seeded(1, 31)
    url = clone()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with psycopg.connect(url) as conn:
        seed(conn, 400, seed_value=32, start=now - timedelta(hours=20), span=timedelta(hours=19))
    rng = random.Random(33)
    job = spawn("run", "--database-url", url, "--batch-size", "10", "--max-rows-per-second", "150",
                "--lock-timeout", f"{int(LOCK_TIMEOUT_S * 1000)}ms", "--json")
    expected: dict[str, datetime] = {}
    untraced: list[str] = []
    waits: list[float] = []
    orders = {"row first": 0, "trace first": 0, "row only": 0}
    with observer(url) as watch, psycopg.connect(url) as writer:
        wait_for(lambda: count(watch, AUDIT_SQL) > 0, timeout=60, proc=job)
        overlapped = 0
        for _ in range(300):
            request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            start = round_to_millisecond(now - timedelta(seconds=rng.uniform(180, 3000)))
            end = start + timedelta(milliseconds=rng.randrange(300, 9000))
            first = start + (end - start) * rng.uniform(0.05, 0.9)
            order = rng.choice(list(orders))
            orders[order] += 1
            steps = {"row first": ["row", "trace"], "trace first": ["trace", "row"], "row only": ["row"]}[order]
            if order == "row only":
                untraced.append(request_id)
            else:
                expected[request_id] = round_to_millisecond(first)
            for step in steps:  # each insert is its own transaction, as LiteLLM and the capture write
                began = time.monotonic()
                if step == "row":
                    _insert_row(writer, request_id, start, end)
                else:
                    _insert_trace(writer, request_id, start, first)
                writer.commit()
                waits.append(time.monotonic() - began)
            overlapped += job.poll() is None
            time.sleep(rng.uniform(0, 0.01))
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        assert overlapped >= 100, f"only {overlapped} writes overlapped the run"
        # the next run (its lookback covers the late rows) misses nothing
        again = run("run", "--database-url", url, "--lock-timeout", "1s")
        assert again.returncode == 0, again.stderr
        rows = writer.execute('SELECT request_id, "completionStartTime" FROM "LiteLLM_SpendLogs"'
                              " WHERE request_id = ANY(%s)", (list(expected),)).fetchall()
        got: dict[str, datetime] = dict(rows)
        assert got == expected
        untouched = writer.execute('SELECT count(*) FROM "LiteLLM_SpendLogs" WHERE request_id = ANY(%s)'
                                   ' AND "completionStartTime" = "endTime"', (untraced,)).fetchone()
        assert untouched == (len(untraced),)
        assert audit_agrees(writer) == []
    print(f"\nwriter: {len(waits)} inserts ({orders}), {overlapped} rows while the run worked;"
          f" slowest insert {max(waits) * 1000:.1f} ms (lock_timeout {LOCK_TIMEOUT_S * 1000:.0f} ms)")
    assert max(waits) < LOCK_TIMEOUT_S
