"""A 20k-row run of the scale benchmark (`python -m bench.scale`), so it cannot rot.

No timing is asserted: only that every measurement ran on real data and was recorded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parent.parent


def test_bench_scale_smoke(pg_admin_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--rows", "20000", "--no-profile", "--run-samples", "3", "--rounds", "2",
         "--database-url", pg_admin_url, "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio job / baseline" in done.stdout and "(4) EXPLAIN" in done.stdout
    r = json.loads(out.read_text())
    assert not out.with_name(out.name + ".partial").exists()
    assert r["cores"] and r["versions"]["postgresql"] and r["versions"]["ttft-reconcile"]
    assert r["disk"]["estimated_bytes"] > 0

    small, big = r["seed_small"], r["seed_big"]
    assert small["rows"] == 20000 and big["rows"] == 100000
    assert small["table_toast_bytes_per_row"] >= 2000  # >= 2 KB of metadata that does not compress away
    assert small["kinds"]["broken_stream"] > 1000 and small["kinds"]["broken_untraced"] > 0

    for key in ("run_small", "run_big", "backfill_w1", "backfill_dry", "backfill_w2"):
        run = r[key]
        assert run["exit_code"] == 0, run["stderr_tail"]
        assert run["peak_rss_mib"] > 20
        outcomes = run["summary"]["outcomes"]
        assert sum(outcomes.values()) == run["summary"]["candidates"]
    w1, w2 = r["backfill_w1"]["summary"], r["backfill_w2"]["summary"]
    assert w1["outcomes"]["repaired"] > 1000
    assert w2["outcomes"] == w1["outcomes"]  # restored between runs: the same data, the same answers
    assert r["backfill_dry"]["summary"]["outcomes"] == w1["outcomes"]  # decide only: the same decisions
    floor = r["write_floor"]
    assert floor["rows"] == r["baseline"]["updated"]  # the writes alone, on exactly the baseline's rows
    assert floor["update_seconds"] > 0 and floor["audit_insert_seconds"] > 0
    spent = r["profiled_statement_seconds"]
    # a backfill decides ahead of its writes, in its own thread
    assert spent["batch decide (read, join, decide, stage) (ahead of the writes)"] > 0
    assert spent["batch write (guarded UPDATE, audit)"] > 0
    # the rollup is rebuilt behind the batches or by the closing refresh, in any share
    assert spent.get("ttft_daily refresh", 0) + spent.get("ttft_daily refresh (behind the batches)", 0) > 0
    assert r["profiled_statement_counts"]["batch write (guarded UPDATE, audit)"] >= 2
    assert r["baseline"]["updated"] > 1000
    small_hour, big_hour = r["run_small"]["summary"], r["run_big"]["summary"]
    # `run` is timed three times per table and the median one kept
    assert len(r["run_small_samples"]) == len(r["run_big_samples"]) == 3
    assert small_hour["duration_seconds"] == sorted(r["run_small_samples"])[1]
    assert big_hour["duration_seconds"] == sorted(r["run_big_samples"])[1]
    assert small_hour["candidates"] > 0 and big_hour["candidates"] > 0
    # both runs cover the data's last hour (same traffic rate): similar work, longer history
    assert 0.5 < big_hour["candidates"] / small_hour["candidates"] < 2.0

    explained = r["explain_small"] + r["explain_big"]
    assert len(explained) >= 4
    assert all(e["spend_logs_scans"] for e in explained)
    figures = r["figures"]
    assert figures["backfill_vs_baseline"] > 0 and figures["run_big_vs_small"] > 0
    # the baseline and the backfill are timed twice each, alternated; the median (upper) is kept
    assert len(r["baseline_samples"]) == len(r["backfill_w1_samples"]) == 2
    assert r["baseline"]["seconds"] == sorted(r["baseline_samples"])[1]
    assert r["backfill_w1"]["job_seconds"] == sorted(r["backfill_w1_samples"])[1]
    repaired = r["backfill_w1"]["summary"]["outcomes"]["repaired"]
    assert figures["backfill_vs_baseline_per_repaired_row"] == pytest.approx(
        (figures["backfill_seconds"] / repaired) / (r["baseline"]["seconds"] / r["baseline"]["updated"]))
    assert "per repaired row" in done.stdout
    assert figures["backfill_vs_audited_write_floor"] == pytest.approx(
        figures["backfill_seconds"] / (floor["update_seconds"] + floor["audit_insert_seconds"]))
    assert "ratio job / audited writes" in done.stdout
    assert figures["backfill_w2_vs_baseline"] == pytest.approx(
        r["backfill_w2"]["job_seconds"] / r["baseline"]["seconds"])
    assert "--workers 2 / baseline" in done.stdout

    names = re.findall(r" into (ttft_bench_\w+)", done.stderr)
    assert len(names) == 2
    with psycopg.connect(pg_admin_url) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = ANY(%s)", (names,)).fetchone()
    assert left == (0,)  # the scratch databases are dropped
