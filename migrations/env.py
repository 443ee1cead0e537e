"""Alembic environment: one linear history in the `ttft_reconcile` schema, never touching LiteLLM's tables."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool, text
from sqlalchemy.engine import Connection

SCHEMA = "ttft_reconcile"
VERSION_TABLE = "alembic_version"

config = context.config


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # Autogenerate must only ever see our schema: LiteLLM's tables belong to Prisma.
    if type_ == "schema":
        return name == SCHEMA
    return True


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=None,
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=_include_name,
        **kwargs,  # type: ignore[arg-type]
    )


def _run_online(connection: Connection) -> None:
    # Alembic does not create the version table's schema itself. A caller that handed in a
    # connection inside its own transaction (the uninstall path holds its locks there) commits.
    owned = not connection.in_transaction()
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"'))
    if owned:
        connection.commit()
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    # named paramstyle: otherwise offline output doubles every % (format('%%I')) and psql rejects it
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    _run_online(shared)
else:
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        _run_online(conn)
