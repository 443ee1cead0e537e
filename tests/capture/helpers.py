"""Drive real LiteLLM streams against the mock upstreams, and read back what the capture wrote."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg

from tests.capture.conftest import BEDROCK_MODEL, MODEL, RESPONSES_MODEL
from tests.capture.upstreams import MockUpstream

PATHS = ("messages", "bedrock", "responses")
TRACE_SQL = (
    "SELECT litellm_call_id, stream_seq, response_id, route, call_type, provider, first_chunk_at, first_event_at,"
    " first_output_at, first_visible_at, last_chunk_at, chunk_count, event_count, bytes_total, outcome,"
    " stamped_by, event_kinds, request_start_at, api_call_start_at FROM ttft_reconcile.stream_traces"
    " ORDER BY request_start_at, stream_seq"
)
TRACE_KEYS = ("litellm_call_id", "stream_seq", "response_id", "route", "call_type", "provider", "first_chunk_at",
              "first_event_at", "first_output_at", "first_visible_at", "last_chunk_at", "chunk_count",
              "event_count", "bytes_total", "outcome", "stamped_by", "event_kinds", "request_start_at",
              "api_call_start_at")

_loop: asyncio.AbstractEventLoop | None = None


def run(coro: Any) -> Any:
    """One event loop for the whole session (LiteLLM keeps loop-bound workers)."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coro)


async def open_stream(litellm: Any, upstream: MockUpstream, path: str, **extra: Any) -> Any:
    messages = [{"role": "user", "content": "hi"}]
    if path == "messages":
        return await litellm.anthropic.messages.acreate(model=MODEL, messages=messages, max_tokens=50, stream=True,
                                                        api_base=upstream.base, api_key="x", **extra)
    if path == "bedrock":
        return await litellm.anthropic.messages.acreate(
            model=BEDROCK_MODEL, messages=messages, max_tokens=50, stream=True,
            aws_bedrock_runtime_endpoint=upstream.base, aws_access_key_id="AKIAFAKEFAKEFAKE",
            aws_secret_access_key="fake", aws_region_name="us-east-1", **extra)
    if path == "responses":
        return await litellm.aresponses(model=RESPONSES_MODEL, input="hi", stream=True,
                                        api_base=upstream.base + "/v1", api_key="x", **extra)
    raise ValueError(path)


def as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, bytes | bytearray):
        return bytes(chunk)
    return str(chunk.model_dump_json() if hasattr(chunk, "model_dump_json") else chunk).encode()


async def consume(litellm: Any, upstream: MockUpstream, path: str, limit: int | None = None) -> list[bytes]:
    """What a client receives; with `limit`, it disconnects (closes the stream) after that many chunks."""
    stream = await open_stream(litellm, upstream, path)
    out: list[bytes] = []
    try:
        async for chunk in stream:
            out.append(as_bytes(chunk))
            if limit is not None and len(out) >= limit:
                break
    finally:
        closer = getattr(stream, "aclose", None)
        if limit is not None and closer is not None:
            await closer()
    return out


def traces(db_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_url) as conn:
        return [dict(zip(TRACE_KEYS, row, strict=True)) for row in conn.execute(TRACE_SQL)]


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def ms_between(a: datetime, b: datetime) -> float:
    return (a - b).total_seconds() * 1000


def bedrock_first_readable_step(served_steps: list[bytes]) -> int:
    """Index of the step after which LiteLLM can decode the first frame (≤1.92 reads in 1 KiB blocks)."""
    from litellm.llms.bedrock.messages.invoke_transformations import anthropic_claude3_transformation as mod

    if "aiter_bytes(chunk_size" not in inspect.getsource(mod):
        return 0
    for index, total in enumerate(itertools.accumulate(len(s) for s in served_steps)):
        if total >= 1024:
            return index
    return len(served_steps) - 1


JOIN_SQL = """
SELECT s.request_id, t.litellm_call_id, t.stream_seq,
       (t.litellm_call_id = s.request_id) AS by_request_id,
       {by_column} AS by_litellm_call_id_column,
       (t.response_id IS NOT NULL AND t.response_id = s.request_id) AS by_response_id
FROM "LiteLLM_SpendLogs" s
JOIN ttft_reconcile.stream_traces t
  ON t.litellm_call_id = s.request_id OR t.response_id = s.request_id {or_column}
WHERE s.request_id = %s
"""


def join(db_url: str, request_id: str) -> list[dict[str, Any]]:
    """Which of DESIGN.md's three join strategies connect this SpendLogs row to a trace."""
    with psycopg.connect(db_url) as conn:
        has_column = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'LiteLLM_SpendLogs'"
            " AND column_name = 'litellm_call_id'").fetchone() is not None
        sql = JOIN_SQL.format(
            by_column="(t.litellm_call_id = s.litellm_call_id)" if has_column else "false",
            or_column="OR t.litellm_call_id = s.litellm_call_id" if has_column else "")
        rows = conn.execute(sql, (request_id,)).fetchall()
    keys = ("request_id", "litellm_call_id", "stream_seq", "by_request_id", "by_litellm_call_id_column",
            "by_response_id")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def strategies(match: dict[str, Any]) -> list[str]:
    return [name for name in ("by_request_id", "by_litellm_call_id_column", "by_response_id") if match[name]]


def warm(litellm: Any, upstream: MockUpstream) -> Iterator[None]:
    for path in PATHS:  # first calls pay for imports and client setup
        run(consume(litellm, upstream, path))
    yield None
