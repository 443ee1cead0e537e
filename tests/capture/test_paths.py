"""Each streaming path on the installed LiteLLM release: the trace lands, its instants match the
mock server's own send times, and it joins the SpendLogs row LiteLLM builds (get_logging_payload)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.capture import helpers
from tests.capture.conftest import SpendProbe, insert_spend_row, litellm_version, naive_utc
from tests.capture.helpers import PATHS, run
from tests.capture.upstreams import MockUpstream

pytestmark = pytest.mark.capture
TOLERANCE_MS = 25.0



@pytest.fixture(scope="module")
def warmed(litellm: Any, upstream: MockUpstream) -> Iterator[None]:
    yield from helpers.warm(litellm, upstream)


def version() -> tuple[int, ...]:
    return litellm_version()


def expected_steps(path: str, served_steps: list[bytes]) -> tuple[int, int]:
    """(step of the first chunk LiteLLM can see, step carrying the first answer text)."""
    if path == "messages":
        return 0, 1
    if path == "responses":
        return 0, 2
    first = helpers.bedrock_first_readable_step(served_steps)
    return first, max(first, 1)


@pytest.mark.parametrize("path", PATHS)
def test_trace_matches_the_server_and_joins_spend_logs(
    path: str, litellm: Any, upstream: MockUpstream, warmed: None, any_era_db_url: str,
    capture_on: Any, spend_probe: SpendProbe,
) -> None:
    assert set(capture_on(any_era_db_url)) >= {"messages_pass_through", "messages_bedrock", "responses"}
    client = run(helpers.consume(litellm, upstream, path))
    served = upstream.served[-1]
    (row,) = run(spend_probe.wait(1))
    from ttft_reconcile import capture

    assert capture.flush(10)
    (trace,) = helpers.traces(any_era_db_url)

    # what the trace says agrees with what the server did, on the same clock
    first_step, visible_step = expected_steps(path, served.steps)
    chunk_err = helpers.ms_between(trace["first_chunk_at"], helpers.utc(served.sent_at[first_step]))
    visible_err = helpers.ms_between(trace["first_visible_at"], helpers.utc(served.sent_at[visible_step]))
    print(f"\n{path}: first_chunk error {chunk_err:.2f} ms, first_visible error {visible_err:.2f} ms")
    assert -2.0 <= chunk_err <= TOLERANCE_MS
    assert -2.0 <= visible_err <= TOLERANCE_MS
    assert trace["first_event_at"] >= trace["first_chunk_at"]
    assert trace["first_output_at"] == trace["first_visible_at"]
    assert trace["last_chunk_at"] >= trace["first_visible_at"]
    assert trace["outcome"] == "completed"
    assert trace["bytes_total"] == (sum(map(len, client)) if path == "messages" else trace["bytes_total"])
    assert "visible" in trace["event_kinds"] and trace["event_count"] >= 5
    assert trace["litellm_call_id"] == row["_call_id"]
    assert trace["call_type"] == row["call_type"]
    # the clocks LiteLLM's own row uses, converted the same way
    assert trace["request_start_at"] <= trace["api_call_start_at"] <= trace["first_chunk_at"]
    assert abs(helpers.ms_between(trace["api_call_start_at"], row["_api_call_start_time"].astimezone())) < 0.01

    # the SpendLogs row LiteLLM builds joins this trace
    insert_spend_row(any_era_db_url, row)
    matches = helpers.join(any_era_db_url, row["request_id"])
    assert len(matches) == 1 and matches[0]["stream_seq"] == 0
    used = helpers.strategies(matches[0])
    print(f"{path}: litellm {'.'.join(map(str, version()))} request_id={row['request_id'][:24]}… joins {used}")
    assert used

    # the bug, or LiteLLM's own fix, as each release has it
    cst, end = naive_utc(row["completionStartTime"]), naive_utc(row["endTime"])
    litellm_stamps = version() >= (1, 93) or (path == "bedrock" and version() >= (1, 83, 9))
    if litellm_stamps:
        assert trace["stamped_by"] == "litellm"
        first = trace["first_chunk_at"].replace(tzinfo=None)
        assert abs((cst - first) / timedelta(milliseconds=1)) <= TOLERANCE_MS
    else:
        assert trace["stamped_by"] is None
        assert abs((end - cst) / timedelta(milliseconds=1)) <= 1.0  # TTFT = total latency


@pytest.mark.parametrize("path", PATHS)
def test_stamp_fixes_the_row_at_the_source(
    path: str, litellm: Any, upstream: MockUpstream, warmed: None, db_url: str, capture_on: Any,
    spend_probe: SpendProbe,
) -> None:
    capture_on(db_url, stamp=True)
    run(helpers.consume(litellm, upstream, path))
    (row,) = run(spend_probe.wait(1))
    from ttft_reconcile import capture

    assert capture.flush(10)
    (trace,) = helpers.traces(db_url)
    cst = naive_utc(row["completionStartTime"])
    first = trace["first_chunk_at"].replace(tzinfo=None)
    if trace["stamped_by"] == "capture":
        assert cst == first  # the very instant the trace records
    else:
        assert trace["stamped_by"] == "litellm"  # the release stamps itself: its value is kept
        assert abs((cst - first) / timedelta(milliseconds=1)) <= TOLERANCE_MS
    assert naive_utc(row["endTime"]) - cst > timedelta(milliseconds=50)


def test_hooks_gauge_and_uninstall(litellm: Any, capture_on: Any) -> None:
    from litellm.proxy.pass_through_endpoints.streaming_handler import PassThroughStreamingHandler

    from ttft_reconcile import capture
    from ttft_reconcile.capture import metrics

    original = PassThroughStreamingHandler.__dict__["chunk_processor"]
    paths = capture_on("postgresql://u@127.0.0.1:1/x")
    agentic = version() >= (1, 83, 14)
    assert paths == ["messages_pass_through", "messages_bedrock"] + (["messages_agentic"] if agentic else []) + [
        "responses"]
    assert capture.install() == paths  # idempotent
    for name in ("messages_pass_through", "messages_bedrock", "responses"):
        assert metrics.sample("ttft_capture_hooks_active", {"path": name}) == 1
    assert metrics.sample("ttft_capture_hooks_active", {"path": "messages_agentic"}) == (1 if agentic else 0)
    assert PassThroughStreamingHandler.__dict__["chunk_processor"] is not original
    capture.uninstall()
    capture.uninstall()
    assert PassThroughStreamingHandler.__dict__["chunk_processor"] is original
    assert metrics.sample("ttft_capture_hooks_active", {"path": "messages_pass_through"}) == 0
