"""SQL of the batch job besides the batch statement (batch_sql.py): rollback, runs, checkpoints, slices, leases.

LiteLLM's table is reached through `SpendLogsShape.qualified` (schema from the URL); its
camel-case columns are quoted only here. Scans never read the JSON columns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ttft_reconcile.db import SpendLogsShape

S = "ttft_reconcile"


@dataclass(frozen=True)
class Position:
    """A keyset position on ("startTime", request_id); start_time is naive UTC."""

    start_time: datetime
    request_id: str


# --- rollback -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackBatch:
    """What one rollback batch did; `last` is the keyset position (start_time, correction id)."""

    selected: int
    reverted: int
    changed: int
    missing: int
    last: tuple[datetime, int] | None
    days: set[datetime]


def rollback_batch(
    conn: Connection,
    shape: SpendLogsShape,
    *,
    rollback_run_id: int,
    target_run_id: int | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> RollbackBatch:
    """Restore the exact old values of up to `limit` applied corrections, where the value is still ours."""
    filters = ["c.status = 'applied'"]
    params: dict[str, Any] = {"limit": limit, "rollback_run_id": rollback_run_id}
    if target_run_id is not None:
        filters.append("c.run_id = :target_run_id")
        params["target_run_id"] = target_run_id
    if since is not None:
        filters.append("c.start_time >= :since")
        params["since"] = since
    if until is not None:
        filters.append("c.start_time < :until")
        params["until"] = until
    if after is not None:
        filters.append("(c.start_time, c.id) > (:after_start, :after_id)")
        params["after_start"], params["after_id"] = after
    touch = ", updated_at = CURRENT_TIMESTAMP" if shape.has_updated_at else ""
    sql = (
        "WITH target AS ("
        " SELECT c.id, c.request_id, c.start_time, c.old_completion_start_time AS old_cst,"
        f" c.new_completion_start_time AS new_cst FROM {S}.corrections c WHERE {' AND '.join(filters)}"
        " ORDER BY c.start_time, c.id LIMIT :limit FOR UPDATE OF c"
        "), present AS ("
        f' SELECT t.id, s."completionStartTime" AS current_cst FROM target t JOIN {shape.qualified} s'
        ' ON s.request_id = t.request_id AND s."startTime" = t.start_time'
        "), restored AS ("
        f' UPDATE {shape.qualified} AS s SET "completionStartTime" = t.old_cst{touch}'
        ' FROM target t WHERE s.request_id = t.request_id AND s."startTime" = t.start_time'
        ' AND s."completionStartTime" IS NOT DISTINCT FROM t.new_cst'
        ' RETURNING s.request_id, s."startTime" AS start_time'
        "), marked AS ("
        f" UPDATE {S}.corrections c SET status = 'reverted', reverted_by_run = :rollback_run_id,"
        " reverted_at = now() FROM target t JOIN restored r"
        " ON r.request_id = t.request_id AND r.start_time = t.start_time"
        " WHERE c.id = t.id RETURNING c.id"
        ")"
        " SELECT t.id, t.start_time, (t.id IN (SELECT id FROM marked)) AS reverted,"
        " (t.id IN (SELECT id FROM present)) AS present FROM target t ORDER BY t.start_time, t.id"
    )
    rows = conn.execute(text(sql), params).all()
    reverted = sum(1 for r in rows if r[2])
    missing = sum(1 for r in rows if not r[3])
    changed = len(rows) - reverted - missing
    last = (rows[-1][1], rows[-1][0]) if rows else None
    return RollbackBatch(
        selected=len(rows),
        reverted=reverted,
        changed=changed,
        missing=missing,
        last=last,
        days={r[1] for r in rows if r[2]},
    )


# --- runs, checkpoints ------------------------------------------------------------------------


def insert_run(
    conn: Connection,
    *,
    mode: str,
    dry_run: bool,
    since: datetime | None,
    until: datetime | None,
    policy: str | None,
    tolerance_ms: float | None,
    call_types: Sequence[str] | None,
    version: str,
    litellm_schema: str,
    host: str,
    worker: str,
    pid: int,
    backfill_id: int | None = None,
) -> int:
    run_id = conn.execute(
        text(
            f"INSERT INTO {S}.runs (mode, dry_run, window_since, window_until, policy, tolerance_ms, call_types,"
            " version, litellm_schema, host, worker, pid, backfill_id, heartbeat_at)"
            " VALUES (:mode, :dry_run, :since, :until, :policy, :tolerance_ms, :call_types, :version,"
            " :litellm_schema, :host, :worker, :pid, :backfill_id, now()) RETURNING id"
        ),
        {
            "mode": mode,
            "dry_run": dry_run,
            "since": since,
            "until": until,
            "policy": policy,
            "tolerance_ms": tolerance_ms,
            "call_types": list(call_types) if call_types is not None else None,
            "version": version,
            "litellm_schema": litellm_schema,
            "host": host,
            "worker": worker,
            "pid": pid,
            "backfill_id": backfill_id,
        },
    ).scalar_one()
    return int(run_id)


def set_run_window(conn: Connection, run_id: int, since: datetime, until: datetime) -> None:
    conn.execute(
        text(f"UPDATE {S}.runs SET window_since = :since, window_until = :until WHERE id = :id"),
        {"id": run_id, "since": since, "until": until},
    )


def add_run_counts(conn: Connection, run_id: int, candidates: int, outcomes: dict[str, int]) -> None:
    """Add one batch's counts to the run row (same transaction as the batch's writes)."""
    conn.execute(
        text(
            f"UPDATE {S}.runs SET candidates = candidates + :n, heartbeat_at = now(),"
            " outcomes = (SELECT coalesce(jsonb_object_agg(k, coalesce((outcomes ->> k)::bigint, 0)"
            " + coalesce((CAST(:delta AS jsonb) ->> k)::bigint, 0)), '{}'::jsonb)"
            " FROM jsonb_object_keys(outcomes || CAST(:delta AS jsonb)) AS k)"
            " WHERE id = :id"
        ),
        {"id": run_id, "n": candidates, "delta": json.dumps(outcomes)},
    )


def finish_run(conn: Connection, run_id: int, *, status: str, error: str | None = None) -> None:
    conn.execute(
        text(f"UPDATE {S}.runs SET status = :status, error = :error, finished_at = now() WHERE id = :id"),
        {"id": run_id, "status": status, "error": error},
    )


def run_row(conn: Connection, run_id: int) -> dict[str, Any] | None:
    row = conn.execute(text(f"SELECT * FROM {S}.runs WHERE id = :id"), {"id": run_id}).mappings().first()
    return dict(row) if row is not None else None


def read_checkpoint(conn: Connection, lane: str) -> Position | None:
    row = conn.execute(
        text(f"SELECT position_start_time, position_request_id FROM {S}.checkpoints WHERE lane = :lane"),
        {"lane": lane},
    ).first()
    return Position(row[0], row[1]) if row is not None else None


def write_checkpoint(conn: Connection, lane: str, position: Position, run_id: int) -> None:
    """Move the lane's checkpoint forward (never back)."""
    conn.execute(
        text(
            f"INSERT INTO {S}.checkpoints (lane, position_start_time, position_request_id, run_id, updated_at)"
            " VALUES (:lane, :st, :rid, :run_id, now()) ON CONFLICT (lane) DO UPDATE SET"
            " position_start_time = EXCLUDED.position_start_time,"
            " position_request_id = EXCLUDED.position_request_id, run_id = EXCLUDED.run_id, updated_at = now()"
            f" WHERE ({S}.checkpoints.position_start_time, {S}.checkpoints.position_request_id)"
            " <= (EXCLUDED.position_start_time, EXCLUDED.position_request_id)"
        ),
        {"lane": lane, "st": position.start_time, "rid": position.request_id, "run_id": run_id},
    )


