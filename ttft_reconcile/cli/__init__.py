"""`ttft-reconcile`: the command line. Parses, calls the library, prints; nothing else.

Commands live in submodules by area (job, publish, capture) and register on `cli` here.
"""

from __future__ import annotations

import importlib

import click

from ttft_reconcile import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ttft-reconcile")
def cli() -> None:
    """Repair time-to-first-token (TTFT) in LiteLLM's SpendLogs from captured stream traces.

    \b
    First time:      ttft-reconcile migrate
    Every 5 minutes: ttft-reconcile run
    History, once:   ttft-reconcile backfill --since 2026-03-01 --until 2026-06-01
    Undo a run:      ttft-reconcile rollback --run-id 42
    Try it locally:  ttft-reconcile demo

    The database URL comes from --database-url, TTFT_RECONCILE_DATABASE_URL or LiteLLM's
    own DATABASE_URL. Exit codes: 0 ok, 1 failed (batch rolled back), 2 usage,
    3 committed but metrics not published, 75 lane held by another process, 130 interrupted.
    """


def _register() -> None:
    """Attach the commands of each area; an area whose module is absent is simply left out."""
    for area in ("job_commands", "publish_commands", "demo_commands", "capture_commands"):
        try:
            module = importlib.import_module(f"ttft_reconcile.cli.{area}")
        except ModuleNotFoundError as error:
            if error.name != f"ttft_reconcile.cli.{area}":
                raise
            continue
        module.register(cli)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ttft-reconcile")
