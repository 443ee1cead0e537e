"""Fixtures of the reliability campaign: seeded databases to clone, an owned cluster, a PgBouncer."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests import services
from tests.reliability.cluster import Cluster, PgBouncer
from tests.reliability.dataset import Seeded, seed

Clone = Callable[[], str]


@pytest.fixture
def seeded(pg_admin_url: str) -> Iterator[Callable[[int, int], tuple[Seeded, Clone]]]:
    """`seeded(n, seed)` → (what was seeded, clone()): clone() returns the URL of a fresh identical copy."""
    made: list[str] = []

    def make(n: int, seed_value: int) -> tuple[Seeded, Clone]:
        template = services.clone_database(pg_admin_url, services.ensure_template(pg_admin_url, "new"))
        made.append(template)
        with psycopg.connect(services.with_database(pg_admin_url, template)) as conn:
            info = seed(conn, n, seed_value=seed_value)

        def clone() -> str:
            name = services.clone_database(pg_admin_url, template)
            made.append(name)
            return services.with_database(pg_admin_url, name)

        return info, clone

    yield make
    for name in reversed(made):
        services.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster this module owns (it may be stopped and started)."""
    server = Cluster()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def bouncer(pg_admin_url: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode with a single server connection per database."""
    proc = PgBouncer(pg_admin_url)
    try:
        yield proc
    finally:
        proc.stop()
