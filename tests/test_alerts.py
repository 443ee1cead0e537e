"""The Prometheus rules in deploy/prometheus: promtool checks and unit tests, fed also by the real Pushgateway."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client.exposition import delete_from_gateway
from prometheus_client.parser import text_string_to_metric_families

from tests import services
from ttft_reconcile import metrics
from ttft_reconcile.settings import PublishSettings
from ttft_reconcile.summary import RunSummary

RULES = services.REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = services.REPO / "deploy" / "prometheus" / "alerts_test.yml"
# DESIGN.md "Metrics": what the capture exposes in the proxy's own registry
CAPTURE_METRICS = {"ttft_capture_traces_written_total", "ttft_capture_traces_dropped_total",
                   "ttft_capture_hooks_active"}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # promtool's clock starts at 0


@pytest.fixture(scope="module")
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        services.missing("promtool is not installed (apt-get install prometheus)")
    assert exe is not None
    return exe


def run_promtool(promtool: str, *args: str) -> str:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_rules_pass_promtool_check(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "check", "rules", str(RULES))


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(RULE_TESTS))


def test_rules_name_only_metrics_that_exist() -> None:
    text = RULES.read_text()
    used = set(re.findall(r"\b(ttft_(?:reconcile|capture)_[a-z_]+)\b", text))
    recorded = set(re.findall(r"record:\s*(\S+)", text))
    assert used, "no metric names found"
    assert used <= set(metrics.METRIC_NAMES) | CAPTURE_METRICS, used - set(metrics.METRIC_NAMES)
    alerts = re.findall(r"alert:\s*(\S+)", text)
    assert len(alerts) == len(set(alerts)) == 7
    assert recorded == {"ttft_reconcile:no_trace_ratio"}


@pytest.fixture
def deployment(pushgateway: str) -> Iterator[str]:
    name = f"alerts-{uuid.uuid4().hex[:10]}"
    yield name
    delete_from_gateway(pushgateway, metrics.JOB, grouping_key={"deployment": name, "mode": "run"}, timeout=5)


def exposed_series(gateway: str, deployment: str) -> list[str]:
    """Our series as Prometheus scrapes them with honor_labels (empty labels dropped), promtool notation."""
    with urllib.request.urlopen(f"http://{gateway}/metrics", timeout=5) as response:
        text = response.read().decode()
    series = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("deployment") != deployment or not sample.name.startswith("ttft_reconcile_"):
                continue
            labels = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(sample.labels.items()) if v != "")
            series.append(f"{{series: '{sample.name}{{{labels}}}', values: '{sample.value:g}x60'}}")
    return series


def test_alerts_fire_on_what_the_gateway_exposes(
    promtool: str, pushgateway: str, deployment: str, tmp_path: Path
) -> None:
    settings = PublishSettings(pushgateway=pushgateway, deployment=deployment)
    succeeded = RunSummary(
        run_id=1, mode="run", since=None, until=EPOCH, policy="first_chunk", candidates=40,
        outcomes={"repaired": 30, "no_trace": 10}, duration_seconds=3.0, dry_run=False,
        started_at=EPOCH, finished_at=EPOCH, checkpoint=None,
    )
    metrics.publish_success(succeeded, settings)  # succeeded at t=0
    metrics.publish_failure("run", settings, now=datetime(1970, 1, 1, 0, 5, tzinfo=timezone.utc))
    series = exposed_series(pushgateway, deployment)
    assert len(series) == 3 + 8 + 1 + 1  # timestamps, rows per outcome, info, failure; nothing else

    labels = f"{{severity: warning, job: ttft_reconcile, deployment: {deployment}, mode: run}}"
    annotations = json.dumps({
        "summary": f"ttft-reconcile runs are failing ({deployment})",
        "description": "The last incremental run failed and no run has succeeded since, for 15 minutes (about"
                       " three runs). Each failed batch was rolled back; the error line is in the job's log"
                       " (stderr).",
    })
    ratio = f'ttft_reconcile:no_trace_ratio{{deployment="{deployment}",job="ttft_reconcile",mode="run"}}'
    (tmp_path / "t.yml").write_text(f"""
rule_files: ["{RULES}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series: [{", ".join(series)}]
    promql_expr_test:
      - expr: ttft_reconcile:no_trace_ratio
        eval_time: 1m
        exp_samples: [{{labels: '{ratio}', value: 0.25}}]
    alert_rule_test:
      - {{eval_time: 10m, alertname: TTFTReconcileRunsFailing, exp_alerts: []}}
      - eval_time: 40m
        alertname: TTFTReconcileRunsFailing
        exp_alerts: [{{exp_labels: {labels}, exp_annotations: {annotations}}}]
""")
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(tmp_path / "t.yml"))


def test_docs_list_every_metric_and_alert() -> None:
    docs = (services.REPO / "docs" / "metrics.md").read_text()
    for name in [*metrics.METRIC_NAMES, *CAPTURE_METRICS, *re.findall(r"alert:\s*(\S+)", RULES.read_text())]:
        assert f"`{name}" in docs, name


def test_capture_alerts_follow_the_capture() -> None:
    from ttft_reconcile.capture import hooks
    from ttft_reconcile.capture.metrics import DROP_REASONS

    text = RULES.read_text()
    (excluded,) = re.findall(r'ttft_capture_hooks_active\{path!~"([^"]+)"\}', text)
    assert set(excluded.split("|")) == set(hooks.OPTIONAL_PATHS)  # optional paths may be 0 by design
    tested = set(re.findall(r'path="([a-z_]+)"', RULE_TESTS.read_text()))
    assert tested <= set(hooks.PATHS)
    explained = set(re.findall(r"\b([a-z]+_[a-z_]+):", text.split("TTFTCaptureDroppingTraces")[1]))
    assert explained and explained <= set(DROP_REASONS), explained - set(DROP_REASONS)
