"""The operations examples: cron.example and the Kubernetes manifests parse, name real flags, handle exit codes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest

from tests import services
from ttft_reconcile import errors
from ttft_reconcile.cli import cli
from ttft_reconcile.timeparse import parse_instant

CRON = services.REPO / "cron.example"
K8S = services.REPO / "deploy" / "kubernetes"
EXIT_CODES = {errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_USAGE, errors.EXIT_PUBLISH_FAILED,
              errors.EXIT_LANE_HELD, errors.EXIT_INTERRUPTED}


def load_yaml(path: Path) -> list[dict[str, Any]]:
    try:
        import yaml
    except ImportError:
        services.missing("PyYAML is not installed (test extra)")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def parse_cli(argv: list[str]) -> click.Context:
    """Parse argv with the real CLI (nothing runs): unknown flags or bad values raise."""
    command = cli.get_command(click.Context(cli), argv[0])
    assert command is not None, f"no command {argv[0]!r}"
    return command.make_context(argv[0], list(argv[1:]))


def cron_entries() -> list[tuple[list[str], str, str]]:
    """(five time fields, user, command) of each schedule line."""
    entries = []
    for line in CRON.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, line
        entries.append((fields[:5], fields[5], fields[6]))
    return entries


def test_cron_schedules() -> None:
    entries = cron_entries()
    assert [times for times, _, _ in entries] == [["*/5", "*", "*", "*", "*"], ["17", "3", "*", "*", "*"]]
    assert all("%" not in command for _, _, command in entries)  # cron would cut the line there


def test_cron_commands_parse_with_the_real_cli() -> None:
    for _, _, command in cron_entries():
        invocation = re.search(r"ttft-reconcile ([^>;|]+)", command)
        assert invocation is not None, command
        ctx = parse_cli(shlex.split(invocation.group(1)))
        if ctx.info_name == "prune-traces":
            assert ctx.params["older_than"].days == 30


def test_exit_codes_documented_are_the_real_ones() -> None:
    documented = {int(code) for code in re.findall(r"^#\s+(\d+)\s{2,}", CRON.read_text(), re.M)}
    assert documented == EXIT_CODES
    for path in K8S.glob("*.yaml"):
        in_header = {int(code) for code in re.findall(r"(?:^|· )(\d+) [a-z]", path.read_text().split("\n\n")[0])}
        assert in_header <= EXIT_CODES, path.name


@pytest.fixture
def stub(tmp_path: Path) -> dict[str, str]:
    """A fake `ttft-reconcile` first on PATH: logs its args and one env var, exits with $STUB_RC."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ttft-reconcile"
    script.write_text('#!/bin/sh\necho "args: $*" >>"$STUB_LOG"\n'
                      'echo "db: $TTFT_RECONCILE_DATABASE_URL"  >>"$STUB_LOG"\nexit "$STUB_RC"\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(tmp_path / "stub.log"), "HOME": str(tmp_path)}


@pytest.mark.parametrize("rc", [0, 75, 1, 3, 130])
def test_cron_lines_are_silent_unless_the_job_really_failed(tmp_path: Path, stub: dict[str, str], rc: int) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("TTFT_RECONCILE_DATABASE_URL=postgresql://u@127.0.0.1/x\n")
    logs = tmp_path / "log"
    logs.mkdir()
    for _, _, command in cron_entries():
        local = command.replace("/etc/ttft-reconcile/env", str(env_file)).replace("/var/log/ttft-reconcile", str(logs))
        result = subprocess.run(["/bin/sh", "-c", local], env={**stub, "STUB_RC": str(rc)},
                                capture_output=True, text=True, timeout=30)
        # cron mails any output; 75 (lane held) is normal only for `run`
        mailed = rc not in ((0, 75) if "ttft-reconcile run" in command else (0,))
        assert bool(result.stdout.strip()) == mailed, (local, result.stdout)
        if mailed:
            assert f"exit code {rc}" in result.stdout
    log = Path(stub["STUB_LOG"]).read_text()
    assert "args: run" in log and "args: prune-traces --older-than 30d" in log
    assert "db: postgresql://u@127.0.0.1/x" in log  # the env file reached the job


def cronjobs() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in load_yaml(K8S / "cronjob.yaml")}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    pod = (spec["jobTemplate"]["spec"] if "jobTemplate" in spec else spec)["template"]["spec"]
    (only,) = pod["containers"]
    return dict(only)


