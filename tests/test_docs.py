"""The docs tell the truth: every command and option is in the README, every command has help."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ttft_reconcile.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_command_is_in_the_readme() -> None:
    for name in cli.commands:
        assert f"`{name}" in README, f"command {name} is not documented in README.md"


def test_every_option_is_in_the_readme() -> None:
    missing = []
    for name, command in cli.commands.items():
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            longest = max(param.opts, key=len)
            if longest in ("--help",):
                continue
            if not re.search(re.escape(longest) + r"(?![\w-])", README):
                missing.append(f"{name} {longest}")
    assert not missing, "options not documented in README.md: " + ", ".join(missing)


def test_documented_env_vars_are_the_ones_the_cli_reads() -> None:
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
                for envvar in envvars:
                    assert envvar in README, f"{name} {param.opts[0]}: {envvar} not in README.md"