def ensure_trace_partitions(conn: Connection, first_day: datetime, last_day: datetime) -> int:
    return int(
        conn.execute(
            text(f"SELECT {S}.ensure_trace_partitions(CAST(:a AS date), CAST(:b AS date))"),
            {"a": first_day.date(), "b": last_day.date()},
        ).scalar_one()
    )


# --- backfill slices ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Slice:
    backfill_id: int
    slice_no: int
    since: datetime
    until: datetime
    position: Position | None


def get_or_create_backfill(
    conn: Connection,
    *,
    since: datetime,
    until: datetime,
    policy: str,
    tolerance_ms: float,
    call_types: Sequence[str],
    slice_size: timedelta,
) -> tuple[int, int]:
    """The backfill for this window/policy (created with its slices if new); returns (id, slice count)."""
    params = {
        "since": since,
        "until": until,
        "policy": policy,
        "tolerance_ms": tolerance_ms,
        "call_types": sorted(call_types),
        "slice_seconds": max(1, int(slice_size.total_seconds())),
    }
    created = conn.execute(
        text(
            f"INSERT INTO {S}.backfills (window_since, window_until, policy, tolerance_ms, call_types, slice_seconds)"
            " VALUES (:since, :until, :policy, :tolerance_ms, :call_types, :slice_seconds)"
            " ON CONFLICT (window_since, window_until, policy, tolerance_ms, call_types) DO NOTHING RETURNING id"
        ),
        params,
    ).scalar()
    if created is not None:
        # Slice bounds: the window's ends and the multiples of the slice size since the Unix epoch
        # in between, so day slices are UTC days and no UTC day is written by two slices (a day
        # is then finished, and its rollup can be rebuilt, once its one slice is done).
        conn.execute(
            text(
                f"INSERT INTO {S}.backfill_slices (backfill_id, slice_no, slice_since, slice_until)"
                " SELECT :id, (row_number() OVER (ORDER BY b.at))::int - 1, b.at,"
                " coalesce(lead(b.at) OVER (ORDER BY b.at), CAST(:until AS timestamptz))"
                " FROM (SELECT CAST(:since AS timestamptz) AS at UNION"
                "  SELECT g FROM generate_series(to_timestamp(ceil(extract(epoch FROM CAST(:since AS timestamptz))"
                "   / :slice_seconds) * :slice_seconds), CAST(:until AS timestamptz) - interval '1 microsecond',"
                "   make_interval(secs => :slice_seconds)) AS g) AS b"
            ),
            {"id": created, "since": since, "until": until, "slice_seconds": params["slice_seconds"]},
        )
        backfill_id = int(created)
    else:
        backfill_id = int(
            conn.execute(
                text(
                    f"SELECT id FROM {S}.backfills WHERE window_since = :since AND window_until = :until"
                    " AND policy = :policy AND tolerance_ms = :tolerance_ms AND call_types = :call_types"
                ),
                params,
            ).scalar_one()
        )
    count = conn.execute(
        text(f"SELECT count(*) FROM {S}.backfill_slices WHERE backfill_id = :id"), {"id": backfill_id}
    ).scalar_one()
    return backfill_id, int(count)


