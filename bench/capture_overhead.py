"""What the capture costs the proxy's event loop (a benchmark, not a test).

    python bench/capture_overhead.py              # relay only (no LiteLLM needed)
    <capture venv>/bin/python bench/capture_overhead.py --litellm   # also through real LiteLLM

Measures CPU time on the event-loop thread (`time.thread_time`), patched minus unpatched,
interleaved in the same run, and prints per-chunk cost (µs) and added blocking per stream (ms).
The writer thread's work (parsing, classifying, inserting) runs off the loop and is reported
separately. Targets: < 5 µs per chunk, < 1 ms per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from importlib import metadata
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ttft_reconcile.capture import CaptureOptions, _Capture, hooks  # noqa: E402
from ttft_reconcile.capture.recorder import build_row  # noqa: E402


def anthropic_chunks(n: int) -> list[bytes]:
    start = b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_b","usage":{}}}\n\n'
    delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             b'"delta":{"type":"text_delta","text":"some words here "}}\n\n')
    stop = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    return [start] + [delta] * (n - 2) + [stop]


class LoggingObject:
    def __init__(self) -> None:
        self.litellm_call_id = "bench"
        self.start_time = datetime.now()
        self.completion_start_time = None
        self.call_type = "anthropic_messages"
        self.model = "claude"
        self.model_call_details: dict[str, Any] = {"api_call_start_time": datetime.now()}


async def source(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def drain(iterator: AsyncIterator[bytes]) -> int:
    n = 0
    async for _ in iterator:
        n += 1
    return n


def loop_cpu(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, int]]) -> tuple[float, int]:
    before = time.thread_time()
    n = loop.run_until_complete(make())
    return time.thread_time() - before, n


def relay_only(streams: int, chunks_per_stream: int, rounds: int) -> None:
    loop = asyncio.new_event_loop()
    chunks = anthropic_chunks(chunks_per_stream)
    finished: list[Any] = []
    capture = _Capture(None, CaptureOptions(), "bench")
    capture.finish = lambda rec, outcome, exposed=None: finished.append(rec)  # type: ignore[method-assign]

    async def plain() -> int:
        return sum([await drain(source(chunks)) for _ in range(streams)])

    async def patched() -> int:
        return sum([await drain(hooks.observe(source(chunks), capture, LoggingObject(), "/v1/messages", False))
                    for _ in range(streams)])

    diffs = []
    for _ in range(rounds):
        base, n = loop_cpu(loop, plain)
        with_capture, _ = loop_cpu(loop, patched)
        diffs.append((with_capture - base) / n)
    per_chunk = statistics.median(diffs) * 1e6
    writer_before = time.thread_time()
    for rec in finished[: streams]:
        build_row(rec)
    writer = (time.thread_time() - writer_before) / streams
    print(json.dumps({
        "benchmark": "relay (hooks.observe over an in-memory stream)",
        "streams_per_round": streams, "chunks_per_stream": chunks_per_stream, "rounds": rounds,
        "loop_us_per_chunk_added": round(per_chunk, 3),
        "loop_ms_per_stream_added": round(per_chunk * chunks_per_stream / 1000, 4),
        "writer_thread_ms_per_stream": round(writer * 1000, 3),
        "writer_thread_us_per_chunk": round(writer / chunks_per_stream * 1e6, 3),
    }))
    loop.close()


async def quiesce(before: set[asyncio.Task[Any]], limit_s: float = 2.0) -> None:
    """Wait until the tasks started since `before` (bar long-lived workers) are done."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        pending = [t for t in asyncio.all_tasks() if t not in before and t is not asyncio.current_task()]
        if not pending:
            return
        await asyncio.sleep(0.005)


def through_litellm(streams: int, chunks_per_stream: int, rounds: int) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    from tests.capture.upstreams import MockUpstream, anthropic_timetable
    from ttft_reconcile import capture

    server = MockUpstream(lambda path, body: (anthropic_timetable("msg_bench", gap=0.0003, first_delay=0.0,
                                                                   content_delay=0.0,
                                                                   n_deltas=chunks_per_stream - 6), "ok"),
                          header_delay=0.0)
    loop = asyncio.new_event_loop()

    before: set[asyncio.Task[Any]] = set()

    async def streams_once() -> int:
        before.clear()
        before.update(asyncio.all_tasks())
        n = 0
        for _ in range(streams):
            response = await litellm.anthropic.messages.acreate(
                model="anthropic/claude-sonnet-4-5-20250929", messages=[{"role": "user", "content": "hi"}],
                max_tokens=10, stream=True, api_base=server.base, api_key="x")
            async for _chunk in response:
                n += 1
        await quiesce(before)  # LiteLLM's end-of-stream logging tasks belong to this round
        return n

    loop.run_until_complete(streams_once())  # warm-up
    base_runs, patched_runs, counts = [], [], []
    for _ in range(rounds):
        base, n = loop_cpu(loop, streams_once)
        capture.install(None)
        with_capture, m = loop_cpu(loop, streams_once)
        capture.flush(10)
        capture.uninstall()
        base_runs.append(base / n)
        patched_runs.append(with_capture / m)
        counts.append((n, m))
    base_us = statistics.median(base_runs) * 1e6
    diffs = sorted((p - b) * 1e6 for p, b in zip(patched_runs, base_runs, strict=True))
    added_us = statistics.median(diffs)
    spread = (diffs[len(diffs) // 4], diffs[(3 * len(diffs)) // 4])
    chunks = counts[0][0] / streams
    print(json.dumps({
        "benchmark": f"litellm {metadata.version('litellm')} "
                     "anthropic /v1/messages via chunk_processor (mock upstream, 0.3 ms between chunks)",
        "streams_per_round": streams, "client_chunks_per_stream": chunks, "rounds": rounds,
        "loop_us_per_chunk_unpatched": round(base_us, 2),
        "loop_us_per_chunk_added": round(added_us, 3),
        "loop_us_per_chunk_added_iqr": [round(v, 2) for v in spread],
        "added_ratio": round(added_us / base_us, 4),
        "loop_ms_per_stream_added": round(added_us * chunks / 1000, 4),
    }))
    server.close()
    loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=200, help="chunks per stream")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--litellm", action="store_true", help="also measure through LiteLLM's chunk_processor")
    args = parser.parse_args()
    relay_only(args.streams, args.chunks, args.rounds)
    if args.litellm:
        through_litellm(args.streams, args.chunks, args.rounds)


if __name__ == "__main__":
    main()
