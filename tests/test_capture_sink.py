"""The capture's writer against a real Postgres: rows land, failures are counted, never raised."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from tests import services
from ttft_reconcile.capture import metrics
from ttft_reconcile.capture.recorder import StreamContext, StreamRecorder
from ttft_reconcile.capture.sink import RateLimitedWarning, SinkOptions, TraceSink
from ttft_reconcile.dburl import parse_database_url


def recorder(call_id: str, start: datetime | None = None) -> StreamRecorder:
    start = start or datetime.now()
    rec = StreamRecorder(StreamContext(call_id, 0, "/v1/messages", "anthropic_messages", "anthropic",
                                       "claude", "1.82.3", start, start + timedelta(milliseconds=2)))
    rec.on_chunk(b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_' + call_id.encode()
                 + b'"}}\n\n')
    rec.on_chunk(b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"secret words"}}\n\n')
    rec.on_chunk(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    rec.finish("completed")
    return rec


def dropped(reason: str) -> float:
    return metrics.sample("ttft_capture_traces_dropped_total", {"reason": reason})


@pytest.fixture
def sink_for() -> Iterator[list[TraceSink]]:
    made: list[TraceSink] = []
    yield made
    for sink in made:
        sink.stop(5)


def make(sink_for: list[TraceSink], url: str | None, **options: float) -> TraceSink:
    sink = TraceSink(parse_database_url(url) if url else None, SinkOptions(**options),  # type: ignore[arg-type]
                     RateLimitedWarning())
    sink_for.append(sink)
    return sink


def test_rows_land_in_the_parent_table_once(db_url: str, sink_for: list[TraceSink]) -> None:
    written = metrics.sample("ttft_capture_traces_written_total")
    sink = make(sink_for, services.with_params(db_url, schema="public", connection_limit="3"),
                flush_interval=0.05)  # Prisma URL
    first = recorder("call-a")
    sink.submit(first)
    sink.submit(first)  # the same stream twice: ON CONFLICT DO NOTHING
    sink.submit(recorder("call-b", datetime.now() - timedelta(days=40)))  # no partition: default one
    assert sink.flush(10)
    assert metrics.sample("ttft_capture_traces_written_total") - written == 2
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT litellm_call_id, response_id, event_kinds, first_visible_at > first_chunk_at, outcome,"
            " tableoid::regclass::text FROM ttft_reconcile.stream_traces ORDER BY 1").fetchall()
        text = conn.execute("SELECT string_agg(t::text, '') FROM ttft_reconcile.stream_traces t").fetchone()
    assert [r[:5] for r in rows] == [
        ("call-a", "msg_call-a", ["framing", "visible", "framing"], True, "completed"),
        ("call-b", "msg_call-b", ["framing", "visible", "framing"], True, "completed")]
    assert rows[1][5] == "ttft_reconcile.stream_traces_default"
    assert text is not None and "secret" not in str(text[0])  # timings and kinds only, never content


def test_unmigrated_database_drops_and_counts(pg_admin_url: str, sink_for: list[TraceSink],
                                             caplog: pytest.LogCaptureFixture) -> None:
    name = f"ttft_capture_empty_{int(time.time() * 1000) % 10**8}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        before = dropped("no_schema")
        sink = make(sink_for, services.with_database(pg_admin_url, name), flush_interval=0.05)
        for i in range(3):
            sink.submit(recorder(f"x{i}"))
            assert sink.flush(10)
        assert dropped("no_schema") - before == 3
        assert sum("not migrated" in r.getMessage() for r in caplog.records) == 1  # warned once
    finally:
        sink.stop(5)
        services.drop_database(pg_admin_url, name)


def test_database_down_is_counted_not_raised(sink_for: list[TraceSink]) -> None:
    port = services.free_port()  # nothing listens there
    before = dropped("db_error")
    sink = make(sink_for, f"postgresql://u:hunter2@127.0.0.1:{port}/db", flush_interval=0.05)
    sink.submit(recorder("down"))
    assert sink.flush(10)
    assert dropped("db_error") - before == 1


def test_no_url_is_counted(sink_for: list[TraceSink]) -> None:
    before = dropped("no_database")
    sink = make(sink_for, None, flush_interval=0.05)
    sink.submit(recorder("nowhere"))
    assert sink.flush(10)
    assert dropped("no_database") - before == 1


def test_full_queue_drops_without_blocking(sink_for: list[TraceSink]) -> None:
    # A server that accepts and never answers keeps the writer busy connecting.
    with services.silent_tcp_server() as port:
        before = dropped("queue_full")
        sink = make(sink_for, f"postgresql://u@127.0.0.1:{port}/db", queue_size=2, flush_interval=0.01,
                    connect_timeout=2)
        sink.submit(recorder("q0"))
        time.sleep(0.3)  # the writer takes q0 and hangs in connect
        started = time.monotonic()
        for i in range(1, 6):
            sink.submit(recorder(f"q{i}"))
        assert time.monotonic() - started < 0.5  # submit never waits
        assert dropped("queue_full") - before == 3


def test_password_never_logged(sink_for: list[TraceSink], caplog: pytest.LogCaptureFixture) -> None:
    port = services.free_port()
    sink = make(sink_for, f"postgresql://u:s3cr3tpw@127.0.0.1:{port}/db", flush_interval=0.05)
    sink.warn = RateLimitedWarning(every=0)
    sink.submit(recorder("pw"))
    assert sink.flush(10)
    assert caplog.records and all("s3cr3tpw" not in r.getMessage() for r in caplog.records)


def test_rows_carry_utc_instants(db_url: str, sink_for: list[TraceSink]) -> None:
    sink = make(sink_for, db_url, flush_interval=0.05)
    rec = recorder("utc")
    sink.submit(rec)
    assert sink.flush(10)
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT first_chunk_at, request_start_at FROM ttft_reconcile.stream_traces").fetchone()
    assert row is not None and rec.first_wall is not None
    assert row[0] == rec.first_wall.astimezone(timezone.utc)  # naive local -> UTC, exact to the µs
    assert row[1] == rec.context.request_start.astimezone(timezone.utc)  # type: ignore[union-attr]


def test_a_forked_worker_gets_its_own_writer_and_connection(db_url: str) -> None:
    import os

    from ttft_reconcile import capture

    state = capture._Capture(parse_database_url(db_url), capture.CaptureOptions(flush_interval=0.05), "test")
    state.finish(recorder("parent"), "completed")
    parent_sink = state.sink
    assert parent_sink is not None and parent_sink.flush(10)
    pid = os.fork()
    if pid == 0:  # the worker: same objects, another process
        code = 1
        try:
            state.finish(recorder("child"), "completed")
            child_sink = state.sink
            code = 0 if child_sink is not parent_sink and child_sink is not None and child_sink.flush(10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert state.sink is parent_sink
    state.finish(recorder("parent-again"), "completed")
    assert parent_sink.flush(10)
    parent_sink.stop(5)
    with psycopg.connect(db_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT litellm_call_id FROM ttft_reconcile.stream_traces ORDER BY 1")]
    assert ids == ["child", "parent", "parent-again"]
