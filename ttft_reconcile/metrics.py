"""Run metrics: gauges in a private registry, pushed to a Pushgateway and/or written to a textfile.

DESIGN.md "Metrics". On success the whole group is replaced (HTTP PUT); on failure only the
last-run and last-failure timestamps are sent (HTTP POST), so the last success survives.
Timestamps are Unix seconds (UTC); durations and lags are seconds. This module never queries
the database: the caller hands in the TTFT quantiles and the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import write_to_textfile
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ttft_reconcile import __version__
from ttft_reconcile import pushgateway as gateway
from ttft_reconcile.errors import PublishFailed
from ttft_reconcile.outcomes import OUTCOMES, ROLLBACK_OUTCOMES
from ttft_reconcile.settings import PublishSettings
from ttft_reconcile.summary import RunSummary

log = logging.getLogger(__name__)
check_address = gateway.check_address  # for the CLI: a usage error before the run, not exit 3 after it

JOB: Final = "ttft_reconcile"
LAST_SUCCESS: Final = "ttft_reconcile_last_success_timestamp_seconds"
LAST_RUN: Final = "ttft_reconcile_last_run_timestamp_seconds"
LAST_FAILURE: Final = "ttft_reconcile_last_failure_timestamp_seconds"
LAST_DURATION: Final = "ttft_reconcile_last_run_duration_seconds"
LAST_ROWS: Final = "ttft_reconcile_last_run_rows"
CHECKPOINT_LAG: Final = "ttft_reconcile_checkpoint_lag_seconds"
TTFT: Final = "ttft_reconcile_ttft_seconds"
INFO: Final = "ttft_reconcile_info"
METRIC_NAMES: Final[tuple[str, ...]] = (
    LAST_SUCCESS, LAST_RUN, LAST_FAILURE, LAST_DURATION, LAST_ROWS, CHECKPOINT_LAG, TTFT, INFO,
)
FAILURE_METRICS: Final[tuple[str, ...]] = (LAST_RUN, LAST_FAILURE)
HELP: Final[dict[str, str]] = {
    LAST_SUCCESS: "Unix time of the last successful run.",
    LAST_RUN: "Unix time of the last run, successful or not.",
    LAST_FAILURE: "Unix time of the last failed run.",
    LAST_DURATION: "Wall time of the last successful run, seconds.",
    LAST_ROWS: "Candidate rows of the last successful run, by outcome (rollback: corrections).",
    CHECKPOINT_LAG: "Seconds from the incremental checkpoint to the end of the last successful run.",
    TTFT: "TTFT quantiles over the run's window (original + reconciled rows), seconds.",
    INFO: "Version and policy of the last successful run (always 1).",
}
MAX_MODEL_GROUPS: Final = 25

# model_group -> quantile label ("0.5", "0.95", ...) -> seconds
Quantiles = Mapping[str, Mapping[str, float | None]]


@dataclass(frozen=True)
class PublishResult:
    """What was published: `method` is the gateway call (PUT, POST, DELETE) or None."""

    method: str | None = None
    pushgateway: str | None = None  # redacted address
    textfile: str | None = None
    grouping_key: dict[str, str] = field(default_factory=dict)
    series: int = 0
    skipped: str = ""  # why nothing was published ("dry run", "no target")

    @property
    def published(self) -> bool:
        return self.method is not None or self.textfile is not None


class _Snapshot(Collector):
    """A fixed list of metric families: no live metric objects, hence no `_created` series."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return list(self._families)


def registry_of(families: Iterable[Metric]) -> CollectorRegistry:
    """A private registry (never the process-global one) holding `families`."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Snapshot(families))
    return registry


def grouping_key(mode: str, deployment: str, worker: str | None = None) -> dict[str, str]:
    """Pushgateway grouping labels besides job: deployment, mode, and instance for backfill workers."""
    key = {"deployment": deployment, "mode": mode}
    if mode == "backfill" and worker:
        key["instance"] = worker
    return key


def unix_seconds(instant: datetime) -> float:
    """Unix time of `instant`; a naive value is taken as UTC."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return instant.timestamp()


