"""The run-metrics registry itself: names, labels, values, caps; no service needed."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter

from ttft_reconcile import __version__, metrics
from ttft_reconcile.errors import PublishFailed, UsageError
from ttft_reconcile.outcomes import OUTCOMES
from ttft_reconcile.settings import PublishSettings
from ttft_reconcile.summary import RunSummary

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def summary(**changes: object) -> RunSummary:
    values: dict[str, object] = {
        "run_id": 7, "mode": "run", "since": NOW - timedelta(hours=1), "until": NOW - timedelta(minutes=2),
        "policy": "first_chunk", "candidates": 12, "outcomes": {"repaired": 9, "no_trace": 3},
        "duration_seconds": 4.25, "dry_run": False, "started_at": NOW - timedelta(seconds=5),
        "finished_at": NOW, "checkpoint": NOW - timedelta(minutes=2),
    }
    values.update(changes)
    return RunSummary(**values)  # type: ignore[arg-type]


def registry_for(run: RunSummary, **kwargs: object) -> CollectorRegistry:
    return metrics.registry_of(metrics.success_families(run, now=NOW, **kwargs))  # type: ignore[arg-type]


def test_success_registry_values() -> None:
    registry = registry_for(summary(), checkpoint_lag_seconds=120.0,
                            quantiles={"claude": {"0.5": 0.4, "0.99": 2.5}})
    at = NOW.timestamp()
    assert registry.get_sample_value(metrics.LAST_SUCCESS) == at
    assert registry.get_sample_value(metrics.LAST_RUN) == at
    assert registry.get_sample_value(metrics.LAST_DURATION) == 4.25
    assert registry.get_sample_value(metrics.CHECKPOINT_LAG) == 120.0
    assert registry.get_sample_value(metrics.TTFT, {"model_group": "claude", "quantile": "0.99"}) == 2.5
    assert registry.get_sample_value(metrics.INFO, {"version": __version__, "policy": "first_chunk"}) == 1.0
    assert registry.get_sample_value(metrics.LAST_FAILURE) is None


def test_every_outcome_is_present_zeros_included() -> None:
    registry = registry_for(summary())
    values = {name: registry.get_sample_value(metrics.LAST_ROWS, {"outcome": name}) for name in OUTCOMES}
    assert values["repaired"] == 9 and values["no_trace"] == 3
    assert all(values[name] == 0 for name in OUTCOMES if name not in ("repaired", "no_trace"))


def test_rollback_counts_its_own_outcomes_and_unknown_keys_are_kept() -> None:
    registry = registry_for(summary(mode="rollback", outcomes={"reverted": 4, "skipped_gone": 1}))
    assert registry.get_sample_value(metrics.LAST_ROWS, {"outcome": "reverted"}) == 4
    assert registry.get_sample_value(metrics.LAST_ROWS, {"outcome": "changed"}) == 0
    assert registry.get_sample_value(metrics.LAST_ROWS, {"outcome": "skipped_gone"}) == 1
    assert registry.get_sample_value(metrics.LAST_ROWS, {"outcome": "no_trace"}) is None


def test_only_gauges_and_no_created_series() -> None:
    families = list(registry_for(summary(), quantiles={"m": {"0.5": 0.1}}).collect())
    assert {family.type for family in families} == {"gauge"}
    assert not [s.name for family in families for s in family.samples if s.name.endswith("_created")]
    assert {family.name for family in families} <= set(metrics.METRIC_NAMES)


def _exports_created() -> bool:
    registry = CollectorRegistry()
    Counter("other_total", "another library's counter", registry=registry)
    return registry.get_sample_value("other_created") is not None


def test_process_wide_state_is_left_alone(tmp_path: Path) -> None:
    before = _exports_created()
    metrics.publish_success(summary(), PublishSettings(metrics_textfile=str(tmp_path / "m.prom")))
    assert _exports_created() == before  # other libraries' counters keep their `_created` series
    assert prometheus_client.REGISTRY.get_sample_value(metrics.LAST_RUN) is None


def test_model_groups_are_capped_in_mapping_order(caplog: pytest.LogCaptureFixture) -> None:
    quantiles = {f"group-{i:02d}": {"0.5": float(i)} for i in range(30)}
    with caplog.at_level(logging.WARNING, logger="ttft_reconcile.metrics"):
        registry = registry_for(summary(), quantiles=quantiles, max_model_groups=5)
    published = {s.labels["model_group"] for f in registry.collect() if f.name == metrics.TTFT for s in f.samples}
    assert published == {f"group-{i:02d}" for i in range(5)}
    assert "30 model groups" in caplog.text


def test_missing_quantiles_are_left_out_and_empty_group_is_named() -> None:
    registry = registry_for(summary(), quantiles={"": {"0.5": 0.2, "0.9": float("nan"), "0.99": None}})
    assert registry.get_sample_value(metrics.TTFT, {"model_group": "unknown", "quantile": "0.5"}) == 0.2
    assert registry.get_sample_value(metrics.TTFT, {"model_group": "unknown", "quantile": "0.9"}) is None
    assert registry.get_sample_value(metrics.TTFT, {"model_group": "unknown", "quantile": "0.99"}) is None


def test_no_quantiles_means_no_ttft_family() -> None:
    assert metrics.TTFT not in {family.name for family in registry_for(summary()).collect()}


def test_grouping_key_has_instance_only_for_backfill() -> None:
    assert metrics.grouping_key("run", "prod", "host:1") == {"deployment": "prod", "mode": "run"}
    assert metrics.grouping_key("backfill", "prod", "pod-3:1") == {
        "deployment": "prod", "mode": "backfill", "instance": "pod-3:1"}
    assert metrics.grouping_key("backfill", "prod", None) == {"deployment": "prod", "mode": "backfill"}


def test_checkpoint_lag_naive_is_utc_and_never_negative() -> None:
    assert metrics.checkpoint_lag(datetime(2026, 11, 30, 11, 55), NOW) == 300.0
    assert metrics.checkpoint_lag(NOW + timedelta(seconds=3), NOW) == 0.0
    assert metrics.checkpoint_lag(None, NOW) is None


def test_failure_families_hold_only_the_two_timestamps() -> None:
    registry = metrics.registry_of(metrics.failure_families(NOW))
    names = {family.name for family in registry.collect()}
    assert names == {metrics.LAST_RUN, metrics.LAST_FAILURE}
    assert registry.get_sample_value(metrics.LAST_FAILURE) == NOW.timestamp()


def test_no_target_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="ttft_reconcile"):
        result = metrics.publish_success(summary(), PublishSettings(deployment="prod"))
    assert result.skipped == "no target" and not result.published
    assert [(r.levelname, r.name) for r in caplog.records] == [("INFO", "ttft_reconcile.metrics")]


def test_dry_run_publishes_nothing_even_with_an_unreachable_target() -> None:
    settings = PublishSettings(pushgateway="127.0.0.1:1", metrics_textfile="/nonexistent/dir/x.prom")
    result = metrics.publish_success(summary(dry_run=True), settings)
    assert result.skipped == "dry run"
    assert metrics.publish_failure("run", settings, now=NOW, dry_run=True).skipped == "dry run"


@pytest.mark.parametrize("address", ["127.0.0.1:9091", "http://gw.example:9091", "https://u:p@gw.example/prefix"])
def test_gateway_addresses_accepted(address: str) -> None:
    assert metrics.check_address(address) == address


@pytest.mark.parametrize("address", ["ftp://127.0.0.1:1", "http://", "unix:///run/x.sock"])
def test_gateway_addresses_rejected_before_any_connection(address: str) -> None:
    with pytest.raises(UsageError) as caught:
        metrics.check_address(address)
    assert caught.value.exit_code == 2
    with pytest.raises(PublishFailed, match="not a host:port or http"):
        metrics.publish_failure("run", PublishSettings(pushgateway=address, deployment="d"), now=NOW)


def test_rejected_address_hides_its_password() -> None:
    with pytest.raises(UsageError) as caught:
        metrics.check_address("ftp://bob:hunter2@127.0.0.1:1")
    assert "hunter2" not in str(caught.value) and "bob:***@" in str(caught.value)
