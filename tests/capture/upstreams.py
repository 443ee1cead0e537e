"""Mock LLM providers on 127.0.0.1: Anthropic SSE, OpenAI Responses SSE, Bedrock event-stream.

Each response follows a timetable of (delay in seconds, bytes) steps written as separate
HTTP chunks, and records the wall clock (`time.time()`, UTC epoch seconds) right before
each write, so tests can compare the capture's instants with what the server really sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Step = tuple[float, bytes]


@dataclass
class Served:
    """What the server did for one request."""

    path: str
    body: dict[str, object]
    sent_at: list[float] = field(default_factory=list)  # epoch seconds, one per step written
    steps: list[bytes] = field(default_factory=list)


def sse(event: str | None, data: object) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def anthropic_events(message_id: str, n_deltas: int = 5, model: str = "claude-sonnet-4-5-20250929") -> list[bytes]:
    """A well-formed Anthropic Messages stream, one SSE event per element."""
    usage = {"input_tokens": 12, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    events = [
        sse("message_start", {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}}),
        sse("ping", {"type": "ping"}),
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}}),
    ]
    for i in range(n_deltas):
        events.append(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": f"word{i} "}}))
    events += [
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {"output_tokens": n_deltas}}),
        sse("message_stop", {"type": "message_stop"}),
    ]
    return events


def anthropic_timetable(message_id: str, gap: float = 0.02, first_delay: float = 0.08,
                        content_delay: float = 0.12, n_deltas: int = 5) -> list[Step]:
    """message_start+ping together after `first_delay`; the first text delta `content_delay` later."""
    ev = anthropic_events(message_id, n_deltas)
    steps: list[Step] = [(first_delay, ev[0] + ev[1]), (content_delay, ev[2] + ev[3])]
    steps += [(gap, e) for e in ev[4 : 3 + n_deltas]]
    steps.append((gap, b"".join(ev[3 + n_deltas :])))
    return steps


def responses_timetable(response_id: str, model: str = "gpt-4o", gap: float = 0.02,
                        first_delay: float = 0.08, content_delay: float = 0.12,
                        created_at: int | None = None) -> list[Step]:
    """A Responses API stream: created / in_progress, then text deltas, then completed."""
    created = int(time.time()) if created_at is None else created_at
    base = {"id": response_id, "object": "response", "created_at": created, "status": "in_progress",
            "model": model, "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "temperature": 1.0, "top_p": 1.0, "text": {"format": {"type": "text"}}, "usage": None}
    item = {"id": "msg_item_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    seq = iter(range(1000))
    steps: list[Step] = [
        (first_delay, sse("response.created", {"type": "response.created", "sequence_number": next(seq),
                                               "response": base})
         + sse("response.in_progress", {"type": "response.in_progress", "sequence_number": next(seq),
                                        "response": base})),
        (content_delay, sse("response.output_item.added", {"type": "response.output_item.added",
                                                           "sequence_number": next(seq), "output_index": 0,
                                                           "item": item})
         + sse("response.content_part.added", {"type": "response.content_part.added", "sequence_number": next(seq),
                                               "item_id": "msg_item_1", "output_index": 0, "content_index": 0,
                                               "part": {"type": "output_text", "text": "", "annotations": []}})),
    ]
    words = ["Hello", " there", " friend"]
    for word in words:
        steps.append((gap, sse("response.output_text.delta", {
            "type": "response.output_text.delta", "sequence_number": next(seq), "item_id": "msg_item_1",
            "output_index": 0, "content_index": 0, "delta": word, "logprobs": []})))
    done = dict(base, status="completed", output=[{
        "id": "msg_item_1", "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": "".join(words), "annotations": []}]}],
        usage={"input_tokens": 9, "output_tokens": 3, "total_tokens": 12,
               "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
    steps.append((gap, sse("response.completed", {"type": "response.completed", "sequence_number": next(seq),
                                                  "response": done})))
    return steps


def _crc(data: bytes) -> int:
    return binascii.crc32(data) & 0xFFFFFFFF


def eventstream_frame(event: dict[str, object]) -> bytes:
    """One AWS event-stream message carrying an Anthropic event, as Bedrock invoke-with-response-stream sends."""
    payload = json.dumps({"bytes": base64.b64encode(json.dumps(event).encode()).decode()}).encode()
    headers = b""
    for name, value in ((":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")):
        raw_name, raw_value = name.encode(), value.encode()
        headers += struct.pack(">B", len(raw_name)) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", _crc(prelude))
    message = prelude + headers + payload
    return message + struct.pack(">I", _crc(message))


def bedrock_timetable(message_id: str, gap: float = 0.02, first_delay: float = 0.08,
                      content_delay: float = 0.12, n_deltas: int = 4) -> list[Step]:
    """Bedrock's framing of an Anthropic stream: one frame per event."""
    events = [json.loads(e.split(b"data: ", 1)[1]) for e in anthropic_events(message_id, n_deltas)]
    events = [e for e in events if e["type"] != "ping"]
    events[-1]["amazon-bedrock-invocationMetrics"] = {"inputTokenCount": 12, "outputTokenCount": n_deltas,
                                                     "invocationLatency": 300, "firstByteLatency": 80}
    steps: list[Step] = [(first_delay, eventstream_frame(events[0])), (content_delay, eventstream_frame(events[1])
                                                                        + eventstream_frame(events[2]))]
    steps += [(gap, eventstream_frame(e)) for e in events[3:]]
    return steps


