"""A gateway that trickles its answer a byte at a time cannot hold the job: the whole push has a deadline."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from ttft_reconcile import metrics
from ttft_reconcile.errors import PublishFailed
from ttft_reconcile.settings import PublishSettings
from ttft_reconcile.summary import RunSummary

T0 = datetime(2026, 3, 10, 12, tzinfo=timezone.utc)


@pytest.fixture
def trickling_gateway() -> Iterator[str]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not stop.wait(0.3):  # a byte every 0.3 s: the headers never end
                    try:
                        conn.sendall(b".")
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_trickling_gateway_fails_the_push_instead_of_hanging(trickling_gateway: str) -> None:
    summary = RunSummary(run_id=1, mode="run", since=T0, until=T0, policy="first_chunk", candidates=0,
                         outcomes={}, duration_seconds=1.0, dry_run=False, started_at=T0, finished_at=T0)
    settings = PublishSettings(pushgateway=trickling_gateway, deployment="d", push_timeout_seconds=0.5)
    with pytest.raises(PublishFailed, match="timed out"):
        metrics.publish_success(summary, settings)
