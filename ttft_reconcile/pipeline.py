"""Deciding a backfill's next batch while the last one is written.

A batch is two statements (`batch_sql`): deciding it reads SpendLogs and the traces, writing it
updates the repaired rows and inserts their audit rows. Postgres runs each on one core, so a
backfill that does them in turn leaves the second core idle. `DecideAhead` decides batches on
a connection of its own, in a thread, at most `AHEAD` batches ahead of the writer; the writer
takes them in keyset order and commits each with its checkpoint as before. The repaired rows of
a decided batch wait in the unlogged `batch_stage` table. A decided batch that is never written
(the command stopped or failed) is decided again by the next command, and its staged rows are
deleted (by `close`, or after STALE_STAGE by the next `run` or `backfill` if this one was
killed). The write's guard refuses any row that changed after it was decided, and a batch whose
staged rows were swept meanwhile is decided again (`batch_sql.StageLost`).
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from ttft_reconcile import batch_sql
from ttft_reconcile.db import Cancellable, SessionLimits, SpendLogsShape, apply_limits, transaction
from ttft_reconcile.queries import Position
from ttft_reconcile.signals import StopFlag

log = logging.getLogger(__name__)

AHEAD = 1  # decided batches waiting for the writer (one more is being decided)
_POLL_S = 0.1  # how often a waiting side looks for a stop request, seconds
_CANCEL_WAIT_S = 2.0  # how long `close` waits for a cancelled statement to end, seconds
THREAD_NAME = "ttft-decide"
# Staged rows older than this belong to a command that was killed between deciding and writing
# (a live backfill writes a decided batch within seconds; it decides in turn when throttled).
STALE_STAGE = timedelta(hours=1)


class DecideAhead:
    """Decides the batches of [since, until) (naive UTC) after `after` in a thread; `take` hands
    them over in order. Stops after the last batch (fewer candidates than `limit`)."""

    def __init__(self, engine: Engine, limits: SessionLimits, shape: SpendLogsShape, stop: StopFlag, *,
                 since: datetime, until: datetime, after: Position | None, limit: int, **decide: Any) -> None:
        self._engine = engine
        self._limits = limits
        self._shape = shape
        self._stop = stop
        self._range = (since, until)
        self._after = after
        self._limit = limit
        self._decide = decide  # call_types, tolerance_ms, policy, hold_rolled_back
        self._ready: queue.Queue[batch_sql.DecidedBatch | BaseException] = queue.Queue(maxsize=AHEAD)
        self._halt = threading.Event()
        self._busy = Cancellable("the deciding statement")
        self._staged: list[int] = []  # stage ids of every batch decided (written ones are gone)
        self._thread = threading.Thread(target=self._work, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def take(self) -> batch_sql.DecidedBatch | None:
        """The next decided batch, in keyset order; None when a stop was requested first. An error
        the deciding thread met is raised here."""
        while not self._stop.requested:
            try:
                item = self._ready.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise RuntimeError("the deciding thread ended without handing over the last batch") from None
                continue
            if isinstance(item, BaseException):
                raise item
            return item
        return None

    def close(self) -> None:
        """Stop deciding: a statement under way is cancelled on the server; batches decided and not
        taken are dropped (nothing of them was written)."""
        self._halt.set()
        self._busy.cancel()
        self._thread.join(_CANCEL_WAIT_S)
        if self._thread.is_alive():
            return  # its rows are swept after STALE_STAGE
        try:
            with transaction(self._engine, self._limits) as conn:
                batch_sql.drop_staged(conn, self._staged)
        except sa_exc.SQLAlchemyError as error:
            log.info("staged rows of unwritten batches left for a later command: %s", error)

    def _work(self) -> None:
        position = self._after
        since, until = self._range
        try:
            with self._engine.connect() as conn, self._busy.running_on(conn):
                while not self._halt.is_set() and not self._stop.requested:
                    with conn.begin():
                        apply_limits(conn, self._limits)
                        batch = batch_sql.decide_batch(conn, self._shape, since=since, until=until,
                                                       after=position, limit=self._limit, stage=True,
                                                       **self._decide)
                    if batch.stage_id is not None:
                        self._staged.append(batch.stage_id)
                    self._hand_over(batch)
                    if batch.last is None or batch.scanned < self._limit:
                        return
                    position = batch.last
        except BaseException as error:  # handed to the writer, which raises it
            if not self._halt.is_set():
                self._hand_over(error)

    def _hand_over(self, item: batch_sql.DecidedBatch | BaseException) -> None:
        while not self._halt.is_set() and not self._stop.requested:
            try:
                self._ready.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue
