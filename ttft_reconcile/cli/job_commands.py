"""Commands of the batch job: migrate, run, backfill, rollback, demo."""

from __future__ import annotations

from typing import Any

import click

from ttft_reconcile import migrate as migrations
from ttft_reconcile.cli.options import database_options, output_options, parse_url
from ttft_reconcile.cli.runner import echo_json, execute
from ttft_reconcile.db import make_engine


@click.command("migrate")
@database_options
@output_options
@click.option("--sql", "as_sql", is_flag=True, help="Print the DDL instead of running it (for a DBA).")
@click.option("--downgrade-to-base", is_flag=True,
              help="Uninstall: remove the ttft_reconcile schema and everything in it (nothing else).")
def migrate_command(as_sql: bool, downgrade_to_base: bool, **kwargs: Any) -> None:
    """Create or upgrade the `ttft_reconcile` schema (never touches LiteLLM's tables).

    \b
    ttft-reconcile migrate                 # apply
    ttft-reconcile migrate --sql > ddl.sql # review first
    """

    def action() -> None:
        if as_sql:
            click.echo(migrations.offline_sql(), nl=False)
            return
        engine = make_engine(parse_url(kwargs["database_url"]))
        try:
            if downgrade_to_base:
                migrations.downgrade_to_base(engine)
                state: dict[str, Any] = {"current": None, "removed": True}
            else:
                result = migrations.upgrade(engine)
                state = {"current": result.current, "head": result.head}
        finally:
            engine.dispose()
        if kwargs["as_json"]:
            echo_json(state)
        elif downgrade_to_base:
            click.echo("removed schema ttft_reconcile")
        else:
            click.echo(f"ttft_reconcile schema at revision {state['current']} (head {state['head']})")

    execute(kwargs, action)


def register(group: click.Group) -> None:
    group.add_command(migrate_command)
