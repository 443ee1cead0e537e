"""deploy/grafana/ttft_reconcile.json: structure, every SQL query run (macros expanded) as the
dashboard role, and every PromQL expression checked by promtool against the metric names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from tests import services
from tests.publish_data import UTC, connect, correct, run_row, spend_log
from ttft_reconcile import metrics
from ttft_reconcile.dashboard import refresh_ttft_daily

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "ttft_reconcile.json"
ROLES_SQL = DASHBOARD.parent.parent / "sql" / "roles.sql"
FROM = datetime(2026, 11, 10, tzinfo=UTC)
TO = FROM + timedelta(days=2)
PG_TYPE = "grafana-postgresql-datasource"
GRAFANA_MACROS = {"__timeFilter", "__timeFrom", "__timeTo", "__timeGroupAlias", "__rate_interval", "__all"}
KNOWN_METRICS = {
    metrics.LAST_SUCCESS, metrics.LAST_RUN, metrics.LAST_FAILURE, metrics.LAST_DURATION, metrics.LAST_ROWS,
    metrics.CHECKPOINT_LAG, metrics.TTFT, metrics.INFO,
    "ttft_capture_traces_written_total", "ttft_capture_traces_dropped_total", "ttft_capture_hooks_active",
}
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _targets(kind: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            if target["datasource"]["type"] == kind:
                yield panel, target


def _literal(value: datetime) -> str:
    return "'" + value.strftime("%Y-%m-%dT%H:%M:%SZ") + "'"


def expand_sql(sql: str, since: datetime, until: datetime, model_groups: list[str]) -> str:
    """Grafana's Postgres macros and a multi-value template variable, as Grafana expands them."""
    def group_alias(match: re.Match[str]) -> str:
        seconds = int(match.group(2)) * _UNIT_SECONDS[match.group(3)]
        return f'floor(extract(epoch from {match.group(1)})/{seconds})*{seconds} AS "time"'

    sql = re.sub(r"\$__timeGroupAlias\(([^,]+),\s*'(\d+)([smhd])'\)", group_alias, sql)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 lambda m: f"{m.group(1)} BETWEEN {_literal(since)} AND {_literal(until)}", sql)
    sql = sql.replace("$__timeFrom()", _literal(since)).replace("$__timeTo()", _literal(until))
    quoted = ",".join("'" + g.replace("'", "''") + "'" for g in model_groups)
    sql = sql.replace("$model_group", quoted)
    assert "$" not in sql, f"unexpanded macro in {sql}"
    return sql


def test_structure() -> None:
    board = _dashboard()
    assert board["uid"] == "ttft-reconcile" and board["title"] and isinstance(board["schemaVersion"], int)
    assert board["timezone"] == "utc"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["ds_postgres"]["query"] == PG_TYPE and variables["ds_prometheus"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    boxes = []
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "xywh") and grid["x"] + grid["w"] <= 24
        boxes.append((grid["x"], grid["y"], grid["x"] + grid["w"], grid["y"] + grid["h"], panel["title"]))
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        uid = panel["datasource"]["uid"]
        assert uid in ("${ds_postgres}", "${ds_prometheus}")
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
            assert not overlap, f"panels overlap: {a[4]} / {b[4]}"
    referenced = set(re.findall(r"\$(\w+)", DASHBOARD.read_text().replace("${", "$")))
    assert referenced <= set(variables) | GRAFANA_MACROS, referenced - set(variables) - GRAFANA_MACROS
    assert sum(1 for _ in _targets(PG_TYPE)) >= 6 and sum(1 for _ in _targets("prometheus")) >= 6


