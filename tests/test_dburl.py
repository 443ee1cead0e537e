"""Database URLs as LiteLLM users have them."""

from __future__ import annotations

import pytest

from tests import services
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


@pytest.mark.parametrize(
    "raw",
    ["postgresql://app:Tr0ub4dor#xyz@127.0.0.1:5432/db", "postgresql://app:Tr0?ub4dor@127.0.0.1:5432/db",
     # libpq ends the password at the first '@' and would print the rest as the host name
     "postgresql://app:Tr0@ub4dor@db.example.com:5432/db"],
)
def test_unescaped_password_characters_are_a_clear_error_without_the_password(raw: str) -> None:
    with pytest.raises(DatabaseUrlError, match="percent-encode") as error:
        parse_database_url(raw)
    assert "Tr0" not in str(error.value)


@pytest.mark.parametrize("raw", ["postgresql://u@h:notaport/db", "postgresql://u@[::1/db"])
def test_malformed_hosts_and_ports(raw: str) -> None:
    with pytest.raises(DatabaseUrlError, match="not valid"):
        parse_database_url(raw)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("postgresql:///litellm?host=/run/postgresql&user=llm", "postgresql:///litellm?host=/run/postgresql&user=llm"),
        ("postgresql://llm:pw@%2Frun%2Fpostgresql:5433/litellm",
         "postgresql://llm:pw@/litellm?host=/run/postgresql&port=5433"),
    ],
)
def test_socket_forms_libpq_accepts(raw: str, expected: str) -> None:
    url = parse_database_url(raw)
    assert url.libpq == expected
    assert url.database == "litellm"


def test_socket_url_connects(pg_admin_url: str) -> None:
    """The form psql users type for a local socket reaches the server."""
    import psycopg

    with psycopg.connect(pg_admin_url) as conn:
        row = conn.execute("SELECT current_setting('unix_socket_directories'), current_setting('port')").fetchone()
    assert row is not None
    directory = row[0].split(",")[0].strip()
    if not directory:
        services.missing("a Postgres server with a Unix socket (this one listens on TCP only)")
    from sqlalchemy import text

    from ttft_reconcile.db import make_engine

    engine = make_engine(parse_database_url(f"postgresql:///postgres?host={directory}&port={row[1]}&user=postgres"))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("password", ["e", "t", "on", "database", "127.0.0.1"])
def test_scrub_masks_by_place_never_by_text(password: str) -> None:
    """Replacing the password's text wherever it occurs shows it (`e`: "cannot us*** th*** databas***")."""
    message = 'cannot use the database: connection to server at "127.0.0.1", port 5433 failed: Connection refused'
    assert scrub(message, password) == message
    assert scrub(f"postgresql://u:{password}@h/db: {message}", password) == f"postgresql://u:***@h/db: {message}"


@pytest.mark.parametrize(
    "message, expected",
    [
        ("could not use postgresql://u:p@ss#word@host/db now", "could not use postgresql://u:***@host/db now"),
        ('connection to "postgres://u:a/b?c@d@host:5432/db" failed',
         'connection to "postgres://u:***@host:5432/db" failed'),
        ("URL postgresql+psycopg://llm:s3cr%40t@db.internal:6432/litellm?sslmode=require",
         "URL postgresql+psycopg://llm:***@db.internal:6432/litellm?sslmode=require"),
        ("URL postgresql+psycopg2://llm:hunter2@db/x, retrying", "URL postgresql+psycopg2://llm:***@db/x, retrying"),
        ("POSTGRESQL://llm:Hunter2@db/x", "POSTGRESQL://llm:***@db/x"),
        ("postgresql://u@h/db?sslmode=require&password=hunter2&application_name=x",
         "postgresql://u@h/db?sslmode=require&password=***&application_name=x"),
        ("postgresql://u@h/db?PASSWORD=hunter2", "postgresql://u@h/db?PASSWORD=***"),
        ("host=h password=hunter2 user=u", "host=h password=*** user=u"),
        ("host=h password = 'two words' user=u", "host=h password = *** user=u"),
        (r"host=h password='it\'s me' user=u", "host=h password=*** user=u"),
        ("host=h password='never closed", "host=h password=***"),
        ("PGPASSWORD=hunter2 psql", "PGPASSWORD=*** psql"),
    ],
)
def test_scrub_masks_every_url_and_keyword_password(message: str, expected: str) -> None:
    assert scrub(message) == expected


def test_scrub_keeps_what_is_not_a_password() -> None:
    message = 'postgresql://u@h/db?sslmode=require&password=x&application_name=job failed for user "u"'
    assert scrub(message) == 'postgresql://u@h/db?sslmode=require&password=***&application_name=job failed for user "u"'
    assert scrub("mail me at ops@example.com: https://grafana/x") == "mail me at ops@example.com: https://grafana/x"


def test_redact_masks_to_the_last_at_sign() -> None:
    assert redact("http://u:p@ss@gateway:9091") == "http://u:***@gateway:9091"
    assert redact("postgresql:///litellm?host=/run/postgresql") == "postgresql:///litellm?host=/run/postgresql"


@pytest.mark.parametrize("raw", ["postgresql://u:p%zzw@127.0.0.1/db", "postgresql://u:two words@127.0.0.1/db"])
def test_passwords_libpq_would_quote_back_are_rejected_first(raw: str) -> None:
    """libpq's own complaint about these quotes the password ("invalid percent-encoded token: "p%zzw"")."""
    with pytest.raises(DatabaseUrlError, match="percent-encode") as error:
        parse_database_url(raw)
    assert "zz" not in str(error.value) and "words" not in str(error.value)
