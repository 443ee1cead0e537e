"""Never hurt the stream: byte-identical output, disconnects and upstream errors, a dead database."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from tests import services
from tests.capture import helpers
from tests.capture.conftest import SpendProbe
from tests.capture.helpers import PATHS, run
from tests.capture.upstreams import MockUpstream, fixed_plan

pytestmark = pytest.mark.capture


@pytest.fixture(scope="module")
def warmed(litellm: Any, upstream: MockUpstream) -> Iterator[None]:
    yield from helpers.warm(litellm, upstream)


async def settle(seconds: float = 0.6) -> None:
    gc.collect()  # finalise abandoned streams, as a server's request teardown would
    await asyncio.sleep(seconds)


def logging_counts(probe: SpendProbe) -> tuple[int, int]:
    return len(probe.rows), len(probe.failures)


@pytest.mark.parametrize("path", PATHS)
def test_client_output_is_byte_identical(path: str, litellm: Any, upstream: MockUpstream, warmed: None,
                                         plan: Any, db_url: str, capture_on: Any) -> None:
    plan(fixed_plan())
    plain = run(helpers.consume(litellm, upstream, path))
    capture_on(db_url)
    patched = run(helpers.consume(litellm, upstream, path))
    assert patched == plain and len(plain) >= 5
    from ttft_reconcile import capture

    capture.uninstall()
    again = run(helpers.consume(litellm, upstream, path))
    assert again == plain


@pytest.mark.parametrize("path", PATHS)
def test_client_disconnect_is_recorded_and_litellm_logs_as_unpatched(
    path: str, litellm: Any, upstream: MockUpstream, warmed: None, db_url: str, capture_on: Any,
    spend_probe: SpendProbe,
) -> None:
    got = run(helpers.consume(litellm, upstream, path, limit=2))
    run(settle())
    unpatched = logging_counts(spend_probe)
    spend_probe.rows.clear()
    spend_probe.failures.clear()

    capture_on(db_url)
    assert run(helpers.consume(litellm, upstream, path, limit=2)) == got[:2] or len(got) == 2
    run(settle())
    assert logging_counts(spend_probe) == unpatched  # LiteLLM's own logging did what it does unpatched
    from ttft_reconcile import capture

    assert capture.flush(10)
    (trace,) = helpers.traces(db_url)
    assert trace["outcome"] == "client_disconnected"
    assert trace["chunk_count"] >= 1 and trace["first_chunk_at"] is not None


@pytest.mark.parametrize("path", PATHS)
def test_upstream_error_mid_stream_is_recorded_and_raised_unchanged(
    path: str, litellm: Any, upstream: MockUpstream, warmed: None, plan: Any, db_url: str, capture_on: Any,
    spend_probe: SpendProbe,
) -> None:
    plan(fixed_plan(mode="cut", cut_after=3))

    def attempt() -> tuple[str, list[bytes]]:
        received: list[bytes] = []

        async def go() -> None:
            stream = await helpers.open_stream(litellm, upstream, path)
            async for chunk in stream:
                received.append(helpers.as_bytes(chunk))

        try:
            run(go())
        except Exception as error:  # whatever LiteLLM raises for a cut stream
            return type(error).__name__, received
        return "no error", received

    unpatched_error, unpatched_chunks = attempt()
    run(settle())
    unpatched = logging_counts(spend_probe)
    spend_probe.rows.clear()
    spend_probe.failures.clear()

    capture_on(db_url)
    error, chunks = attempt()
    run(settle())
    assert (error, chunks) == (unpatched_error, unpatched_chunks)
    assert logging_counts(spend_probe) == unpatched
    from ttft_reconcile import capture

    assert capture.flush(10)
    traces = helpers.traces(db_url)
    assert [t["outcome"] for t in traces] == ["upstream_error"]
    assert traces[0]["first_chunk_at"] is not None


def test_dead_database_changes_nothing_for_clients(litellm: Any, upstream: MockUpstream, warmed: None,
                                                   plan: Any, capture_on: Any) -> None:
    from ttft_reconcile import capture
    from ttft_reconcile.capture import metrics

    plan(fixed_plan())
    plain = run(helpers.consume(litellm, upstream, "messages"))
    before = metrics.sample("ttft_capture_traces_dropped_total", {"reason": "db_error"})
    capture_on(f"postgresql://capture:pw@127.0.0.1:{services.free_port()}/nowhere")
    assert run(helpers.consume(litellm, upstream, "messages")) == plain
    assert capture.flush(10)
    assert metrics.sample("ttft_capture_traces_dropped_total", {"reason": "db_error"}) - before == 1