def claim_slice(
    conn: Connection, *, backfill_id: int, worker: str, run_id: int, lease: timedelta
) -> Slice | None:
    """Claim the next pending slice, or one whose worker stopped heartbeating (SKIP LOCKED)."""
    row = conn.execute(
        text(
            f"UPDATE {S}.backfill_slices s SET status = 'running', worker = :worker, run_id = :run_id,"
            " claimed_at = now(), heartbeat_at = now()"
            " FROM (SELECT backfill_id, slice_no FROM ttft_reconcile.backfill_slices"
            "  WHERE backfill_id = :backfill_id AND (status = 'pending'"
            "  OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => :lease)))"
            "  ORDER BY slice_no LIMIT 1 FOR UPDATE SKIP LOCKED) AS pick"
            " WHERE s.backfill_id = pick.backfill_id AND s.slice_no = pick.slice_no"
            " RETURNING s.slice_no, s.slice_since, s.slice_until, s.position_start_time, s.position_request_id"
        ),
        {"backfill_id": backfill_id, "worker": worker, "run_id": run_id, "lease": lease.total_seconds()},
    ).first()
    if row is None:
        return None
    position = Position(row[3], row[4] or "") if row[3] is not None else None
    return Slice(backfill_id, int(row[0]), row[1], row[2], position)


