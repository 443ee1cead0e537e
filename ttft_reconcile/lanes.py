"""One process per lane: a session advisory lock, or a lease row behind PgBouncer transaction pooling.

Session advisory locks belong to a server connection; a transaction pooler hands that
connection to other clients between transactions, so the lock neither protects us nor is
released when we exit. Lease rows live in `ttft_reconcile.leases`, expire after a TTL and are
renewed inside every batch transaction.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from ttft_reconcile import queries
from ttft_reconcile.db import SessionLimits, describe_db_error, transaction
from ttft_reconcile.errors import LaneHeld, ReconcileError


def lane_key(lane: str) -> int:
    """A stable positive 63-bit advisory-lock key for a lane name."""
    return (zlib.crc32(b"ttft_reconcile") << 31) | zlib.crc32(lane.encode())


@dataclass
class LaneLock:
    """A held lane. Before each batch transaction call `check()`: in advisory mode it makes sure
    the lock session still holds the lock (a server's idle_session_timeout, a pooler or an
    administrator may end that idle session, and the lock goes with it). Inside each batch
    transaction call `renew(conn)`: it extends the lease in lease mode. Either way a lost lane
    stops the job before the batch writes."""

    lane: str
    mode: str
    holder: str
    ttl: timedelta
    session: Connection | None = None  # the advisory lock's own connection

    def check(self) -> None:
        # Outside the batch transaction: behind a transaction pooler with one server connection,
        # a query on the lock session would wait for the batch that holds that connection.
        if self.mode != "advisory" or self.session is None:
            return
        try:
            held = queries.holds_advisory_lock(self.session, lane_key(self.lane))
        except sa_exc.SQLAlchemyError as error:
            raise ReconcileError(
                f"lost the lock on lane {self.lane!r}: its session ended ({describe_db_error(error)}); stopping"
                " (every batch so far is committed)") from None
        if not held:
            raise ReconcileError(
                f"lost the lock on lane {self.lane!r}; stopping (every batch so far is committed)")

    def renew(self, conn: Connection) -> None:
        if self.mode == "lease" and not queries.renew_lease(conn, self.lane, self.holder, self.ttl):
            raise ReconcileError(f"lost the lease on lane {self.lane!r}; stopping (the batch was rolled back)")


def resolve_mode(mode: str, pgbouncer: bool) -> str:
    if mode == "auto":
        return "lease" if pgbouncer else "advisory"
    return mode


@contextmanager
def hold_lane(
    engine: Engine, lane: str, *, mode: str, holder: str, ttl: timedelta, limits: SessionLimits
) -> Iterator[LaneLock]:
    """Hold `lane` for the block; raise LaneHeld (exit 75) when another process has it."""
    if mode == "advisory":
        key = lane_key(lane)
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            # name the session that holds the lock, so a second process can say who has the lane
            queries.name_session(conn, f"{limits.application_name} {holder}"[:63])
            if not queries.try_advisory_lock(conn, key):
                who = queries.advisory_lock_holder(conn, key)
                raise LaneHeld(f"lane {lane!r} is held by another process{': ' + who if who else ''}; exiting")
            # A process in lease mode (behind a pooler) holds the lane through its row instead.
            leased = queries.lease_holder(conn, lane)
            if leased is not None and leased[0] != holder:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                raise LaneHeld(f"lane {lane!r} is leased by {leased[0]} until {leased[1].isoformat()}; exiting")
            try:
                yield LaneLock(lane, mode, holder, ttl, session=conn)
            finally:
                # Closing the session releases it too; unlock explicitly for poolers that keep it.
                # A session that already ended took the lock with it.
                try:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                except sa_exc.SQLAlchemyError:
                    pass
        return
    with transaction(engine, limits) as conn:
        acquired = queries.try_lease(conn, lane, holder, ttl)
        current = None if acquired else queries.lease_holder(conn, lane)
        # A process in advisory mode (connected directly) holds the lane through its lock, which
        # pg_locks shows whatever pooler sits in between; then this transaction gives the lease back.
        locked_by = queries.advisory_lock_holder(conn, lane_key(lane)) if acquired else None
        if locked_by is not None:
            conn.rollback()
            raise LaneHeld(f"lane {lane!r} is held by another process: {locked_by}; exiting")
    if not acquired:
        who = f"{current[0]} until {current[1].isoformat()}" if current else "another process"
        raise LaneHeld(f"lane {lane!r} is leased by {who}; exiting")
    try:
        yield LaneLock(lane, mode, holder, ttl)
    finally:
        try:
            with transaction(engine, limits) as conn:
                queries.release_lease(conn, lane, holder)
        except Exception:  # noqa: BLE001 - the lease expires by itself; never mask the real error
            pass
