"""Programmatic Alembic: no ini file, `script_location = ttft_reconcile:migrations`."""

from __future__ import annotations

import importlib
import io
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from ttft_reconcile.db import inspect_spend_logs
from ttft_reconcile.errors import SchemaMissing, UsageError

SCHEMA = "ttft_reconcile"


@dataclass(frozen=True)
class MigrationState:
    """Where the database is and where the code is."""

    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def alembic_config(sqlalchemy_url: str = "postgresql+psycopg://") -> Config:
    """An Alembic Config pointing at the migrations shipped inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", _script_location())
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url.replace("%", "%%"))
    return cfg


def _script_location() -> str:
    """`ttft_reconcile:migrations`, resolved through the import system so editable installs work too."""
    shipped = importlib.import_module("ttft_reconcile.migrations")
    return str(Path(str(shipped.__file__)).resolve().parent)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision recorded in `ttft_reconcile.alembic_version`, or None when never migrated."""
    exists = conn.execute(text("SELECT to_regclass('ttft_reconcile.alembic_version') IS NOT NULL")).scalar()
    if not exists:
        return None
    context = MigrationContext.configure(
        conn, opts={"version_table": "alembic_version", "version_table_schema": SCHEMA}
    )
    return context.get_current_revision()


def migration_state(conn: Connection) -> MigrationState:
    return MigrationState(current=current_revision(conn), head=head_revision())


def upgrade(engine: Engine, revision: str = "head") -> MigrationState:
    """Apply migrations up to `revision`; returns the state afterwards."""
    with engine.connect() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
        return migration_state(conn)


def spend_logs_missing(engine: Engine, schema: str) -> str | None:
    """Why a job could not find LiteLLM's SpendLogs in `schema` (None when it can): `migrate`
    works without it, so the capture can record before LiteLLM's tables exist."""
    with engine.connect() as conn:
        try:
            inspect_spend_logs(conn, schema)
        except SchemaMissing as missing:
            return str(missing)
    return None


def downgrade_to_base(engine: Engine, *, force: bool = False) -> None:
    """The uninstall path: remove every object of our schema, then the schema itself, in one
    transaction.

    Refuses while corrections are still applied (the audit trail is what rollback needs) or a job
    is running (its next batch would write corrections nobody could roll back), unless `force`.
    Both are checked under an exclusive lock on the audit trail and the runs, taken before the
    DDL in the same transaction: a batch in flight finishes first and is counted, and no job can
    start writing until the schema is gone.
    """
    with engine.connect() as conn:
        live = busy = 0
        if conn.execute(text("SELECT to_regclass('ttft_reconcile.corrections') IS NOT NULL")).scalar():
            # the batches' order: corrections (their statement), then runs (their counts)
            conn.execute(text("LOCK TABLE ttft_reconcile.corrections, ttft_reconcile.runs IN ACCESS EXCLUSIVE MODE"))
            live = int(conn.execute(
                text("SELECT count(*) FROM ttft_reconcile.corrections WHERE status = 'applied'")).scalar_one())
            busy = int(conn.execute(text(
                "SELECT count(*) FROM ttft_reconcile.runs WHERE status = 'running' AND NOT dry_run"
                " AND coalesce(heartbeat_at, started_at) > now() - interval '15 minutes'")).scalar_one())
        if live and not force:
            conn.rollback()
            raise UsageError(
                f"{live} corrections are still applied to LiteLLM's table; removing the schema would lose the"
                " only record of the old values. Roll them back first (ttft-reconcile rollback --since ..."
                " --until ...), or pass --force to keep the corrected values and drop the audit trail"
            )
        if busy and not force:
            conn.rollback()
            raise UsageError(
                f"{busy} run(s) of the job are working (a heartbeat within 15 minutes); stop them (and the"
                " capture) first, or pass --force")
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
        # Alembic keeps its version table; with nothing else left, the schema goes too.
        conn.execute(text(f'DROP TABLE IF EXISTS "{SCHEMA}".alembic_version'))
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" RESTRICT'))
        conn.commit()


def offline_sql(revision: str = "head", *, from_revision: str | None = None) -> str:
    """The DDL a DBA would run, as text (Alembic's offline mode): from an empty schema, or only
    the steps after `from_revision`."""
    buffer = io.StringIO()
    cfg = alembic_config()
    cfg.output_buffer = buffer
    if from_revision is not None:
        known = {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}
        if from_revision not in known:
            raise UsageError(f"unknown revision {from_revision!r}: one of {', '.join(sorted(known))}")
    with redirect_stdout(buffer):
        command.upgrade(cfg, f"{from_revision}:{revision}" if from_revision else revision, sql=True)
    return buffer.getvalue()
