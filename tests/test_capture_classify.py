"""Event kinds per DESIGN.md's policy table, and the instants a timeline derives (pure)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from ttft_reconcile.capture.classify import classify
from ttft_reconcile.capture.recorder import StreamContext, StreamRecorder, build_row, to_utc
from ttft_reconcile.capture.sse import SseEvent
from ttft_reconcile.capture.timeline import Timeline
from ttft_reconcile.policies import EVENT_KINDS


def ev(data: object, name: str = "") -> SseEvent:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return SseEvent(name, raw, 0)


def delta(kind: str) -> dict[str, object]:
    return {"type": "content_block_delta", "index": 0, "delta": {"type": kind}}


@pytest.mark.parametrize("data,kind", [
    ({"type": "message_start", "message": {"id": "msg_1"}}, "framing"),
    ({"type": "ping"}, "ping"),
    ({"type": "content_block_start", "index": 0}, "framing"),
    (delta("text_delta"), "visible"),
    (delta("thinking_delta"), "output"),
    (delta("input_json_delta"), "output"),
    (delta("citations_delta"), "output"),
    (delta("signature_delta"), "framing"),
    ({"type": "content_block_stop"}, "framing"),
    ({"type": "message_delta"}, "framing"),
    ({"type": "message_stop"}, "framing"),
    ({"type": "error", "error": {"type": "overloaded_error"}}, "error"),
    ({"type": "response.created", "response": {"id": "resp_1"}}, "framing"),
    ({"type": "response.in_progress"}, "framing"),
    ({"type": "response.output_item.added"}, "framing"),
    ({"type": "response.content_part.added"}, "framing"),
    ({"type": "response.output_text.delta", "delta": "Hi"}, "visible"),
    ({"type": "response.refusal.delta"}, "visible"),
    ({"type": "response.reasoning_summary_text.delta"}, "output"),
    ({"type": "response.reasoning_text.delta"}, "output"),
    ({"type": "response.function_call_arguments.delta"}, "output"),
    ({"type": "response.output_text.done"}, "framing"),
    ({"type": "response.completed", "response": {}}, "framing"),
    ({"type": "response.failed"}, "error"),
    ({"object": "chat.completion.chunk", "id": "chatcmpl-1", "choices": [{"delta": {"role": "assistant"}}]},
     "framing"),
    ({"object": "chat.completion.chunk", "choices": [{"delta": {"content": "Hi"}}]}, "visible"),
    ({"object": "chat.completion.chunk", "choices": [{"delta": {"content": ""}}]}, "framing"),
    ({"object": "chat.completion.chunk", "choices": [{"delta": {"tool_calls": [{"index": 0}]}}]}, "output"),
    ({"object": "chat.completion.chunk", "choices": [{"delta": {"reasoning_content": "hm"}}]}, "output"),
    (b"[DONE]", "framing"),
    (b"not json at all", "unknown"),
    (b"\xff\xfe\x00", "unknown"),
    ([1, 2, 3], "unknown"),
    ({"candidates": [{"content": {}}]}, "unknown"),
    ({"type": "something_new"}, "unknown"),
])
def test_policy_table(data: object, kind: str) -> None:
    got = classify(ev(data)).kind
    assert got == kind
    assert got in EVENT_KINDS


def test_response_ids_come_from_the_stream() -> None:
    assert classify(ev({"type": "message_start", "message": {"id": "msg_x"}})).response_id == "msg_x"
    assert classify(ev({"type": "response.created", "response": {"id": "resp_x"}})).response_id == "resp_x"
    chunk = {"object": "chat.completion.chunk", "id": "chatcmpl-x", "choices": []}
    assert classify(ev(chunk)).response_id == "chatcmpl-x"
    assert classify(ev(delta("text_delta"))).response_id is None


@pytest.mark.parametrize("data,terminal", [
    ({"type": "message_stop"}, True), ({"type": "response.completed", "response": {}}, True),
    (b"[DONE]", True), ({"type": "message_delta"}, False), (delta("text_delta"), False),
])
def test_terminal_events(data: object, terminal: bool) -> None:
    assert classify(ev(data)).terminal is terminal


def sse(obj: object, name: str = "") -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_timeline_instants_counts_and_cap() -> None:
    t = Timeline(max_offsets=3)
    ms = 1_000_000
    t.feed(100 * ms, sse({"type": "message_start", "message": {"id": "msg_1"}}) + sse({"type": "ping"}))
    t.feed(150 * ms, b": keep-alive\n\n")
    t.feed(200 * ms, sse({"type": "content_block_start"}) + sse(delta("thinking_delta"))[:10])
    t.feed(300 * ms, sse(delta("thinking_delta"))[10:])
    t.feed(400 * ms, sse(delta("text_delta")) + b"data: [DONE]\n\n")
    assert (t.first_ns, t.first_event_ns, t.first_output_ns, t.first_visible_ns) == (
        100 * ms, 100 * ms, 300 * ms, 400 * ms)
    assert t.chunk_count == 5 and t.event_count == 6
    assert t.chunk_offsets_us == [0, 50_000, 100_000] and t.truncated  # capped at 3, counts exact
    assert t.event_kinds == ["framing", "ping", "framing"]
    assert t.response_id == "msg_1"


def test_unknown_format_gets_first_chunk_and_first_event_only() -> None:
    t = Timeline()
    t.feed(5, b'data: {"candidates": []}\n\n')
    assert t.first_event_ns == 5 and t.first_output_ns is None and t.first_visible_ns is None


def test_build_row_converts_naive_local_like_litellm_and_offsets_monotonic() -> None:
    local_start = datetime(2026, 3, 1, 12, 0, 0)  # naive local, as LiteLLM holds it
    ctx = StreamContext("call-1", 0, "/v1/messages", "anthropic_messages", "anthropic", "m", "1.82.3",
                        local_start, local_start + timedelta(milliseconds=3))
    rec = StreamRecorder(ctx)
    rec.on_chunk(sse({"type": "message_start", "message": {"id": "msg_9"}}))
    rec.on_chunk(sse(delta("text_delta")))
    rec.on_chunk(sse({"type": "message_stop"}))
    rec.finish("completed")
    rec.finish("cancelled")  # first outcome wins
    row = build_row(rec)
    assert row.request_start_at == local_start.astimezone(timezone.utc)
    assert row.request_start_at.tzinfo is not None
    assert row.api_call_start_at == (local_start + timedelta(milliseconds=3)).astimezone(timezone.utc)
    assert rec.first_wall is not None
    assert row.first_chunk_at == rec.first_wall.astimezone(timezone.utc) == row.first_event_at
    offset = timedelta(microseconds=row.chunk_offsets_us[1])
    assert row.first_visible_at == row.first_chunk_at + offset <= row.last_chunk_at
    assert (row.outcome, row.response_id, row.chunk_count, row.event_count) == ("completed", "msg_9", 3, 3)


@pytest.mark.parametrize("tail,outcome", [
    (sse({"type": "message_stop"}), "completed"),
    (b"", "upstream_error"),  # a known format that stopped before its end event was cut
    (sse({"type": "error", "error": {"type": "overloaded_error"}}), "upstream_error"),
])
def test_a_quietly_cut_stream_is_an_upstream_error(tail: bytes, outcome: str) -> None:
    rec = StreamRecorder(StreamContext("c", 0, None, None, None, None, None, datetime.now(), None))
    rec.on_chunk(sse({"type": "message_start", "message": {"id": "msg_1"}}) + sse(delta("text_delta")) + tail)
    rec.finish("completed")
    assert build_row(rec).outcome == outcome


def test_unknown_formats_that_end_are_completed() -> None:
    rec = StreamRecorder(StreamContext("c", 0, None, None, None, None, None, datetime.now(), None))
    rec.on_chunk(b'data: {"candidates": []}\n\n')
    rec.finish("completed")
    assert build_row(rec).outcome == "completed"


def test_to_utc_keeps_aware_values_and_rejects_non_datetimes() -> None:
    aware = datetime(2026, 1, 1, 5, tzinfo=timezone(timedelta(hours=2)))
    assert to_utc(aware) == datetime(2026, 1, 1, 3, tzinfo=timezone.utc)
    assert to_utc("2026-01-01") is None


def test_fold_keeps_memory_bounded_and_results_identical() -> None:
    ctx = StreamContext("c", 0, None, None, None, None, None, datetime.now(), None)
    chunks = [sse(delta("text_delta")) for _ in range(50)]
    small = StreamRecorder(ctx, retain_bytes=100)
    large = StreamRecorder(ctx)
    for chunk in chunks:
        small.on_chunk(chunk)
        large.on_chunk(chunk)
        assert small.retained <= 100 + len(chunk)
    small.finish("completed")
    large.finish("completed")
    a, b = build_row(small), build_row(large)
    assert (a.chunk_count, a.event_count, a.bytes_total) == (b.chunk_count, b.event_count, b.bytes_total) == (
        50, 50, sum(map(len, chunks)))
