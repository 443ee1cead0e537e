"""Session-wide real services; see tests/services.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import services

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser libpq URL to a Postgres server (TEST_DATABASE_URL, else embedded)."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    try:
        server = services.EmbeddedPostgres()
    except Exception as error:  # noqa: BLE001 - any failure to start is "service missing"
        services.missing(f"no TEST_DATABASE_URL and embedded Postgres failed: {error}")
        raise
    try:
        yield server.url
    finally:
        server.stop()


def _database(pg_admin_url: str, era: str) -> Iterator[str]:
    template = services.ensure_template(pg_admin_url, era)
    name = services.clone_database(pg_admin_url, template)
    try:
        yield services.with_database(pg_admin_url, name)
    finally:
        services.drop_database(pg_admin_url, name)


@pytest.fixture
def db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with the current LiteLLM schema (extras 0.4.110) and our migrations."""
    yield from _database(pg_admin_url, "new")


@pytest.fixture
def old_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with the 1.82.3-era LiteLLM schema (extras 0.4.56) and our migrations."""
    yield from _database(pg_admin_url, "old")


@pytest.fixture(params=["old", "new"])
def any_era_db_url(request: pytest.FixtureRequest, pg_admin_url: str) -> Iterator[str]:
    """Both schema eras, one test each."""
    yield from _database(pg_admin_url, request.param)


@pytest.fixture(scope="session")
def pushgateway() -> Iterator[str]:
    """`host:port` of a real Pushgateway (TEST_PUSHGATEWAY, else one started on a free port)."""
    given = os.environ.get("TEST_PUSHGATEWAY")
    if given:
        yield given
        return
    exe = services.find_pushgateway()
    if exe is None:
        services.missing("prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway)")
    assert exe is not None
    gateway = services.Pushgateway(exe)
    try:
        yield gateway.address
    finally:
        gateway.stop()
