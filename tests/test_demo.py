"""`ttft-reconcile demo`: through click's CliRunner and through the installed console script.

Every run starts its own embedded Postgres (the demo never uses TEST_DATABASE_URL) and must
leave nothing behind: no data directory, no server process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest
from click.testing import CliRunner

from tests import services
from ttft_reconcile import demo
from ttft_reconcile.cli import cli
from ttft_reconcile.outcomes import OUTCOMES


def _dir_from(stderr: str) -> Path:
    """The data directory a demo announced on stderr ("starting an embedded Postgres in DIR")."""
    match = re.search(r"starting an embedded Postgres in (\S+)", stderr)
    assert match, stderr
    return Path(match.group(1).rstrip(" ."))


def _servers_in(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and any(str(path) in part for part in cmdline):
            found.append(proc)
    return found


def _console_script() -> str:
    beside = Path(sys.executable).parent / "ttft-reconcile"
    found = str(beside) if beside.exists() else shutil.which("ttft-reconcile")
    if found is None:
        services.missing("the ttft-reconcile console script is not installed (pip install .)")
    return found


def test_demo_json_reports_outcomes_that_add_up_and_match_the_truth() -> None:
    result = CliRunner().invoke(cli, ["demo", "--rows", "2000", "--json", "--seed", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    summary = report["summary"]
    assert summary["mode"] == "backfill" and summary["policy"] == "first_chunk"
    assert set(summary["outcomes"]) == set(OUTCOMES)
    assert sum(summary["outcomes"].values()) == summary["candidates"] > 0
    assert summary["outcomes"]["repaired"] > 0
    assert report["agrees_with_ground_truth"] is True
    assert report["rows"] == 2000 and report["traces"] > 0
    assert report["kept"] is False and report["url"] is None
    groups = {g["model_group"]: g for g in report["ttft_ms"]}
    sonnet = groups["claude-sonnet-4-5"]
    assert sonnet["after_p50"] < sonnet["before_p50"]  # the fallback made TTFT equal the whole stream
    assert report["examples"] and all(e["new"] < e["old"] for e in report["examples"] if e["old"])
    data_dir = Path(report["data_dir"])
    assert data_dir.name.startswith(demo.DIR_PREFIX)
    assert not data_dir.exists() and not _servers_in(data_dir)  # stopped and deleted


def test_demo_text_through_the_console_script_new_era() -> None:
    done = subprocess.run(
        [_console_script(), "demo", "--rows", "2000", "--era", "new", "--policy", "first_visible"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "1.105+-era SpendLogs: 2,000 requests" in out
    assert "policy first_visible" in out
    assert "matches the generator's ground truth: yes, row by row" in out
    assert "claude-sonnet-4-5" in out and "msg_" in out  # provider ids in the examples
    assert "demo: stopping the embedded Postgres" in done.stderr
    data_dir = _dir_from(done.stderr)
    assert data_dir.name.startswith(demo.DIR_PREFIX) and data_dir.parent == demo.demo_parent()
    assert not data_dir.exists() and not _servers_in(data_dir)


def test_keep_leaves_a_working_server_and_stop_removes_it() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["demo", "--rows", "1000", "--json", "--keep"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    data_dir = Path(report["data_dir"])
    try:
        assert report["kept"] is True and data_dir.name.startswith(demo.DIR_PREFIX)
        assert oct(data_dir.stat().st_mode & 0o777) == oct(0o755)
        with psycopg.connect(report["url"]) as conn:
            rows = conn.execute('SELECT count(*) FROM "LiteLLM_SpendLogs"').fetchone()
            corrections = conn.execute("SELECT count(*) FROM ttft_reconcile.corrections").fetchone()
        assert rows == (1000,)
        assert corrections is not None and corrections[0] == report["summary"]["outcomes"]["repaired"]
    finally:
        stopped = runner.invoke(cli, ["demo", "--stop", str(data_dir)], catch_exceptions=False)
    assert stopped.exit_code == 0, stopped.output
    assert not data_dir.exists()
    assert not _servers_in(data_dir)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(report["url"], connect_timeout=3)


def test_stop_refuses_a_directory_the_demo_did_not_make(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--stop", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a directory left by" in result.stderr
    assert tmp_path.exists()


def test_sigterm_stops_the_server_and_deletes_its_data() -> None:
    proc = subprocess.Popen(
        [_console_script(), "demo", "--rows", "400000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        seen = ""
        for line in proc.stderr:  # wait for the server to be up and busy
            seen += line
            if "writing" in line:
                break
        data_dir = _dir_from(seen)
        assert data_dir.exists() and _servers_in(data_dir)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not data_dir.exists()
    assert not _servers_in(data_dir)


def test_the_demo_directory_is_never_under_a_home_directory() -> None:
    parent = demo.demo_parent()
    home = Path.home().resolve()
    assert home not in (parent, *parent.parents)
    assert os.access(parent, os.W_OK)