def test_cronjob_runs_every_five_minutes_never_overlapping() -> None:
    jobs = cronjobs()
    assert set(jobs) == {"ttft-reconcile-run", "ttft-reconcile-prune"}
    run = jobs["ttft-reconcile-run"]
    assert run["apiVersion"] == "batch/v1" and run["kind"] == "CronJob"
    assert run["spec"]["schedule"] == "*/5 * * * *"
    assert run["spec"]["concurrencyPolicy"] == "Forbid"
    assert run["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    prune = container(jobs["ttft-reconcile-prune"])
    parse_cli(prune["args"])


@pytest.mark.parametrize(("rc", "expected"), [(0, 0), (75, 0), (1, 1), (3, 3), (130, 130)])
def test_cronjob_wrapper_turns_only_75_into_success(stub: dict[str, str], rc: int, expected: int) -> None:
    run = container(cronjobs()["ttft-reconcile-run"])
    assert run["command"] == ["/bin/sh", "-c"]
    result = subprocess.run([*run["command"], *run["args"]], env={**stub, "STUB_RC": str(rc)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == expected
    assert "args: run" in Path(stub["STUB_LOG"]).read_text()


def test_cronjob_run_command_parses_with_the_real_cli() -> None:
    run = container(cronjobs()["ttft-reconcile-run"])
    invocation = re.search(r"ttft-reconcile ([^;]+);", run["args"][0])
    assert invocation is not None
    parse_cli(shlex.split(invocation.group(1)))


def test_manifests_take_the_database_url_from_a_secret() -> None:
    for path in K8S.glob("*.yaml"):
        assert "postgres://" not in path.read_text() and "postgresql://" not in path.read_text()
        for doc in load_yaml(path):
            env = {item["name"]: item for item in container(doc)["env"]}
            assert "secretKeyRef" in env["TTFT_RECONCILE_DATABASE_URL"]["valueFrom"], path.name


def test_backfill_job_pods_share_one_window() -> None:
    (job,) = load_yaml(K8S / "backfill-job.yaml")
    assert job["kind"] == "Job"
    assert job["spec"]["parallelism"] >= 2
    assert "completions" not in job["spec"]  # work queue: done when the slices are
    spec = container(job)
    argv = [*spec["command"][1:], *spec["args"]]
    assert spec["command"][0] == "ttft-reconcile" and argv[0] == "backfill"
    since, until = argv[argv.index("--since") + 1], argv[argv.index("--until") + 1]
    assert parse_instant(since) < parse_instant(until)
    assert "--workers" not in argv  # the pods are the workers
    assert "--delete-group-on-success" in argv


def test_backfill_job_command_parses_with_the_real_cli() -> None:
    (job,) = load_yaml(K8S / "backfill-job.yaml")
    spec = container(job)
    ctx = parse_cli([*spec["command"][1:], *spec["args"]])
    assert ctx.params["delete_group_on_success"] is True


def test_examples_carry_no_secrets_or_machine_paths() -> None:
    for path in [CRON, *K8S.glob("*.yaml"), services.REPO / "deploy" / "prometheus" / "alerts.yml"]:
        text = path.read_text()
        assert "/tmp/" not in text and "/work/" not in text, path
        assert not re.search(r"://[^/\s:]+:(?!PASSWORD@)[^@\s/]+@", text), path
    assert os.access(CRON, os.R_OK)


def cli_envvars() -> set[str]:
    names: set[str] = set()
    group_ctx = click.Context(cli)
    for name in cli.list_commands(group_ctx):
        command = cli.get_command(group_ctx, name)
        for param in command.params if command else []:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else list(envvar or []))
    return names


def test_examples_use_only_env_vars_the_cli_reads() -> None:
    known = cli_envvars()
    assert "TTFT_RECONCILE_PUSHGATEWAY" in known
    for path in [CRON, *K8S.glob("*.yaml")]:
        used = set(re.findall(r"\b(TTFT_RECONCILE_[A-Z_]+)\b", path.read_text()))
        assert used and used <= known, (path.name, used - known)
