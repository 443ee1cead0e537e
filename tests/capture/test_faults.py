"""The database stalls, dies and comes back under bursts of concurrent streams through real LiteLLM.

The client's stream comes first: every client gets the bytes an unpatched stream gives, the
trace queue never holds more than its size, every lost trace is counted under its reason, each
warning is logged at most once a minute, and recording resumes once the database answers again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import pytest

from tests.capture import helpers
from tests.capture.faulty_proxy import FaultyProxy
from tests.capture.helpers import run
from tests.capture.upstreams import MockUpstream, fixed_plan
from ttft_reconcile.capture.sink import RECONNECT_AFTER_S

pytestmark = pytest.mark.capture

QUEUE = 8
BATCH = 4  # traces the writer holds while it writes: memory is bounded by QUEUE + BATCH
BURST = 48
REASONS = ("queue_full", "db_error")


async def _stream(litellm: Any, upstream: MockUpstream) -> bytes:
    """What one client received, as bytes (how a burst's chunks coalesce varies with the load)."""
    return b"".join(await helpers.consume(litellm, upstream, "messages"))


async def _burst(litellm: Any, upstream: MockUpstream, n: int) -> list[bytes]:
    return list(await asyncio.gather(*(_stream(litellm, upstream) for _ in range(n))))


def _dropped() -> dict[str, float]:
    from ttft_reconcile.capture import metrics

    return {reason: metrics.sample("ttft_capture_traces_dropped_total", {"reason": reason}) for reason in REASONS}


def _written() -> float:
    from ttft_reconcile.capture import metrics

    return metrics.sample("ttft_capture_traces_written_total")


def _live_recorders() -> int:
    from ttft_reconcile.capture.recorder import StreamRecorder

    gc.collect()
    return sum(isinstance(obj, StreamRecorder) for obj in gc.get_objects())


def test_stalled_then_dead_database_under_bursts_then_recovery(
    litellm: Any, upstream: MockUpstream, plan: Any, db_url: str, capture_on: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    from ttft_reconcile import capture

    plan(fixed_plan())
    reference = run(_stream(litellm, upstream))
    assert reference.count(b"event: ") >= 5
    caplog.set_level(logging.WARNING, logger="ttft_reconcile.capture")
    with FaultyProxy(db_url) as proxy:
        capture_on(proxy.url(), queue_size=QUEUE, batch_size=BATCH, flush_interval=0.05)
        assert run(_stream(litellm, upstream)) == reference
        assert capture.flush(10)
        recorded = len(helpers.traces(db_url))
        assert recorded == 1
        time.sleep(RECONNECT_AFTER_S + 0.5)  # past the writer's reconnect pause: a stall now hangs its connect

        # 1. stalled: the writer hangs in connect; the queue fills, the rest are dropped
        proxy.set_mode("stall")
        before, written_before = _dropped(), _written()
        outputs = run(_burst(litellm, upstream, BURST))
        assert all(out == reference for out in outputs)  # byte-identical, every one
        # bounded: besides the queue and the writer's batch, no finished stream's recorder survives
        assert _live_recorders() <= QUEUE + BATCH, _live_recorders()
        stalled = {r: _dropped()[r] - before[r] for r in REASONS}
        # all but what the queue and the writer's batch hold were dropped at once, and counted
        assert stalled["queue_full"] >= 1 and sum(stalled.values()) >= BURST - QUEUE - BATCH, stalled

        # 2. down: connections refused; whatever waits is dropped as db_error, never raised
        proxy.set_mode("down")
        outputs = run(_burst(litellm, upstream, BURST // 2))
        assert all(out == reference for out in outputs)
        assert capture.flush(30)
        lost = {r: _dropped()[r] - before[r] for r in REASONS}
        # every stream of both bursts is accounted for: written before the stall hit, or dropped
        accounted = sum(lost.values()) + (_written() - written_before)
        assert accounted == BURST + BURST // 2, (lost, _written() - written_before)
        assert lost["db_error"] >= 1, lost

        # 3. back: recording resumes (the writer retries its connection every few seconds)
        proxy.set_mode("pass")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(helpers.traces(db_url)) == recorded:
            assert run(_stream(litellm, upstream)) == reference
            assert capture.flush(15)
        assert len(helpers.traces(db_url)) > recorded, "recording did not resume"

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("queue full" in w for w in warnings) == 1, warnings  # many drops, one line a minute
    assert sum("cannot connect" in w or "writing" in w for w in warnings) <= 2, warnings
    print(f"\nfaults: bursts {BURST}+{BURST // 2} streams, queue {QUEUE}, dropped {lost},"
          f" {len(warnings)} warning line(s)")
