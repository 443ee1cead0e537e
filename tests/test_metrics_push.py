"""Run metrics against the real Pushgateway: PUT vs POST, surviving successes, deletes, failure modes."""

from __future__ import annotations

import base64
import json
import socket
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import delete_from_gateway, push_to_gateway

from tests import services
from ttft_reconcile import metrics
from ttft_reconcile.errors import EXIT_PUBLISH_FAILED, PublishFailed
from ttft_reconcile.outcomes import OUTCOMES
from ttft_reconcile.settings import PublishSettings
from ttft_reconcile.summary import RunSummary

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
Series = dict[str, dict[frozenset[tuple[str, str]], float]]


def summary(finished: datetime, **changes: object) -> RunSummary:
    values: dict[str, object] = {
        "run_id": 1, "mode": "run", "since": finished - timedelta(hours=1), "until": finished,
        "policy": "first_chunk", "candidates": 5, "outcomes": {"repaired": 4, "no_trace": 1},
        "duration_seconds": 2.0, "dry_run": False, "started_at": finished - timedelta(seconds=2),
        "finished_at": finished, "checkpoint": finished - timedelta(minutes=2),
    }
    values.update(changes)
    return RunSummary(**values)  # type: ignore[arg-type]


def read_group(gateway: str, key: dict[str, str]) -> Series | None:
    """The group's series from /api/v1/metrics: name -> {extra labels -> value}; None if absent."""
    with urllib.request.urlopen(f"http://{gateway}/api/v1/metrics", timeout=5) as response:
        data = json.load(response)["data"]
    wanted = {"job": metrics.JOB, **key}
    for group in data:
        labels = {k: v for k, v in group["labels"].items() if v != ""}
        if labels != wanted:
            continue
        series: Series = {}
        for name, family in group.items():
            if not isinstance(family, dict) or "metrics" not in family:
                continue
            series[name] = {
                frozenset((k, v) for k, v in sample["labels"].items() if k not in wanted and v != ""):
                    float(sample["value"])
                for sample in family["metrics"]
            }
        return series
    return None


def value(series: Series, name: str, **labels: str) -> float:
    return series[name][frozenset(labels.items())]


