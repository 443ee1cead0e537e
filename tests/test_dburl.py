"""Database URLs as LiteLLM users have them."""

from __future__ import annotations

import pytest

from ttft_reconcile.dburl import DatabaseUrlError, parse_database_url, redact, scrub


def test_prisma_parameters_are_dropped_and_schema_honoured() -> None:
    url = parse_database_url(
        "postgres://llm:s3cr%40t@db.internal:6432/litellm?schema=llm&connection_limit=5&pool_timeout=10"
        "&pgbouncer=true&sslmode=require&sslaccept=strict"
    )
    assert url.libpq == "postgresql://llm:s3cr%40t@db.internal:6432/litellm?sslmode=require"
    assert url.sqlalchemy.startswith("postgresql+psycopg://")
    assert url.litellm_schema == "llm"
    assert url.pgbouncer is True
    assert set(url.dropped) == {"schema", "connection_limit", "pool_timeout", "pgbouncer", "sslaccept"}
    assert "s3cr" not in url.redacted and url.redacted.startswith("postgresql://llm:***@db.internal")
    assert url.database == "litellm"


@pytest.mark.parametrize(
    "raw, database",
    [
        ("postgresql+psycopg://u@/litellm?host=/var/run/postgresql", "litellm"),
        ("postgresql://postgres:@/postgres?host=/tmp/pgdata", "postgres"),
        ("postgresql://u@localhost/x?application_name=a&options=-csearch_path%3Dllm", "x"),
    ],
)
def test_socket_and_libpq_forms_pass_through(raw: str, database: str) -> None:
    url = parse_database_url(raw)
    assert url.database == database
    assert url.litellm_schema == "public"
    assert url.libpq.startswith("postgresql://")
    assert "host=" in url.libpq or "application_name" in url.libpq


@pytest.mark.parametrize("raw", ["", "mysql://u:p@h/db", "sqlite:///x.db", "not a url"])
def test_bad_urls_are_rejected_without_the_password(raw: str) -> None:
    with pytest.raises(DatabaseUrlError) as error:
        parse_database_url(raw)
    assert "p@h" not in str(error.value)


def test_redaction_and_scrubbing() -> None:
    assert redact("postgresql://u:pw@h/db?password=pw2") == "postgresql://u:***@h/db?password=***"
    message = 'connection to "postgresql://u:hunter2@h/db" failed: password authentication failed for user "u"'
    assert "hunter2" not in scrub(message, "hunter2")
    assert "hunter2" not in scrub("password=hunter2 host=h")
