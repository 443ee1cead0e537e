"""What a run/backfill/rollback returns to the CLI and the metrics publisher."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any


@dataclass(frozen=True)
class RunSummary:
    """One invocation's result. Instants are aware UTC; durations in seconds."""

    run_id: int
    mode: str  # run | backfill | rollback
    since: datetime | None
    until: datetime | None
    policy: str
    candidates: int
    outcomes: dict[str, int]
    duration_seconds: float
    dry_run: bool
    started_at: datetime
    finished_at: datetime
    status: str = "succeeded"  # succeeded | interrupted | failed
    checkpoint: datetime | None = None  # incremental run's position after the run
    touched_days: tuple[date, ...] = ()
    worker: str | None = None
    worker_run_ids: tuple[int, ...] = ()
    batches: int = 0
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The `--json` keys of DESIGN.md, plus a few extras after them."""
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "policy": self.policy,
            "candidates": self.candidates,
            "outcomes": dict(self.outcomes),
            "duration_seconds": round(self.duration_seconds, 3),
            "dry_run": self.dry_run,
            "status": self.status,
            "batches": self.batches,
            "worker_run_ids": list(self.worker_run_ids),
            **self.extra,
        }
