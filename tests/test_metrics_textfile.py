"""Run metrics as a node_exporter textfile: atomic replacement, labels, failures keeping the last success."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ttft_reconcile import __version__, metrics
from ttft_reconcile.errors import EXIT_PUBLISH_FAILED, PublishFailed
from ttft_reconcile.settings import PublishSettings
from ttft_reconcile.summary import RunSummary

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def summary(finished: datetime, **changes: object) -> RunSummary:
    values: dict[str, object] = {
        "run_id": 1, "mode": "run", "since": None, "until": finished, "policy": "first_output",
        "candidates": 3, "outcomes": {"repaired": 3}, "duration_seconds": 1.0, "dry_run": False,
        "started_at": finished - timedelta(seconds=1), "finished_at": finished, "checkpoint": None,
    }
    values.update(changes)
    return RunSummary(**values)  # type: ignore[arg-type]


def samples(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


RUN_LABELS = frozenset({("deployment", "prod"), ("mode", "run")})


def test_success_writes_every_series_with_deployment_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "ttft_reconcile.prom"
    settings = PublishSettings(metrics_textfile=str(path), deployment="prod")
    result = metrics.publish_success(summary(T0), settings, quantiles={"m": {"0.5": 0.25}})
    assert result.textfile == str(path) and result.method is None
    found = samples(path)
    assert found[(metrics.LAST_SUCCESS, RUN_LABELS)] == T0.timestamp()
    assert found[(metrics.LAST_ROWS, RUN_LABELS | {("outcome", "repaired")})] == 3
    assert found[(metrics.TTFT, RUN_LABELS | {("model_group", "m"), ("quantile", "0.5")})] == 0.25
    assert found[(metrics.INFO, RUN_LABELS | {("version", __version__), ("policy", "first_output")})] == 1
    assert os.listdir(tmp_path) == ["ttft_reconcile.prom"]  # no temp file left behind


def test_backfill_worker_is_not_an_instance_label_in_a_textfile(tmp_path: Path) -> None:
    path = tmp_path / "backfill.prom"
    metrics.publish_success(summary(T0, mode="backfill", worker="host:42"),
                            PublishSettings(metrics_textfile=str(path), deployment="prod"))
    labels = {name for (_, series) in samples(path) for name, _ in series}
    assert "instance" not in labels and "job" not in labels  # node_exporter's scrape sets those


def test_replacement_is_atomic_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "ttft_reconcile.prom"
    settings = PublishSettings(metrics_textfile=str(path), deployment="prod")
    metrics.publish_success(summary(T0), settings)
    before = path.read_bytes()
    with open(path, "rb") as reader:  # a scrape in progress holds the old file open
        inode = os.fstat(reader.fileno()).st_ino
        metrics.publish_success(summary(T0 + timedelta(minutes=5)), settings)
        assert reader.read() == before  # unchanged: the new content went to a new inode (rename)
    assert os.stat(path).st_ino != inode
    assert samples(path)[(metrics.LAST_SUCCESS, RUN_LABELS)] == (T0 + timedelta(minutes=5)).timestamp()


def test_failure_keeps_the_last_success_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ttft_reconcile.prom"
    settings = PublishSettings(metrics_textfile=str(path), deployment="prod")
    metrics.publish_success(summary(T0), settings, quantiles={"m": {"0.9": 0.5}})
    failed_at = T0 + timedelta(minutes=5)
    metrics.publish_failure("run", settings, now=failed_at)
    metrics.publish_failure("run", settings, now=failed_at + timedelta(minutes=5))
    found = samples(path)
    assert found[(metrics.LAST_SUCCESS, RUN_LABELS)] == T0.timestamp()
    assert found[(metrics.LAST_FAILURE, RUN_LABELS)] == (failed_at + timedelta(minutes=5)).timestamp()
    assert found[(metrics.LAST_RUN, RUN_LABELS)] == (failed_at + timedelta(minutes=5)).timestamp()
    assert found[(metrics.TTFT, RUN_LABELS | {("model_group", "m"), ("quantile", "0.9")})] == 0.5
    assert sum(1 for name, _ in found if name == metrics.LAST_FAILURE) == 1

    metrics.publish_success(summary(failed_at + timedelta(minutes=10)), settings)
    assert not [name for name, _ in samples(path) if name == metrics.LAST_FAILURE]


def test_failure_over_an_unparsable_file_rewrites_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ttft_reconcile.prom"
    path.write_text("this is { not the text format\n")
    with caplog.at_level(logging.WARNING, logger="ttft_reconcile.metrics"):
        metrics.publish_failure("run", PublishSettings(metrics_textfile=str(path), deployment="prod"), now=T0)
    assert {name for name, _ in samples(path)} == {metrics.LAST_RUN, metrics.LAST_FAILURE}
    assert "does not parse" in caplog.text


def test_unwritable_location_is_publish_failed(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "ttft_reconcile.prom"
    with pytest.raises(PublishFailed) as caught:
        metrics.publish_success(summary(T0), PublishSettings(metrics_textfile=str(path), deployment="prod"))
    assert caught.value.exit_code == EXIT_PUBLISH_FAILED
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_a_name_node_exporter_ignores_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ttft_reconcile.metrics"):
        metrics.publish_success(summary(T0), PublishSettings(metrics_textfile=str(tmp_path / "m.txt")))
    assert "*.prom" in caplog.text
