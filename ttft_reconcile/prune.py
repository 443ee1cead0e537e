"""`prune-traces`: drop whole day partitions of `stream_traces` older than a cutoff, trim the
default partition, and optionally compact old corrections' evidence.

A day partition is never DELETEd from: it is dropped whole (no bloat in LiteLLM's database).
Rows in the default partition (traces that arrived before their day's partition existed) are
trimmed with DELETE. Corrections are kept (rollback and the `reconciled` label need them);
only their evidence JSON is compacted. Cutoffs are aware UTC instants.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from ttft_reconcile import dashboard_queries as q
from ttft_reconcile.db import SessionLimits, transaction

log = logging.getLogger(__name__)

_DAY_PARTITION = re.compile(r"^stream_traces_p(\d{8})$")


@dataclass(frozen=True)
class DayPartition:
    """One day partition: rows with request_start_at in [day 00:00 UTC, day+1 00:00 UTC)."""

    name: str
    day: date

    @property
    def ends_at(self) -> datetime:
        return datetime.combine(self.day + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)


@dataclass(frozen=True)
class PruneResult:
    cutoff: datetime
    dry_run: bool
    dropped: tuple[str, ...]
    dropped_rows: int
    default_rows_deleted: int
    evidence_cutoff: datetime | None = None
    evidence_compacted: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff.isoformat(), "dry_run": self.dry_run, "dropped_partitions": list(self.dropped),
            "dropped_rows": self.dropped_rows, "default_rows_deleted": self.default_rows_deleted,
            "evidence_cutoff": None if self.evidence_cutoff is None else self.evidence_cutoff.isoformat(),
            "evidence_compacted": self.evidence_compacted,
        }


def day_partitions(conn: Connection) -> list[DayPartition]:
    """The day partitions of stream_traces (named stream_traces_pYYYYMMDD), oldest first."""
    found = []
    for (name,) in conn.execute(text(q.LIST_TRACE_PARTITIONS)).all():
        match = _DAY_PARTITION.match(name)
        if match:
            found.append(DayPartition(name, datetime.strptime(match.group(1), "%Y%m%d").date()))
    return sorted(found, key=lambda p: p.day)


def expired_partitions(conn: Connection, cutoff: datetime) -> list[DayPartition]:
    """Day partitions whose whole day lies before the cutoff."""
    return [p for p in day_partitions(conn) if p.ends_at <= cutoff]


def partition_rows(conn: Connection, partition: DayPartition) -> int:
    return int(conn.execute(text(q.PARTITION_ROWS.format(part=q.quote_ident(partition.name)))).scalar_one())


def drop_partition(conn: Connection, partition: DayPartition) -> None:
    """DROP TABLE of one day partition (takes a short exclusive lock on stream_traces)."""
    conn.execute(text(f"DROP TABLE ttft_reconcile.{q.quote_ident(partition.name)}"))


def trim_default(conn: Connection, cutoff: datetime, *, dry_run: bool = False) -> int:
    """DELETE (or count, when dry) default-partition rows that started before the cutoff."""
    sql = q.COUNT_DEFAULT_OLDER if dry_run else q.DELETE_DEFAULT_OLDER
    result = conn.execute(text(sql), {"cutoff": cutoff})
    return int(result.scalar_one()) if dry_run else int(result.rowcount or 0)


def count_compactable(conn: Connection, cutoff: datetime) -> int:
    return int(conn.execute(text(q.COUNT_COMPACTABLE), {"cutoff": cutoff}).scalar_one())


def compact_evidence_batch(conn: Connection, cutoff: datetime, limit: int = 10_000) -> int:
    """Compact up to `limit` corrections older than the cutoff; returns how many changed."""
    return int(conn.execute(text(q.COMPACT_EVIDENCE), {"cutoff": cutoff, "limit": limit}).rowcount or 0)


def ensure_partitions(conn: Connection, first_day: date, last_day: date) -> int:
    """Create the missing day partitions in [first_day, last_day]; returns how many were created."""
    return int(conn.execute(text(q.ENSURE_PARTITIONS), {"first_day": first_day, "last_day": last_day}).scalar_one())


def prune_traces(
    engine: Engine,
    limits: SessionLimits,
    *,
    cutoff: datetime,
    evidence_cutoff: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = 10_000,
) -> PruneResult:
    """One transaction per dropped partition and per evidence batch, so locks stay short."""
    with transaction(engine, limits) as conn:
        expired = expired_partitions(conn, cutoff)
        rows = sum(partition_rows(conn, p) for p in expired)
    if not dry_run:
        for partition in expired:
            with transaction(engine, limits) as conn:
                drop_partition(conn, partition)
            log.info("dropped trace partition %s", partition.name)
    with transaction(engine, limits) as conn:
        trimmed = trim_default(conn, cutoff, dry_run=dry_run)
    compacted = 0
    if evidence_cutoff is not None:
        if dry_run:
            with transaction(engine, limits) as conn:
                compacted = count_compactable(conn, evidence_cutoff)
        else:
            while True:
                with transaction(engine, limits) as conn:
                    changed = compact_evidence_batch(conn, evidence_cutoff, batch_size)
                compacted += changed
                if changed < batch_size:
                    break
    return PruneResult(
        cutoff=cutoff, dry_run=dry_run, dropped=tuple(p.name for p in expired), dropped_rows=rows,
        default_rows_deleted=trimmed, evidence_cutoff=evidence_cutoff, evidence_compacted=compacted,
    )
