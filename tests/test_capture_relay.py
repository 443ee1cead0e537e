"""The relay every hook shares: output untouched, outcomes, failures contained (no LiteLLM needed).

The logging object here is a plain object with the attributes the capture reads; the
LiteLLM-backed suite (tests/capture) checks the same against real releases.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import pytest

from ttft_reconcile import capture
from ttft_reconcile.capture import hooks, metrics
from ttft_reconcile.capture.recorder import StreamRecorder

CHUNKS = [b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_r\"}}\n\nevent: pi",
          b"ng\ndata: {\"type\":\"ping\"}\n\n", bytearray(b"data: {\"type\":\"content_block_delta\"}\n\n"),
          b"\xff\xfe junk \r\r\n"]


class LoggingObject:
    def __init__(self) -> None:
        self.litellm_call_id = "call-relay"
        self.start_time = datetime.now()
        self.call_type = "anthropic_messages"
        self.model = "claude"
        self.completion_start_time: datetime | None = None
        self.model_call_details: dict[str, Any] = {"api_call_start_time": datetime.now(),
                                                   "custom_llm_provider": "anthropic"}

    def _update_completion_start_time(self, completion_start_time: datetime) -> None:
        self.completion_start_time = completion_start_time


class Broken(LoggingObject):
    @property
    def model_call_details(self) -> dict[str, Any]:  # type: ignore[override]
        raise RuntimeError("a bug in the recorder's reading of LiteLLM")

    @model_call_details.setter
    def model_call_details(self, value: dict[str, Any]) -> None:
        pass


class Seen:
    """Collects what the capture hands to its writer (instead of a database)."""

    def __init__(self, capture_obj: Any) -> None:
        self.finished: list[tuple[StreamRecorder, str]] = []
        self.capture_obj = capture_obj

    def finish(self, recorder: StreamRecorder, outcome: str, exposed_id: str | None = None) -> None:
        recorder.finish(outcome)
        self.finished.append((recorder, outcome))


@pytest.fixture
def recording() -> Iterator[Any]:
    rec = capture._Capture(None, capture.CaptureOptions(), "test")
    seen = Seen(rec)
    rec.finish = seen.finish  # type: ignore[method-assign]
    rec.seen = seen  # type: ignore[attr-defined]
    yield rec


async def upstream(fail_after: int | None = None) -> AsyncIterator[bytes | bytearray]:
    for i, chunk in enumerate(CHUNKS):
        if fail_after is not None and i == fail_after:
            raise ConnectionResetError("upstream went away")
        yield chunk


async def consume(iterator: AsyncIterator[Any], limit: int | None = None) -> list[Any]:
    out = []
    async for chunk in iterator:
        out.append(chunk)
        if limit is not None and len(out) == limit:
            break
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_output_is_the_same_objects_and_a_trace_is_finished(recording: Any) -> None:
    plain = run(consume(upstream()))
    relayed = run(consume(hooks.observe(upstream(), recording, LoggingObject(), "/v1/messages", False)))
    assert relayed == plain
    assert all(a is b for a, b in zip(relayed, CHUNKS, strict=True))
    (rec, outcome), = recording.seen.finished
    assert outcome == "completed"
    assert rec.context.litellm_call_id == "call-relay" and len(rec.chunks) == len(CHUNKS)


def test_client_disconnect_closes_upstream_and_is_recorded(recording: Any) -> None:
    closed = []

    async def tracked() -> AsyncIterator[bytes | bytearray]:
        try:
            for chunk in CHUNKS:
                yield chunk
        finally:
            closed.append(True)

    async def main() -> list[Any]:
        relay = hooks.observe(tracked(), recording, LoggingObject(), "/v1/messages", False)
        got = await consume(relay, limit=2)
        await relay.aclose()  # type: ignore[attr-defined]
        return got

    assert len(run(main())) == 2
    assert closed == [True]
    assert [o for _, o in recording.seen.finished] == ["client_disconnected"]


def test_upstream_error_propagates_unchanged_and_is_recorded(recording: Any) -> None:
    with pytest.raises(ConnectionResetError, match="went away"):
        run(consume(hooks.observe(upstream(fail_after=2), recording, LoggingObject(), "/v1/messages", False)))
    assert [o for _, o in recording.seen.finished] == ["upstream_error"]


def test_cancellation_is_recorded(recording: Any) -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        await asyncio.sleep(10)
        yield b"data: 2\n\n"

    async def main() -> None:
        task = asyncio.ensure_future(consume(hooks.observe(slow(), recording, LoggingObject(), None, False)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert [o for _, o in recording.seen.finished] == ["cancelled"]


def test_a_recorder_bug_is_counted_and_the_stream_is_untouched(recording: Any) -> None:
    before = metrics.sample("ttft_capture_traces_dropped_total", {"reason": "recorder_error"})
    relayed = run(consume(hooks.observe(upstream(), recording, Broken(), "/v1/messages", False)))
    assert relayed == list(CHUNKS)
    assert recording.seen.finished == []
    assert metrics.sample("ttft_capture_traces_dropped_total", {"reason": "recorder_error"}) - before == 1


def test_stamp_only_when_asked_and_only_when_litellm_has_not(recording: Any) -> None:
    plain = LoggingObject()
    run(consume(hooks.observe(upstream(), recording, plain, None, False)))
    assert plain.completion_start_time is None  # default: observe only
    assert recording.seen.finished[-1][0].stamped_by is None

    stamping = capture._Capture(None, capture.CaptureOptions(stamp=True), "test")
    stamping.finish = Seen(stamping).finish  # type: ignore[method-assign]
    fresh = LoggingObject()
    run(consume(hooks.observe(upstream(), stamping, fresh, None, False)))
    assert fresh.completion_start_time is not None

    theirs = LoggingObject()
    theirs.completion_start_time = kept = datetime(2026, 1, 1)
    run(consume(hooks.observe(upstream(), stamping, theirs, None, False)))
    assert theirs.completion_start_time is kept  # LiteLLM's value wins


def test_stream_seq_counts_streams_of_one_call(recording: Any) -> None:
    logging_obj = LoggingObject()
    for _ in range(3):
        run(consume(hooks.observe(upstream(), recording, logging_obj, None, False)))
    assert [r.context.stream_seq for r, _ in recording.seen.finished] == [0, 1, 2]


def test_install_without_litellm_patches_nothing_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("prometheus_client")
    try:
        import litellm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("this test is for an environment without litellm")
    try:
        assert capture.install("postgresql://u@127.0.0.1:1/x") == []
        assert capture.install() == []  # idempotent
        for path in hooks.PATHS:
            assert metrics.sample("ttft_capture_hooks_active", {"path": path}) == 0
        assert sum("layout not recognised" in r.getMessage() for r in caplog.records) == 1
        assert capture.flush(1)
    finally:
        capture.uninstall()
        capture.uninstall()