def advance_slice(conn: Connection, piece: Slice, worker: str, position: Position | None, scanned: int) -> bool:
    """Record progress inside the batch transaction; False when another worker took the slice over."""
    result = conn.execute(
        text(
            f"UPDATE {S}.backfill_slices SET heartbeat_at = now(), rows_scanned = rows_scanned + :n,"
            " position_start_time = coalesce(:st, position_start_time),"
            " position_request_id = coalesce(:rid, position_request_id)"
            " WHERE backfill_id = :b AND slice_no = :s AND worker = :worker AND status = 'running'"
        ),
        {
            "b": piece.backfill_id,
            "s": piece.slice_no,
            "worker": worker,
            "n": scanned,
            "st": position.start_time if position else None,
            "rid": position.request_id if position else None,
        },
    )
    return (result.rowcount or 0) == 1


def finish_slice(conn: Connection, piece: Slice, worker: str) -> bool:
    result = conn.execute(
        text(
            f"UPDATE {S}.backfill_slices SET status = 'done', heartbeat_at = now()"
            " WHERE backfill_id = :b AND slice_no = :s AND worker = :worker AND status = 'running'"
        ),
        {"b": piece.backfill_id, "s": piece.slice_no, "worker": worker},
    )
    return (result.rowcount or 0) == 1


def backfill_progress(conn: Connection, backfill_id: int) -> tuple[int, int]:
    """(slices done, slices total)."""
    row = conn.execute(
        text(
            f"SELECT count(*) FILTER (WHERE status = 'done'), count(*) FROM {S}.backfill_slices"
            " WHERE backfill_id = :id"
        ),
        {"id": backfill_id},
    ).one()
    return int(row[0]), int(row[1])


def finish_backfill_if_done(conn: Connection, backfill_id: int) -> bool:
    result = conn.execute(
        text(
            f"UPDATE {S}.backfills SET finished_at = now() WHERE id = :id AND finished_at IS NULL"
            f" AND NOT EXISTS (SELECT 1 FROM {S}.backfill_slices WHERE backfill_id = :id AND status <> 'done')"
        ),
        {"id": backfill_id},
    )
    return (result.rowcount or 0) == 1


# --- leases -----------------------------------------------------------------------------------


def try_lease(conn: Connection, lane: str, holder: str, ttl: timedelta) -> bool:
    row = conn.execute(
        text(
            f"INSERT INTO {S}.leases (lane, holder, acquired_at, expires_at)"
            " VALUES (:lane, :holder, now(), now() + make_interval(secs => :ttl))"
            " ON CONFLICT (lane) DO UPDATE SET holder = EXCLUDED.holder, acquired_at = now(),"
            " expires_at = EXCLUDED.expires_at"
            f" WHERE {S}.leases.expires_at < now() OR {S}.leases.holder = EXCLUDED.holder"
            " RETURNING holder"
        ),
        {"lane": lane, "holder": holder, "ttl": ttl.total_seconds()},
    ).first()
    return row is not None


def renew_lease(conn: Connection, lane: str, holder: str, ttl: timedelta) -> bool:
    result = conn.execute(
        text(
            f"UPDATE {S}.leases SET expires_at = now() + make_interval(secs => :ttl)"
            " WHERE lane = :lane AND holder = :holder"
        ),
        {"lane": lane, "holder": holder, "ttl": ttl.total_seconds()},
    )
    return (result.rowcount or 0) == 1


def release_lease(conn: Connection, lane: str, holder: str) -> None:
    conn.execute(
        text(f"DELETE FROM {S}.leases WHERE lane = :lane AND holder = :holder"), {"lane": lane, "holder": holder}
    )


def lease_holder(conn: Connection, lane: str) -> tuple[str, datetime] | None:
    row = conn.execute(
        text(f"SELECT holder, expires_at FROM {S}.leases WHERE lane = :lane AND expires_at >= now()"),
        {"lane": lane},
    ).first()
    return (row[0], row[1]) if row is not None else None


def name_session(conn: Connection, application_name: str) -> None:
    """Set application_name for the whole session (only for sessions we hold, never behind a pooler)."""
    conn.execute(text("SELECT set_config('application_name', :app, false)"), {"app": application_name})


