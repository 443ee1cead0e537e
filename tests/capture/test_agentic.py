"""The agentic /v1/messages iterator: its first stream and a chained follow-up are both traced."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.capture import helpers
from tests.capture.conftest import SpendProbe, insert_spend_row, litellm_version
from tests.capture.helpers import run
from tests.capture.upstreams import MockUpstream

pytestmark = pytest.mark.capture
HAS_AGENTIC_LOOP = (1, 83, 14)  # the first release with the agentic /v1/messages iterator

FOLLOW_UP = {"id": "msg_follow_up", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
             "content": [{"type": "text", "text": "after the tool"}], "stop_reason": "end_turn",
             "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 3}}


@pytest.fixture
def agentic_hook(litellm: Any) -> Iterator[list[str]]:
    """A callback whose agentic gate fires, answering with a non-streaming follow-up (releases
    with the agentic iterator only: older ones answer a gated stream with a plain dict)."""
    if litellm_version() < HAS_AGENTIC_LOOP:
        yield []
        return
    from litellm.integrations.custom_logger import CustomLogger

    calls: list[str] = []

    class Agentic(CustomLogger):  # type: ignore[misc]
        async def async_should_run_agentic_loop(self, *args: Any, **kwargs: Any) -> tuple[bool, dict[str, Any]]:
            calls.append("should_run")
            return True, {"tool_calls": []}

        async def async_run_agentic_loop(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("run")
            return dict(FOLLOW_UP)

    saved = list(litellm.callbacks)
    litellm.callbacks = saved + [Agentic()]
    try:
        yield calls
    finally:
        litellm.callbacks = saved


def test_agentic_first_stream_and_follow_up(litellm: Any, upstream: MockUpstream, db_url: str, capture_on: Any,
                                            spend_probe: SpendProbe, agentic_hook: list[str]) -> None:
    from ttft_reconcile import capture

    installed = capture_on(db_url)
    if litellm_version() < HAS_AGENTIC_LOOP:
        # No agentic loop in this release: the hook is reported absent, the plain stream is traced.
        assert "messages_agentic" not in installed and "messages_pass_through" in installed, installed
        run(helpers.consume(litellm, upstream, "messages"))
        assert capture.flush(10)
        assert [t["stream_seq"] for t in helpers.traces(db_url)] == [0]
        return
    assert "messages_agentic" in installed
    client = run(helpers.consume(litellm, upstream, "messages"))
    assert "should_run" in agentic_hook
    assert any(b"after the tool" in chunk for chunk in client) == ("run" in agentic_hook)
    rows = run(spend_probe.wait(1))
    assert capture.flush(10)
    traces = helpers.traces(db_url)
    first = [t for t in traces if t["stream_seq"] == 0]
    assert len(first) == 1 and first[0]["outcome"] == "completed"
    assert first[0]["route"] == "/v1/messages" and first[0]["first_visible_at"] is not None
    if "run" in agentic_hook:  # the follow-up is chained into the same client stream
        (follow,) = [t for t in traces if t["stream_seq"] == 1]
        assert follow["litellm_call_id"] == first[0]["litellm_call_id"]
        assert follow["route"] == "/v1/messages#agentic"
        assert follow["first_chunk_at"] >= first[0]["last_chunk_at"]
    insert_spend_row(db_url, rows[0])
    matches = helpers.join(db_url, rows[0]["request_id"])
    assert {m["stream_seq"] for m in matches} >= {0}
    print(f"\nagentic: litellm {'.'.join(map(str, litellm_version()))} hook calls {agentic_hook}, "
          f"streams {[t['stream_seq'] for t in traces]}, joins {[helpers.strategies(m) for m in matches]}")