Planner = Callable[[str, dict[str, object]], tuple[list[Step], str]]  # (path, body) -> (steps, mode)


class MockUpstream:
    """An HTTP/1.1 server in its own thread and event loop; `plan` decides each response.

    mode: "ok" (end the chunked body normally), "cut" (drop the connection after the steps) or
    "stall" (send nothing more: the client's read timeout ends the stream).
    """

    def __init__(self, plan: Planner, header_delay: float = 0.03) -> None:
        self.plan = plan
        self.header_delay = header_delay
        self.served: list[Served] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.base = f"http://127.0.0.1:{self.port}"

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                body = json.loads(raw) if raw else {}
                await self._respond(writer, path, body)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, path: str, body: dict[str, object]) -> None:
        steps, mode = self.plan(path, body)
        served = Served(path, body)
        self.served.append(served)
        await asyncio.sleep(self.header_delay)
        ctype = "application/vnd.amazon.eventstream" if "invoke-with-response-stream" in path else "text/event-stream"
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ntransfer-encoding: chunked\r\n"
                     "cache-control: no-cache\r\n\r\n".encode())
        await writer.drain()
        for delay, data in steps:
            await asyncio.sleep(delay)
            served.sent_at.append(time.time())
            served.steps.append(data)
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()
        if mode == "cut":
            writer.transport.abort()
            raise ConnectionError("cut")
        if mode == "stall":
            await asyncio.sleep(60)  # the client's read timeout fires first
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def default_plan(path: str, body: dict[str, object]) -> tuple[list[Step], str]:
    """Anthropic for /v1/messages, Responses for /responses, Bedrock for invoke-with-response-stream."""
    return planned(path, f"{time.time_ns():x}", "ok")


def planned(path: str, stamp: str, mode: str, cut_after: int | None = None,
            created_at: int | None = None) -> tuple[list[Step], str]:
    """The stream for `path` with ids built from `stamp`; "cut" drops the connection after `cut_after` steps."""
    if "invoke-with-response-stream" in path:
        steps = bedrock_timetable(f"msg_bdrk_{stamp}")
    elif path.endswith("/responses"):
        steps = responses_timetable(f"resp_mock_{stamp}", created_at=created_at)
    else:
        steps = anthropic_timetable(f"msg_mock_{stamp}")
    return (steps[:cut_after] if cut_after is not None else steps), mode


def fixed_plan(mode: str = "ok", cut_after: int | None = None) -> Planner:
    """The same bytes for every request (for byte-identical comparisons)."""
    return lambda path, body: planned(path, "fixed", mode, cut_after, created_at=1_700_000_000)