def try_advisory_lock(conn: Connection, key: int) -> bool:
    return bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())


def holds_advisory_lock(conn: Connection, key: int) -> bool:
    """Whether this session still holds the advisory lock `key` (a terminated or timed-out lock
    session takes its lock with it)."""
    return bool(conn.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = :key)"
        ),
        {"key": key},
    ).scalar())


def advisory_lock_holder(conn: Connection, key: int) -> str | None:
    """Who holds the advisory lock (application_name, pid), for the one-line message."""
    row = conn.execute(
        text(
            "SELECT a.application_name, a.pid, a.client_addr FROM pg_locks l JOIN pg_stat_activity a"
            " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
            " AND ((l.classid::bigint << 32) | l.objid::bigint) = :key"
        ),
        {"key": key & 0xFFFFFFFFFFFFFFFF if key >= 0 else key},
    ).first()
    return f"{row[0] or 'unknown'} (backend pid {row[1]})" if row is not None else None


def restart_backfill(conn: Connection, backfill_id: int) -> None:
    """Make a finished (or partly done) backfill run again from the start of every slice."""
    conn.execute(
        text(
            f"UPDATE {S}.backfill_slices SET status = 'pending', worker = NULL, position_start_time = NULL,"
            " position_request_id = NULL WHERE backfill_id = :id AND status = 'done'"
        ),
        {"id": backfill_id},
    )
    conn.execute(text(f"UPDATE {S}.backfills SET finished_at = NULL WHERE id = :id"), {"id": backfill_id})


def release_slice(conn: Connection, piece: Slice, worker: str) -> None:
    """Hand a slice back (graceful stop or error) keeping its position, so the next worker resumes it."""
    conn.execute(
        text(
            f"UPDATE {S}.backfill_slices SET status = 'pending', worker = NULL"
            " WHERE backfill_id = :b AND slice_no = :s AND worker = :worker AND status = 'running'"
        ),
        {"b": piece.backfill_id, "s": piece.slice_no, "worker": worker},
    )


def backfill_finished_at(conn: Connection, backfill_id: int) -> datetime | None:
    value = conn.execute(text(f"SELECT finished_at FROM {S}.backfills WHERE id = :id"), {"id": backfill_id}).scalar()
    return value if isinstance(value, datetime) else None


def close_abandoned_runs(conn: Connection, silent_for: timedelta) -> int:
    """Mark runs that stopped heartbeating (SIGKILL, lost connection) as failed; returns how many."""
    result = conn.execute(
        text(
            f"UPDATE {S}.runs SET status = 'failed', finished_at = now(),"
            " error = 'abandoned: no heartbeat since ' || coalesce(heartbeat_at, started_at)::text"
            " WHERE status = 'running' AND coalesce(heartbeat_at, started_at) < now() - make_interval(secs => :s)"
        ),
        {"s": silent_for.total_seconds()},
    )
    return result.rowcount or 0


def heartbeat_run(conn: Connection, run_id: int) -> None:
    conn.execute(text(f"UPDATE {S}.runs SET heartbeat_at = now() WHERE id = :id"), {"id": run_id})


def live_runs(
    conn: Connection, *, run_id: int | None, since: datetime | None, until: datetime | None, silent_for: timedelta
) -> list[int]:
    """Runs still working (not a rollback, not a dry run, heartbeat recent): `run_id`, and any whose
    window overlaps [since, until) (naive or aware UTC; None is unbounded on that side)."""
    params: dict[str, Any] = {"s": silent_for.total_seconds(), "id": run_id, "since": since, "until": until}
    filters = [
        "status = 'running'",
        "mode <> 'rollback'",
        "NOT dry_run",
        "coalesce(heartbeat_at, started_at) >= now() - make_interval(secs => :s)",
        "(id = :id OR ((window_until IS NULL OR CAST(:since AS timestamptz) IS NULL OR window_until > :since)"
        " AND (window_since IS NULL OR CAST(:until AS timestamptz) IS NULL OR window_since < :until)))",
    ]
    rows = conn.execute(text(f"SELECT id FROM {S}.runs WHERE {' AND '.join(filters)} ORDER BY id"), params).all()
    return [int(r[0]) for r in rows]