def checkpoint_lag(checkpoint: datetime | None, now: datetime) -> float | None:
    """Seconds from the incremental checkpoint to `now` (never negative); None without a checkpoint."""
    if checkpoint is None:
        return None
    return max(0.0, unix_seconds(now) - unix_seconds(checkpoint))


def _gauge(name: str, labels: Mapping[str, str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, HELP[name], labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def success_families(
    summary: RunSummary,
    *,
    now: datetime,
    quantiles: Quantiles | None = None,
    checkpoint_lag_seconds: float | None = None,
    labels: Mapping[str, str] | None = None,
    max_model_groups: int = MAX_MODEL_GROUPS,
) -> list[Metric]:
    """The whole group a successful run publishes; `labels` go on every series (textfile)."""
    base = dict(labels or {})
    at = unix_seconds(now)
    families: list[Metric] = [
        _gauge(LAST_SUCCESS, base, at),
        _gauge(LAST_RUN, base, at),
        _gauge(LAST_DURATION, base, summary.duration_seconds),
    ]
    rows = GaugeMetricFamily(LAST_ROWS, HELP[LAST_ROWS], labels=[*base, "outcome"])
    names = ROLLBACK_OUTCOMES if summary.mode == "rollback" else OUTCOMES
    for outcome in dict.fromkeys([*names, *summary.outcomes]):
        rows.add_metric([*base.values(), outcome], float(summary.outcomes.get(outcome, 0)))
    families.append(rows)
    if checkpoint_lag_seconds is not None:
        families.append(_gauge(CHECKPOINT_LAG, base, checkpoint_lag_seconds))
    ttft = _ttft_family(quantiles or {}, base, max_model_groups)
    if ttft.samples:
        families.append(ttft)
    families.append(_gauge(INFO, {**base, "version": __version__, "policy": summary.policy}, 1.0))
    return families


def _ttft_family(quantiles: Quantiles, base: Mapping[str, str], cap: int) -> GaugeMetricFamily:
    family = GaugeMetricFamily(TTFT, HELP[TTFT], labels=[*base, "model_group", "quantile"])
    groups = list(quantiles.items())
    if len(groups) > cap:
        log.warning("%d model groups have TTFT quantiles; publishing the first %d only", len(groups), cap)
    for group, by_quantile in groups[:cap]:
        for quantile, seconds in by_quantile.items():
            if seconds is None or not math.isfinite(seconds):
                continue
            family.add_metric([*base.values(), str(group) or "unknown", str(quantile)], float(seconds))
    return family


def failure_families(now: datetime, labels: Mapping[str, str] | None = None) -> list[Metric]:
    """Only the two timestamps a failed run updates."""
    base = dict(labels or {})
    at = unix_seconds(now)
    return [
        _gauge(LAST_RUN, base, at),
        _gauge(LAST_FAILURE, base, at),
    ]


def _series(families: Iterable[Metric]) -> int:
    return sum(len(family.samples) for family in families)


def publish_success(
    summary: RunSummary,
    settings: PublishSettings,
    *,
    quantiles: Quantiles | None = None,
    checkpoint_lag_seconds: float | None = None,
    now: datetime | None = None,
    max_model_groups: int = MAX_MODEL_GROUPS,
) -> PublishResult:
    """Publish a successful run: PUT the whole group (or DELETE it) and/or replace the textfile.

    `now` (aware UTC; default `summary.finished_at`) stamps the timestamps; the checkpoint lag
    defaults to `now - summary.checkpoint`. Raises PublishFailed (one redacted line).
    """
    if summary.dry_run:
        log.info("dry run: no metrics published")
        return PublishResult(skipped="dry run")
    if not settings.pushgateway and not settings.metrics_textfile:
        log.info("metrics not published: neither --pushgateway nor --metrics-textfile is set")
        return PublishResult(skipped="no target")
    at = now or summary.finished_at
    lag = checkpoint_lag_seconds
    if lag is None:
        lag = checkpoint_lag(summary.checkpoint, at)
    key = grouping_key(summary.mode, settings.deployment, summary.worker)

    def families(labels: Mapping[str, str] | None) -> list[Metric]:
        return success_families(summary, now=at, quantiles=quantiles, checkpoint_lag_seconds=lag,
                                labels=labels, max_model_groups=max_model_groups)

    errors: list[str] = []
    textfile = None
    if settings.metrics_textfile:
        try:
            write_textfile(settings.metrics_textfile, families(_textfile_labels(key)))
            textfile = settings.metrics_textfile
        except PublishFailed as error:
            errors.append(str(error))
    method = None
    pushed: list[Metric] = []
    if settings.pushgateway:
        wanted = "DELETE" if settings.delete_group_on_success else "PUT"
        pushed = [] if wanted == "DELETE" else families(None)
        try:
            gateway.call(wanted, settings.pushgateway, JOB, key, registry_of(pushed), settings.push_timeout_seconds)
            method = wanted
        except PublishFailed as error:
            errors.append(str(error))
    if errors:
        raise PublishFailed("; ".join(errors))
    return PublishResult(method=method, pushgateway=gateway.shown(settings.pushgateway), textfile=textfile,
                         grouping_key=key, series=_series(pushed))


def publish_failure(
    mode: str,
    settings: PublishSettings,
    *,
    now: datetime,
    worker: str | None = None,
    dry_run: bool = False,
) -> PublishResult:
    """Publish a failed run: POST only the last-run and last-failure timestamps (aware UTC `now`).

    The textfile keeps every other series it held. Raises PublishFailed (one redacted line);
    the caller's own failure should win over it.
    """
    if dry_run:
        log.info("dry run: no metrics published")
        return PublishResult(skipped="dry run")
    if not settings.pushgateway and not settings.metrics_textfile:
        log.info("metrics not published: neither --pushgateway nor --metrics-textfile is set")
        return PublishResult(skipped="no target")
    key = grouping_key(mode, settings.deployment, worker)
    errors: list[str] = []
    textfile = None
    if settings.metrics_textfile:
        try:
            kept = read_textfile(settings.metrics_textfile, drop=FAILURE_METRICS)
            write_textfile(settings.metrics_textfile, [*kept, *failure_families(now, _textfile_labels(key))])
            textfile = settings.metrics_textfile
        except PublishFailed as error:
            errors.append(str(error))
    method = None
    pushed = failure_families(now)
    if settings.pushgateway:
        try:
            gateway.call("POST", settings.pushgateway, JOB, key, registry_of(pushed), settings.push_timeout_seconds)
            method = "POST"
        except PublishFailed as error:
            errors.append(str(error))
    if errors:
        raise PublishFailed("; ".join(errors))
    return PublishResult(method=method, pushgateway=gateway.shown(settings.pushgateway), textfile=textfile,
                         grouping_key=key, series=_series(pushed))


def _textfile_labels(key: Mapping[str, str]) -> dict[str, str]:
    # node_exporter's scrape sets job and instance itself; a worker would clash with `instance`
    return {name: value for name, value in key.items() if name in ("deployment", "mode")}


def write_textfile(path: str, families: Iterable[Metric]) -> None:
    """Replace `path` atomically (temp file + rename) for node_exporter's textfile collector."""
    if not path.endswith(".prom"):
        log.warning("node_exporter's textfile collector only reads *.prom files; writing %s anyway", path)
    try:
        write_to_textfile(path, registry_of(families))
    except OSError as error:
        detail = error.strerror or str(error)
        raise PublishFailed(gateway.one_line(f"could not write metrics textfile {path}: {detail}")) from None
    log.info("wrote metrics textfile %s", path)


def read_textfile(path: str, *, drop: Iterable[str] = ()) -> list[Metric]:
    """The families in an existing textfile except `drop`; [] if it is missing or unreadable."""
    dropped = set(drop)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    except OSError as error:
        log.warning("could not read metrics textfile %s (%s); rewriting it", path, error)
        return []
    try:
        return [family for family in text_string_to_metric_families(text) if family.name not in dropped]
    except ValueError as error:
        log.warning("metrics textfile %s does not parse (%s); rewriting it", path, error)
        return []