@pytest.fixture
def deployment(pushgateway: str) -> Iterator[str]:
    """A deployment name of its own; every group of it is deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    for mode in ("run", "backfill", "rollback"):
        delete_from_gateway(pushgateway, metrics.JOB, grouping_key={"deployment": name, "mode": mode}, timeout=5)


def test_success_puts_the_whole_group(pushgateway: str, deployment: str) -> None:
    settings = PublishSettings(pushgateway=pushgateway, deployment=deployment)
    result = metrics.publish_success(summary(T0), settings, quantiles={"claude": {"0.5": 0.3, "0.95": 1.2}})
    assert result.method == "PUT" and result.grouping_key == {"deployment": deployment, "mode": "run"}
    series = read_group(pushgateway, result.grouping_key)
    assert series is not None
    assert value(series, metrics.LAST_SUCCESS) == T0.timestamp()
    assert value(series, metrics.LAST_RUN) == T0.timestamp()
    assert value(series, metrics.LAST_DURATION) == 2.0
    assert value(series, metrics.CHECKPOINT_LAG) == 120.0
    assert {dict(labels)["outcome"] for labels in series[metrics.LAST_ROWS]} == set(OUTCOMES)
    assert value(series, metrics.LAST_ROWS, outcome="repaired") == 4
    assert value(series, metrics.LAST_ROWS, outcome="ambiguous") == 0
    assert value(series, metrics.TTFT, model_group="claude", quantile="0.95") == 1.2
    assert metrics.LAST_FAILURE not in series
    assert not [name for name in series if name.endswith("_created")]


def test_second_success_replaces_the_group(pushgateway: str, deployment: str) -> None:
    settings = PublishSettings(pushgateway=pushgateway, deployment=deployment)
    metrics.publish_success(summary(T0), settings, quantiles={"old-model": {"0.5": 0.3}})
    later = T0 + timedelta(minutes=5)
    metrics.publish_success(summary(later), settings, quantiles={"new-model": {"0.5": 0.4}})
    series = read_group(pushgateway, {"deployment": deployment, "mode": "run"})
    assert series is not None
    assert set(series[metrics.TTFT]) == {frozenset({("model_group", "new-model"), ("quantile", "0.5")})}
    assert value(series, metrics.LAST_SUCCESS) == later.timestamp()


def test_failure_posts_two_timestamps_and_the_last_success_survives(pushgateway: str, deployment: str) -> None:
    settings = PublishSettings(pushgateway=pushgateway, deployment=deployment)
    metrics.publish_success(summary(T0), settings, quantiles={"claude": {"0.5": 0.3}})
    failed_at = T0 + timedelta(minutes=5)
    result = metrics.publish_failure("run", settings, now=failed_at)
    assert result.method == "POST" and result.series == 2
    series = read_group(pushgateway, {"deployment": deployment, "mode": "run"})
    assert series is not None
    assert value(series, metrics.LAST_SUCCESS) == T0.timestamp()
    assert value(series, metrics.LAST_FAILURE) == failed_at.timestamp()
    assert value(series, metrics.LAST_RUN) == failed_at.timestamp()
    assert value(series, metrics.LAST_ROWS, outcome="repaired") == 4
    assert value(series, metrics.TTFT, model_group="claude", quantile="0.5") == 0.3

    recovered = T0 + timedelta(minutes=10)
    metrics.publish_success(summary(recovered), settings)
    series = read_group(pushgateway, {"deployment": deployment, "mode": "run"})
    assert series is not None
    assert metrics.LAST_FAILURE not in series  # PUT replaced the group: the failure is over
    assert value(series, metrics.LAST_SUCCESS) == recovered.timestamp()


def test_failure_before_any_success_creates_a_group_of_two(pushgateway: str, deployment: str) -> None:
    settings = PublishSettings(pushgateway=pushgateway, deployment=deployment)
    metrics.publish_failure("run", settings, now=T0)
    series = read_group(pushgateway, {"deployment": deployment, "mode": "run"})
    assert series is not None
    ours = {name for name in series if name.startswith("ttft_reconcile_")}
    assert ours == {metrics.LAST_RUN, metrics.LAST_FAILURE}


def test_backfill_workers_get_their_own_group_and_delete_it_on_success(
    pushgateway: str, deployment: str
) -> None:
    settings = PublishSettings(pushgateway=pushgateway, deployment=deployment)
    first = summary(T0, mode="backfill", worker="pod-a:1", checkpoint=None)
    second = summary(T0, mode="backfill", worker="pod-b:1", checkpoint=None)
    metrics.publish_success(first, settings)
    metrics.publish_success(second, settings)
    key_a = {"deployment": deployment, "mode": "backfill", "instance": "pod-a:1"}
    key_b = {**key_a, "instance": "pod-b:1"}
    series_a = read_group(pushgateway, key_a)
    assert series_a is not None and read_group(pushgateway, key_b) is not None
    assert metrics.CHECKPOINT_LAG not in series_a  # a backfill has no incremental checkpoint

    deleting = PublishSettings(pushgateway=pushgateway, deployment=deployment, delete_group_on_success=True)
    result = metrics.publish_success(first, deleting)
    assert result.method == "DELETE"
    assert read_group(pushgateway, key_a) is None
    assert read_group(pushgateway, key_b) is not None
    delete_from_gateway(pushgateway, metrics.JOB, grouping_key=key_b, timeout=5)


def test_dry_run_pushes_nothing(pushgateway: str, deployment: str) -> None:
    settings = PublishSettings(pushgateway=pushgateway, deployment=deployment)
    assert metrics.publish_success(summary(T0, dry_run=True), settings).skipped == "dry run"
    assert read_group(pushgateway, {"deployment": deployment, "mode": "run"}) is None


def assert_one_line_failure(error: PublishFailed, *fragments: str) -> None:
    text = str(error)
    assert "\n" not in text and len(text) <= 300
    assert error.exit_code == EXIT_PUBLISH_FAILED
    for fragment in fragments:
        assert fragment in text, text


def test_closed_port_fails_with_one_line() -> None:
    address = f"127.0.0.1:{services.free_port()}"
    with pytest.raises(PublishFailed) as caught:
        metrics.publish_success(summary(T0), PublishSettings(pushgateway=address, deployment="d"))
    assert_one_line_failure(caught.value, address, "refused", "deployment=d")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback socket that accepts connections (kernel backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_gateway_that_never_answers_times_out(silent_server: str) -> None:
    settings = PublishSettings(pushgateway=silent_server, deployment="d", push_timeout_seconds=0.3)
    with pytest.raises(PublishFailed) as caught:
        metrics.publish_success(summary(T0), settings)
    assert_one_line_failure(caught.value, "timed out", "0.3 s")
    with pytest.raises(PublishFailed) as caught:
        metrics.publish_failure("run", settings, now=T0)
    assert_one_line_failure(caught.value, "timed out", "push (add)")


@pytest.fixture
def private_gateway() -> Iterator[str]:
    """A Pushgateway of this test alone: a type conflict needs a name no other test has pushed."""
    exe = services.find_pushgateway()
    if exe is None:
        services.missing("prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway)")
    assert exe is not None
    gateway = services.Pushgateway(exe)
    try:
        yield gateway.address
    finally:
        gateway.stop()


def test_type_conflict_is_http_400_and_leaves_the_group_alone(private_gateway: str) -> None:
    settings = PublishSettings(pushgateway=private_gateway, deployment="prod")
    metrics.publish_success(summary(T0), settings)  # no quantiles: no TTFT family in the gateway yet
    registry = CollectorRegistry()
    Histogram(metrics.TTFT, "a histogram of the same name", registry=registry).observe(1.0)
    push_to_gateway(private_gateway, "other_job", registry, timeout=5)
    with pytest.raises(PublishFailed) as caught:
        metrics.publish_success(summary(T0 + timedelta(minutes=5)), settings, quantiles={"m": {"0.5": 0.2}})
    assert_one_line_failure(caught.value, "HTTP 400")
    series = read_group(private_gateway, {"deployment": "prod", "mode": "run"})
    assert series is not None and value(series, metrics.LAST_SUCCESS) == T0.timestamp()


def test_wrong_path_is_http_404(pushgateway: str) -> None:
    settings = PublishSettings(pushgateway=f"http://{pushgateway}/no/such/prefix", deployment="d")
    with pytest.raises(PublishFailed) as caught:
        metrics.publish_success(summary(T0), settings)
    assert_one_line_failure(caught.value, "HTTP 404")


class _AuthRecorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str]] = []

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _AuthRecorder.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
        self.send_response(401)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        return


def test_credentials_go_as_basic_auth_and_never_into_the_message() -> None:
    server = HTTPServer(("127.0.0.1", 0), _AuthRecorder)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        address = f"http://alice:s3cr%40t@127.0.0.1:{server.server_address[1]}"
        with pytest.raises(PublishFailed) as caught:
            metrics.publish_success(summary(T0), PublishSettings(pushgateway=address, deployment="d"))
    finally:
        thread.join(5)
        server.server_close()
    assert_one_line_failure(caught.value, "HTTP 401", "alice:***@127.0.0.1")
    assert "s3cr" not in str(caught.value)
    method, path, auth = _AuthRecorder.seen[-1]
    assert (method, path) == ("PUT", "/metrics/job/ttft_reconcile/deployment/d/mode/run")
    assert base64.b64decode(auth.removeprefix("Basic ")) == b"alice:s3cr@t"


def test_textfile_is_written_even_when_the_push_fails(tmp_path: Path) -> None:
    path = tmp_path / "ttft.prom"
    settings = PublishSettings(pushgateway=f"127.0.0.1:{services.free_port()}", metrics_textfile=str(path),
                               deployment="d")
    with pytest.raises(PublishFailed):
        metrics.publish_success(summary(T0), settings)
    assert "ttft_reconcile_last_success_timestamp_seconds" in path.read_text()