@pytest.fixture
def dashboard_url(db_url: str) -> Iterator[str]:
    """Seeded data, ttft_daily refreshed, and a login in the dashboard group role of roles.sql."""
    with connect(db_url) as conn:
        run = run_row(conn)
        for i in range(6):
            start = FROM + timedelta(hours=3 + (24 if i % 3 == 0 else 0), minutes=i)
            spend_log(conn, f"orig-{i}", start, ttft_ms=150 + 40 * i, model_group="claude-sonnet")
            broken = spend_log(conn, f"fix-{i}", start, ttft_ms=None, model_group="gpt-4o", provider="openai",
                               call_type="aresponses")
            correct(conn, broken, run, ttft_ms=200 + 10 * i)
            spend_log(conn, f"unres-{i}", start, ttft_ms=None, model_group="claude-sonnet")
        assert refresh_ttft_daily(conn, [FROM.date(), (FROM + timedelta(days=1)).date()]) > 0
        conn.execute(text("UPDATE ttft_reconcile.runs SET started_at = :at, finished_at = :at + interval '4 s'"),
                     {"at": FROM + timedelta(hours=30)})
    login = f"ttft_test_grafana_{datetime.now().microsecond}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(ROLES_SQL.read_text())
        conn.execute(f'CREATE ROLE "{login}" LOGIN IN ROLE ttft_reconcile_dashboard')
    parts = db_url.split("://", 1)
    host = parts[1].rsplit("@", 1)[-1]
    try:
        yield f"{parts[0]}://{login}@{host}"
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'")
            conn.execute(f'DROP OWNED BY "{login}"')
            conn.execute(f'DROP ROLE "{login}"')


def test_every_sql_query_runs_as_the_dashboard_role(dashboard_url: str) -> None:
    board = _dashboard()
    variable_sql = next(v["query"] for v in board["templating"]["list"] if v["name"] == "model_group")
    with psycopg.connect(dashboard_url) as conn:
        groups = [r[0] for r in conn.execute(expand_sql(variable_sql, FROM, TO, [])).fetchall()]
        assert groups == ["claude-sonnet", "gpt-4o"]
        results = {}
        for panel, target in _targets(PG_TYPE):
            rows = conn.execute(expand_sql(target["rawSql"], FROM, TO, groups)).fetchall()
            results[panel["title"]] = rows
            assert rows, f"no rows for panel {panel['title']!r}"
            if target["format"] == "time_series":
                # Grafana needs a "time" column in epoch seconds on day boundaries (UTC)
                names = [d.name for d in conn.execute(expand_sql(target["rawSql"], FROM, TO, groups)).description]
                assert names[0] == "time"
                assert all(float(r[0]) % 86400 == 0 for r in rows)
    by_source = results["Rows per UTC day by source"]
    assert [tuple(int(v) for v in r[1:]) for r in by_source] == [(4, 4, 4), (2, 2, 2)]
    live = {r[0]: r for r in results["Live TTFT percentiles over the range (spend_logs_ttft)"]}
    assert live["gpt-4o"][5] == 6 and live["claude-sonnet"][6] == 6


def test_prometheus_expressions_use_our_metrics_and_parse(tmp_path: Path) -> None:
    exprs = [t["expr"] for _, t in _targets("prometheus")]
    variable = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "deployment")
    exprs.append(variable["definition"].replace("label_values(", "").split(",")[0])
    for expr in exprs:
        names = set(re.findall(r"\b(ttft_(?:reconcile|capture)_[a-z_]+)\b", expr))
        assert names and names <= KNOWN_METRICS, expr
    promtool = shutil.which("promtool")
    if promtool is None:
        services.missing("promtool is not installed (apt-get install prometheus)")
    assert promtool is not None
    rules = tmp_path / "grafana_exprs.yml"
    lines = ["groups:", "  - name: grafana", "    rules:"]
    for i, expr in enumerate(exprs):
        concrete = expr.replace("$__rate_interval", "5m").replace("$deployment", ".*")
        lines += [f"      - record: grafana:expr_{i}", f"        expr: {json.dumps(concrete)}"]
    rules.write_text("\n".join(lines) + "\n")
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout
