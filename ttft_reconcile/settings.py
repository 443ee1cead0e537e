"""Frozen settings for the batch job; built once by the CLI, passed down explicitly."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

from ttft_reconcile.db import SessionLimits
from ttft_reconcile.dburl import DatabaseUrl

DEFAULT_CALL_TYPES: Final[tuple[str, ...]] = ("anthropic_messages", "aresponses", "pass_through_endpoint")
# call types LiteLLM writes; anything else on --call-types is a usage error
KNOWN_CALL_TYPES: Final[frozenset[str]] = frozenset(
    {
        "anthropic_messages",
        "aresponses",
        "responses",
        "pass_through_endpoint",
        "completion",
        "acompletion",
        "text_completion",
        "atext_completion",
        "generate_content",
        "agenerate_content",
        "agenerate_content_stream",
        "generate_content_stream",
    }
)


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class JobSettings:
    """Everything `run`, `backfill` and `rollback` need. Durations are timedeltas, tolerance in ms."""

    database: DatabaseUrl
    policy: str = "first_chunk"
    tolerance_ms: float = 5.0
    call_types: tuple[str, ...] = DEFAULT_CALL_TYPES
    batch_size: int = 5000
    max_rows_per_second: float | None = None
    dry_run: bool = False
    lookback: timedelta = timedelta(hours=1)
    settle: timedelta = timedelta(minutes=2)
    initial_window: timedelta = timedelta(hours=24)
    limits: SessionLimits = field(default_factory=SessionLimits)
    lock_mode: str = "auto"  # auto | advisory | lease
    lease_ttl: timedelta = timedelta(minutes=10)
    slice_size: timedelta = timedelta(days=1)
    slice_lease: timedelta = timedelta(minutes=5)
    worker: str = field(default_factory=default_worker_name)
    progress: bool = False
    # A backfill decides its next batch on another connection while the last one is written
    # (`pipeline.DecideAhead`); the workers of `--workers N` do not, N of them already keep the
    # database's cores busy.
    decide_ahead: bool = True

    @property
    def litellm_schema(self) -> str:
        return self.database.litellm_schema


@dataclass(frozen=True)
class PublishSettings:
    """Where metrics go. Neither set: nothing is published (one info line)."""

    pushgateway: str | None = None
    metrics_textfile: str | None = None
    deployment: str = ""
    delete_group_on_success: bool = False
    push_timeout_seconds: float = 5.0
