"""Fixtures for the LiteLLM-backed capture suite (run from a capture venv: scripts/capture-venv.sh).

Every test here carries the `capture` marker; the main venv deselects them (`-m "not capture"`).
litellm is imported only when one of these tests runs, never at collection.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import hypothesis  # noqa: F401  - loaded before LiteLLM changes the recursion limit (CPython 3.11 AST bug)
import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests import services
from tests.capture.upstreams import MockUpstream, Planner, default_plan

MODEL = "anthropic/claude-sonnet-4-5-20250929"
BEDROCK_MODEL = "bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0"
RESPONSES_MODEL = "openai/gpt-4o"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.capture)


@pytest.fixture(scope="session")
def litellm() -> Any:
    """The installed litellm (skips, or fails under TTFT_REQUIRE_SERVICES=1, when absent)."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        os.environ.pop(name, None)
    try:
        import litellm as module
        from litellm.proxy.spend_tracking.spend_tracking_utils import get_logging_payload  # noqa: F401
    except ImportError as error:
        services.missing(f"litellm[proxy] is not installed here ({error}); use scripts/capture-venv.sh")
        raise
    from importlib import metadata

    wanted = os.environ.get("TTFT_LITELLM_VERSION")
    have = metadata.version("litellm")
    if wanted and wanted != have:
        pytest.fail(f"TTFT_LITELLM_VERSION={wanted} but litellm {have} is installed", pytrace=False)
    return module


def litellm_version() -> tuple[int, ...]:
    from importlib import metadata

    return tuple(int(p) for p in metadata.version("litellm").split(".")[:3] if p.isdigit())


@pytest.fixture(scope="session")
def upstream() -> Iterator[MockUpstream]:
    server = MockUpstream(default_plan)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def plan(upstream: MockUpstream) -> Iterator[Callable[[Planner], None]]:
    """Swap the upstream's planner for one test."""

    def use(planner: Planner) -> None:
        upstream.plan = planner

    yield use
    upstream.plan = default_plan


@dataclass
class SpendProbe:
    """A CustomLogger that builds the SpendLogs row LiteLLM's proxy would write (get_logging_payload)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    logger: Any = None

    async def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        for _ in range(int(timeout / 0.02)):
            if len(self.rows) >= n:
                break
            await asyncio.sleep(0.02)
        return self.rows


@pytest.fixture(scope="session")
def _session_probe(litellm: Any) -> SpendProbe:
    """Registered once: LiteLLM keeps (and de-duplicates) callbacks in internal lists."""
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.proxy.spend_tracking.spend_tracking_utils import get_logging_payload

    probe = SpendProbe()

    class Probe(CustomLogger):  # type: ignore[misc]
        async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                          end_time: Any) -> None:
            payload = get_logging_payload(kwargs, response_obj, start_time, end_time)
            row = dict(payload)
            row["_call_id"] = kwargs.get("litellm_call_id")
            row["_api_call_start_time"] = kwargs.get("api_call_start_time")
            probe.rows.append(row)

        async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                          end_time: Any) -> None:
            probe.failures.append({"call_id": kwargs.get("litellm_call_id")})

    probe.logger = Probe()
    litellm.callbacks = list(litellm.callbacks) + [probe.logger]
    return probe


@pytest.fixture
def spend_probe(_session_probe: SpendProbe) -> SpendProbe:
    """The session's probe, emptied for this test."""
    _session_probe.rows.clear()
    _session_probe.failures.clear()
    return _session_probe


def naive_utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, str) and value[:4].isdigit() and "T" in value:
        return datetime.fromisoformat(value).astimezone(timezone.utc).replace(tzinfo=None)
    return value


def insert_spend_row(db_url: str, row: dict[str, Any]) -> None:
    """Write the payload into the real LiteLLM_SpendLogs (only the columns this schema era has)."""
    with psycopg.connect(db_url) as conn:
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'LiteLLM_SpendLogs'")}
        names, values = [], []
        for key, value in row.items():
            if key not in columns or value is None:  # None: the column's default, as Prisma leaves it
                continue
            if key in ("startTime", "endTime", "completionStartTime"):
                value = naive_utc(value)
            elif isinstance(value, dict | list):
                value = Jsonb(value)
            names.append(f'"{key}"')
            values.append(value)
        placeholders = ", ".join(["%s"] * len(values))
        conn.execute(f'INSERT INTO "LiteLLM_SpendLogs" ({", ".join(names)}) VALUES ({placeholders})', values)


@pytest.fixture
def capture_on(litellm: Any) -> Iterator[Callable[..., list[str]]]:
    """install(...) for one test; always uninstalled afterwards."""
    from ttft_reconcile import capture

    def install(url: str | None, **options: Any) -> list[str]:
        return capture.install(url, **options)

    capture.uninstall()
    try:
        yield install
    finally:
        capture.uninstall()
